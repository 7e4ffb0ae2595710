"""The model zoo: ResNets of He et al. 2015 (and v2, ResNeXt, wide) in Flax Linen.

Imports nothing else of resnet_jax. Public API::

    get_model(name, *, num_classes=None, **overrides) -> ResNet (flax.linen.Module)
    list_models() -> list[str]
    model_spec(name) -> ModelSpec(name, family, image_size, num_classes, config)
    count_macs(model, image_size=None, in_channels=3, **overrides) -> int
    count_params(model, in_channels=3, **overrides) -> int
    format_model_table(names=None) -> str
    in_channels(params) -> int   (what the stem's first conv takes)

These need neither JAX nor Flax to import (``get_model`` loads Flax when called), so
``resnet-jax models`` starts in a fraction of a second. The network and its blocks are in the
submodules that load Flax: ``models.resnet.ResNet``, ``models.blocks.BasicBlock`` /
``BottleneckBlock`` / ``Compute``.
"""

from .architecture import Architecture, in_channels
from .flops import count_macs, count_params, format_model_table, layer_table
from .registry import ModelSpec, get_model, list_models, model_spec

__all__ = [
  "Architecture",
  "ModelSpec",
  "count_macs",
  "count_params",
  "format_model_table",
  "get_model",
  "in_channels",
  "layer_table",
  "list_models",
  "model_spec",
]
