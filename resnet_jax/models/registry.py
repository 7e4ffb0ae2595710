"""Model registry: every named network as data (depth/width tables), no if/else chains.

``get_model(name, *, num_classes=None, **overrides)`` builds a :class:`~.resnet.ResNet`;
``overrides`` are ResNet fields (``shortcut``, ``stride_on``, ``zero_init_last_bn``, ``dtype``,
``param_dtype``, ``bn_axis_name``, ``width_multiplier``, ...).  ``list_models()`` lists the names;
``model_spec(name)`` gives the family, native image size and default number of classes.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
from typing import TYPE_CHECKING, Any, Mapping

from .architecture import Architecture, check_drop_path_rate

if TYPE_CHECKING:
  from .resnet import ResNet

# --- the tables (paper Table 1; §4.2; He et al. 2016 Table 2/3; torchvision) ---------------------
# ImageNet depth -> (block, blocks per stage).
IMAGENET_DEPTHS = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
  152: ("bottleneck", (3, 8, 36, 3)),
}
# CIFAR depth -> (block, n): basic nets have 6n+2 layers (§4.2), bottleneck nets 9n+2 (v2 paper).
CIFAR_DEPTHS = {
  20: ("basic", 3),
  32: ("basic", 5),
  44: ("basic", 7),
  56: ("basic", 9),
  110: ("basic", 18),
  164: ("bottleneck", 18),
  1001: ("bottleneck", 111),
  1202: ("basic", 200),
}
# name -> (depth, groups, width_per_group): ResNeXt (Xie et al. 2017) and wide ResNets as
# torchvision builds them (bottleneck inner width int(planes * width_per_group / 64) * groups).
IMAGENET_VARIANTS = {
  "resnext50_32x4d": (50, 32, 4),
  "resnext101_32x8d": (101, 32, 8),
  "resnext101_64x4d": (101, 64, 4),
  "wide_resnet50_2": (50, 1, 128),
  "wide_resnet101_2": (101, 1, 128),
}

# timm's variants, under timm's names: resnet*d (He et al. 2019, "Bag of Tricks": ResNet-C deep
# stem of 32-32-64 filters, ResNet-D average-pool shortcut) and squeeze-and-excitation nets (Hu et
# al. 2018; timm's SEModule, channels / 16 rounded to a multiple of 8), name -> (depth, fields).
_RESNET_D = dict(stem="deep", stem_width=32, shortcut="D")
_SE = dict(se_ratio=1 / 16)
TIMM_VARIANTS = {
  **{f"resnet{d}d": (d, _RESNET_D) for d in (18, 34, 50, 101, 152)},
  "seresnet50": (50, _SE),
  "seresnet101": (101, _SE),
  "seresnext50_32x4d": (50, dict(groups=32, width_per_group=4, **_SE)),
}

IMAGENET_BASE = dict(
  stem="imagenet", stem_width=64, stage_widths=(64, 128, 256, 512), shortcut="B", stride_on="3x3"
)
CIFAR_BASE = dict(
  stem="cifar", stem_width=16, stage_widths=(16, 32, 64), shortcut="A", stride_on="3x3"
)
FAMILY = {
  "imagenet": dict(image_size=224, num_classes=1000),
  "cifar": dict(image_size=32, num_classes=10),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a name stands for: ``family`` ('imagenet' | 'cifar'), native ``image_size`` (224 | 32),
  default ``num_classes`` (1000 | 10) and ``config`` (the ResNet fields it sets)."""

  name: str
  family: str
  image_size: int
  num_classes: int
  config: Mapping[str, Any]


def _spec(name, family, **config) -> ModelSpec:
  base = IMAGENET_BASE if family == "imagenet" else CIFAR_BASE
  return ModelSpec(
    name=name, family=family, **FAMILY[family], config=types.MappingProxyType({**base, **config})
  )


def _imagenet(depth, **kw):
  block, sizes = IMAGENET_DEPTHS[depth]
  return dict(block=block, stage_sizes=sizes, **kw)


def _cifar(depth, **kw):
  block, n = CIFAR_DEPTHS[depth]
  return dict(block=block, stage_sizes=(n, n, n), **kw)


