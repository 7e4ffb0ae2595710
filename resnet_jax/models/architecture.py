"""The fields that fix a ResNet's shape, as a plain dataclass that imports neither JAX nor Flax.

:class:`~.resnet.ResNet` inherits them (its docstring describes each) and adds the compute-only
fields (dtypes, BN axis, remat, ...). The registry's tables fill them in and :mod:`.flops` counts
parameters and multiply-adds from them, so ``resnet-jax models`` prints its table without JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass
class Architecture:
  """Depth, widths, stem, shortcuts and block type: defaults are ResNet-18's (Table 1)."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  stem_width: int = 64
  width_multiplier: float = 1.0
  num_classes: int = 1000
  shortcut: str = "B"
  stride_on: str = "3x3"
  groups: int = 1
  width_per_group: int = 64
  preact: bool = False
  se_ratio: float = 0.0


def in_channels(params) -> int:
  """The input channels a parameter tree was built for: those of its stem's first conv kernel
  (``stem_conv``, or the deep stem's ``stem_conv1``), shaped (kh, kw, cin, cout)."""
  for name in ("stem_conv", "stem_conv1"):
    if name in params:
      return int(params[name]["kernel"].shape[2])
  raise ValueError(f"no stem conv in the parameters (top-level keys: {sorted(params)[:5]}...)")


def check_drop_path_rate(rate) -> None:
  """Refuse a stochastic-depth rate outside [0, 1) in one line (1 would drop every branch)."""
  if not 0.0 <= float(rate) < 1.0:
    raise ValueError(f"drop_path_rate must be in [0, 1), got {rate!r}")


def se_channels(channels: int, ratio: float) -> int:
  """Squeeze-and-excitation bottleneck width: ``channels * ratio`` rounded to the nearest multiple
  of 8, at least 8 (timm's ``make_divisible(channels * ratio, 8, round_limit=0)``)."""
  return max(8, int(channels * ratio + 4) // 8 * 8)


def scaled(width: int, multiplier: float) -> int:
  """A width times ``width_multiplier`` (at least 1)."""
  return max(1, int(round(width * multiplier)))
