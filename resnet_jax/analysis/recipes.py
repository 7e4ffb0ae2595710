"""What the analyses train and how they name it: one recipe for every depth and family so runs
compare, the paper's CIFAR depths the registry lacks, and the labels tables and figures use.

The recipes start from the experiment files (``configs/digits.py``, ``configs/cifar10_*.py``),
which the wheel ships, so the analyses work from an installed wheel with no checkout.
"""

from __future__ import annotations

import os
import re
from typing import Any

import ml_collections

from resnet_jax.train import config as config_lib

# resnet_jax.runs (JAX, Orbax) is imported where it is used: `resnet-jax --help` reads the analyses'
# flags through this package and must start without JAX.


def resolve_model(name: str) -> tuple[str, dict[str, Any]]:
  """A registry name, or a CIFAR 6n+2 depth the registry lacks (``resnet8``, ``plain14``): then
  ``(family + '20', {'stage_sizes': (n, n, n)})`` -- the same net with n blocks per stage."""
  from resnet_jax import models  # pylint: disable=g-import-not-at-top

  if name in models.list_models():
    return name, {}
  m = re.fullmatch(r"(resnet|plain)(\d+)", name)
  if m and (int(m.group(2)) - 2) % 6 == 0 and int(m.group(2)) >= 8:
    n = (int(m.group(2)) - 2) // 6
    return f"{m.group(1)}20", {"stage_sizes": (n, n, n)}
  raise ValueError(
    f"unknown model {name!r}: a registry name (`resnet-jax models`) or a CIFAR "
    f"depth 6n+2 such as resnet8, plain14"
  )


RECIPES = ("digits", "paper")


def paper_on_digits() -> ml_collections.ConfigDict:
  """The paper's CIFAR recipe (§4.2) on the bundled digits, at the paper's widths (16-32-64).

  Batch 128, lr 0.1 divided by 10 at 50 % and 75 % of training, momentum 0.9, weight decay 1e-4,
  no warm-up (the paper warms up only ResNet-110), 4-pixel pad + random crop with no flip
  (``digits4``). 1,000 iterations (32 epochs of the 4,000 training digits, against the paper's
  164 epochs of CIFAR-10): in a 1,600-iteration pilot at full width plain-56's training error was
  7.4 % at iteration 600, and 200 iterations at lr 0.01 flattened it (2.1-2.8 %), so drops at 500
  and 750 leave 250 iterations for each curve to flatten before the last one. The degradation
  analysis's default, sized so that its 12 runs fit 2 hours on a 2-core machine
  (docs/analyses.md).
  """
  c = config_lib.load("digits")
  c.num_train_steps = 1000
  c.schedule = "piecewise"
  c.lr_boundaries = (500, 750)  # lr / 10 at 50 % and 75 %
  c.warmup_steps = 0
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.global_batch_size = 128
  c.train_augment = "digits4"
  c.model_overrides.width_multiplier = 1.0  # the paper's 16-32-64 filters
  # The project's fastest CPU path (oneDNN where installed), chosen by measurement at this batch
  # and width (docs/analyses.md); the committed runs name theirs in their commands.
  c.model_overrides.conv_impl = "auto"
  return c


def _base_recipe(model: str, dataset: str, name: str = "digits") -> ml_collections.ConfigDict:
  """``dataset='cifar10'``: the paper's §4.2 recipe; otherwise recipe ``name`` on ``dataset``
  (``digits``: ``configs/digits.py``; ``paper``: :func:`paper_on_digits`)."""
  if dataset == "cifar10":
    return _cifar10_table6(model)
  if name not in RECIPES:
    raise ValueError(f"recipe {name!r}: choose from {RECIPES}")
  c = paper_on_digits() if name == "paper" else config_lib.load("digits")
  c.dataset = dataset
  return c


def _cifar10_table6(model: str) -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 recipe for ``model``: its config file, else that of the ResNet of its
  depth (the 110- and 1202-layer nets warm up), else ResNet-20's."""
  names = (f"cifar10_{model}", f"cifar10_resnet{depth_of(model)}", "cifar10_resnet20")
  c = config_lib.load(next(n for n in names if os.path.isfile(config_lib.config_file(n))))
  c.model = model
  return c


def _set(config, key: str, value) -> None:
  """``config[key] = value`` for a dotted key (``model_overrides.shortcut``)."""
  *parents, leaf = key.split(".")
  for p in parents:
    config = config[p]
  config[leaf] = value


