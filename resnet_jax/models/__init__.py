"""The model zoo: ResNets of He et al. 2015 (and v2, ResNeXt, wide) in Flax Linen.

Imports nothing else of resnet_jax.  Public API::

    get_model(name, *, num_classes=None, **overrides) -> ResNet (flax.linen.Module)
    list_models() -> list[str]
    model_spec(name) -> ModelSpec(name, family, image_size, num_classes, config)
    count_macs(model, image_size=None, in_channels=3, **overrides) -> int
    count_params(model, in_channels=3, **overrides) -> int
    format_model_table(names=None) -> str

Names load their module on first use: the registry and the analytic counts need no JAX, so
``resnet-jax models`` starts in a fraction of a second; ``get_model`` and the blocks load Flax.
"""

import importlib

_HOME = {
  "BasicBlock": "blocks",
  "BottleneckBlock": "blocks",
  "ModelSpec": "registry",
  "ResNet": "resnet",
  "count_macs": "flops",
  "count_params": "flops",
  "format_model_table": "flops",
  "get_model": "registry",
  "layer_table": "flops",
  "list_models": "registry",
  "model_spec": "registry",
}
_SUBMODULES = ("architecture", "blocks", "flops", "registry", "resnet")

__all__ = sorted(_HOME)


def __getattr__(name: str):
  if name in _HOME:
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_HOME, *_SUBMODULES])