# Which depths each family of names has: (name pattern, table builder, family, depths, extra fields)
_FAMILIES = [
  ("resnet{}", _imagenet, "imagenet", (18, 34, 50, 101, 152), {}),
  ("plain{}", _imagenet, "imagenet", (18, 34, 50, 101, 152), {"shortcut": "none"}),
  ("preact_resnet{}", _imagenet, "imagenet", (18, 34, 50, 101, 152), {"preact": True}),
  ("resnet{}", _cifar, "cifar", (20, 32, 44, 56, 110, 1202), {}),
  ("plain{}", _cifar, "cifar", (20, 32, 44, 56, 110, 1202), {"shortcut": "none"}),
  # v2 paper: projection (B) shortcuts where the shape changes.
  ("preact_resnet{}", _cifar, "cifar", (20, 56, 110, 164, 1001), {"preact": True, "shortcut": "B"}),
]

MODELS: dict[str, ModelSpec] = {}
for _pattern, _table, _family, _depths, _extra in _FAMILIES:
  for _d in _depths:
    _name = _pattern.format(_d)
    MODELS[_name] = _spec(_name, _family, **_table(_d, **_extra))
for _name, (_d, _groups, _wpg) in IMAGENET_VARIANTS.items():
  MODELS[_name] = _spec(_name, "imagenet", **_imagenet(_d, groups=_groups, width_per_group=_wpg))
for _name, (_d, _fields) in TIMM_VARIANTS.items():
  MODELS[_name] = _spec(_name, "imagenet", **_imagenet(_d, **_fields))


@functools.cache
def _overridable() -> tuple[str, ...]:
  from .resnet import ResNet  # pylint: disable=g-import-not-at-top

  return tuple(f.name for f in dataclasses.fields(ResNet) if f.name not in ("parent", "name"))


def __getattr__(name: str):
  # OVERRIDABLE (every ResNet field) needs Flax, so it is computed on first use: the tables, names
  # and analytic counts stay importable without JAX (``resnet-jax models``).
  if name == "OVERRIDABLE":
    return _overridable()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _natural(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_models() -> list[str]:
  """All registered model names in natural order (resnet18 before resnet101)."""
  return sorted(MODELS, key=_natural)


def model_spec(name: str) -> ModelSpec:
  """The :class:`ModelSpec` of ``name``; unknown names raise ``ValueError`` with close matches."""
  if isinstance(name, ModelSpec):
    return name
  try:
    return MODELS[name]
  except KeyError:
    close = difflib.get_close_matches(str(name), list(MODELS), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
      f"Unknown model {name!r}.{hint} Known models: {', '.join(list_models())}"
    ) from None


def model_config(name, *, num_classes=None, **overrides) -> dict[str, Any]:
  """The ResNet field values ``get_model`` would use (validated); handy for flops.py."""
  spec = model_spec(name)
  architecture = {f.name for f in dataclasses.fields(Architecture)}
  if set(overrides) - architecture:  # only a compute field needs the full list, and Flax
    overridable = _overridable()
    unknown = sorted(set(overrides) - set(overridable))
    if unknown:
      raise ValueError(
        f"Unknown override(s) {', '.join(map(repr, unknown))} for {spec.name!r}; "
        f"valid keys: {', '.join(overridable)}"
      )
  if "drop_path_rate" in overrides:  # refused here, before anything is built or compiled
    check_drop_path_rate(overrides["drop_path_rate"])
  config = {**spec.config, "num_classes": spec.num_classes, **overrides}
  if num_classes is not None:
    config["num_classes"] = num_classes
  return config


def get_model(name: str, *, num_classes: int | None = None, **overrides) -> ResNet:
  """Build the named network. ``num_classes`` defaults to the family's (1000 or 10).

  Example: ``get_model('resnet50', num_classes=10, dtype=jnp.bfloat16, bn_axis_name='batch')``.
  """
  from .resnet import ResNet  # pylint: disable=g-import-not-at-top

  return ResNet(**model_config(name, num_classes=num_classes, **overrides))