def recipe(
  model: str,
  *,
  dataset: str = "digits",
  steps: int | None = None,
  width_multiplier: float | None = 1.0,
  seed: int = 0,
  batch_size: int | None = None,
  evals: int = 4,
  overrides: dict[str, Any] | None = None,
  name: str = "digits",
) -> ml_collections.ConfigDict:
  """The config of one run: the same recipe for every depth/family so runs compare.

  ``dataset='digits'``: recipe ``name``: ``digits`` (``configs/digits.py``, warm-up + cosine,
  minutes on a CPU) or ``paper`` (:func:`paper_on_digits`, the paper's CIFAR recipe).
  ``dataset='cifar10'``: the paper's §4.2 recipe (``configs/cifar10_*.py``).
  With ``steps`` other than the recipe's, the lr boundaries keep their fractions of the run.
  ``width_multiplier``: None keeps the recipe's.
  ``evals``: test-error points on the curve (eval_every_steps = steps / evals).
  ``overrides``: any other config keys (``model_overrides.shortcut`` etc. as nested dicts).
  """
  model, net_overrides = resolve_model(model)
  c = _base_recipe(model, dataset, name)
  c.model = model
  c.seed = seed
  if steps:
    if c.lr_boundaries:
      c.lr_boundaries = tuple(int(round(b * steps / c.num_train_steps)) for b in c.lr_boundaries)
    c.num_train_steps = steps
  if batch_size:
    c.global_batch_size = batch_size
  every = max(1, c.num_train_steps // max(1, evals))
  c.eval_every_steps = every
  c.checkpoint_every_steps = every
  c.log_every_steps = max(1, min(c.log_every_steps, every // 4 or 1))
  c.async_checkpoints = False
  if width_multiplier is not None and width_multiplier != c.model_overrides.get(
    "width_multiplier", 1.0
  ):
    c.model_overrides.width_multiplier = float(width_multiplier)
  for key, value in net_overrides.items():
    c.model_overrides[key] = value
  for key, value in (overrides or {}).items():
    _set(c, key, value)
  return c


def train(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes, or skips a finished) run in ``workdir``; returns its final metrics."""
  from resnet_jax import runs  # pylint: disable=g-import-not-at-top

  if runs.is_done(workdir):
    return runs.final_metrics(workdir)
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  return loop.train_and_evaluate(config, workdir)


def build_model(config):
  """``(model, dataset info)`` of a recipe, unreplicated (BN without a cross-device axis)."""
  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax import runs  # pylint: disable=g-import-not-at-top

  info = data_lib.dataset_info(config.dataset)
  return runs.build_model(config, info.num_classes, replicated=False), info


def image_shape_of(config, info) -> tuple[int, int, int]:
  """``(H, W, C)`` of the images a run of ``config`` trains on."""
  size = config.image_size or info.image_size
  return (size, size, info.image_shape[-1])


def display_name(config) -> str:
  """The net's name with its real depth (``resnet8`` for resnet20 with stage_sizes (1, 1, 1))."""
  from resnet_jax import runs  # pylint: disable=g-import-not-at-top

  return runs.net_name(config)


def model_label(config) -> str:
  """``resnet20`` / ``plain20`` plus the non-default overrides, e.g. ``resnet20 (x0.5)``."""
  mo = config.model_overrides
  extra = []
  if mo.get("width_multiplier") not in (None, "", 1, 1.0):
    extra.append(f"x{mo.width_multiplier:g}")
  if mo.get("shortcut") not in (None, ""):
    extra.append(f"shortcut {mo.shortcut}")
  return display_name(config) + (f" ({', '.join(extra)})" if extra else "")


def is_plain(config) -> bool:
  """A plain net: a plain family, or shortcuts switched off."""
  return config.model.startswith("plain") or config.model_overrides.get("shortcut") == "none"


def depth_of(name) -> int:
  """Depth from a name (``plain56`` -> 56) or a config (its display name)."""
  if not isinstance(name, str):
    name = display_name(name)
  digits = "".join(ch for ch in name if ch.isdigit())
  return int(digits) if digits else 0


def describe(config) -> dict[str, Any]:
  """The fields every per-run result row starts with: label, name, family, depth."""
  return {
    "label": model_label(config),
    "model": display_name(config),
    "plain": is_plain(config),
    "depth": depth_of(config),
  }
