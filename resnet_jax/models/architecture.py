"""The fields that fix a ResNet's shape, and each block type's layout, in plain Python: this module
imports neither JAX nor Flax.

:class:`~.resnet.ResNet` inherits :class:`Architecture` (its docstring describes each field) and
adds the compute-only fields (dtypes, BN axis, remat, ...).  Each Flax block of :mod:`.blocks`
inherits its :class:`BlockLayout` -- the one definition of which layers a block type has -- and
builds exactly those.  The registry's tables fill the fields in and :mod:`.flops` counts
parameters and multiply-adds from the layouts, so ``resnet-jax models`` prints its table
without JAX.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence


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


class BranchConv(NamedTuple):
  """One conv of a block's residual branch, named ``conv{index}`` (its BN: ``bn{index}``)."""

  index: int
  features: int
  kernel: int
  stride: int = 1
  groups: int = 1


class BlockLayer(NamedTuple):
  """One layer with parameters of a block, in the order the block builds it.

  ``kind``: ``'conv'``, ``'bn'`` or ``'dense'`` (squeeze-and-excitation's fully connected layers,
  on pooled features).  ``shortcut``: on the shortcut path, which starts from the block's input.
  ``pool``: the stride of the average pool before the layer (ResNet-D's shortcut; 1: none).
  """

  name: str
  kind: str
  kernel: int
  cin: int
  cout: int
  stride: int = 1
  groups: int = 1
  shortcut: bool = False
  pool: int = 1


@dataclasses.dataclass
class BlockLayout:
  """A residual block's shape fields and the layers they give; ``blocks._Block`` builds them.

  A block type is a subclass with its ``expansion`` (output channels = ``planes * expansion``)
  and its :meth:`branch`; BN placement, squeeze-and-excitation and the shortcut are shared.
  Shortcut options, stride placement and the rest: see :mod:`.blocks`.
  """

  planes: int
  stride: int = 1
  shortcut: str = "B"
  stride_on: str = "3x3"
  groups: int = 1
  base_width: int = 64
  preact: bool = False
  se_ratio: float = 0.0

  expansion = 1  # class attribute, not a field

  @property
  def out_channels(self) -> int:
    return self.planes * self.expansion

  def branch(self) -> list[BranchConv]:
    """The residual branch's convs, in order (the last one has ``out_channels`` features)."""
    raise NotImplementedError

  def needs_projection(self, in_channels: int) -> bool:
    """A 1x1 projection shortcut: on every block for C, where the shape changes for B and D."""
    changes = self.stride != 1 or in_channels != self.out_channels
    return self.shortcut == "C" or (self.shortcut in ("B", "D") and changes)

  def layers(self, in_channels: int) -> list[BlockLayer]:
    """Every layer with parameters of the block on ``in_channels`` input channels, in order:
    the branch (pre-activation: each BN before its conv), SE, then the projection shortcut."""
    table, cin = [], in_channels
    for conv in self.branch():
      if self.preact:
        table.append(BlockLayer(f"bn{conv.index}", "bn", 1, cin, cin))
      table.append(
        BlockLayer(
          f"conv{conv.index}", "conv", conv.kernel, cin, conv.features, conv.stride, conv.groups
        )
      )
      if not self.preact:
        table.append(BlockLayer(f"bn{conv.index}", "bn", 1, conv.features, conv.features))
      cin = conv.features
    if self.se_ratio > 0:
      reduced = se_channels(cin, self.se_ratio)
      table.append(BlockLayer("se/fc1", "dense", 1, cin, reduced))
      table.append(BlockLayer("se/fc2", "dense", 1, reduced, cin))
    if self.needs_projection(in_channels):
      out = self.out_channels
      pool = self.stride if self.shortcut == "D" else 1  # then a 1x1 with stride 1
      table.append(
        BlockLayer("shortcut_conv", "conv", 1, in_channels, out, self.stride // pool, 1, True, pool)
      )
      if not self.preact:  # v2: a bare projection of the pre-activated input
        table.append(BlockLayer("shortcut_bn", "bn", 1, out, out, shortcut=True))
    return table


class BasicLayout(BlockLayout):
  """3x3 -> 3x3 (paper Fig. 5 left), expansion 1; the stride is on the first 3x3."""

  expansion = 1

  def branch(self) -> list[BranchConv]:
    return [BranchConv(1, self.planes, 3, self.stride), BranchConv(2, self.planes, 3)]


class BottleneckLayout(BlockLayout):
  """1x1 reduce -> 3x3 -> 1x1 expand x4 (paper §4.1, Fig. 5 right), expansion 4.

  The inner width is torchvision's ``int(planes * base_width / 64) * groups`` (= planes for
  ResNet; ResNeXt-50 32x4d: 4*planes/64*32; Wide ResNet-50-2: 2*planes), and the 3x3 is grouped;
  ``stride_on`` puts the stride on the 3x3 (torchvision v1.5) or on the first 1x1 (the paper).
  """

  expansion = 4

  def branch(self) -> list[BranchConv]:
    width = int(self.planes * (self.base_width / 64.0)) * self.groups
    s1, s3 = (self.stride, 1) if self.stride_on == "1x1" else (1, self.stride)
    return [
      BranchConv(1, width, 1, s1),
      BranchConv(2, width, 3, s3, self.groups),
      BranchConv(3, self.out_channels, 1),
    ]


# Block name (the ``block`` field) -> its layout; ``blocks.BLOCKS`` holds the Flax block of each.
BLOCK_LAYOUTS = {"basic": BasicLayout, "bottleneck": BottleneckLayout}


def block_layout(block: str) -> type[BlockLayout]:
  """The layout of the block type named ``block``; an unknown name is refused in one line."""
  if block not in BLOCK_LAYOUTS:
    raise ValueError(f"block must be one of {tuple(BLOCK_LAYOUTS)}, got {block!r}")
  return BLOCK_LAYOUTS[block]
