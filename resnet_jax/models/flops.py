"""Analytic multiply-adds and parameter counts, written from the architecture (not from Flax params).

:func:`layer_table` walks the network the way resnet.py builds it -- stem, stages of blocks, head --
and lists every conv, BN and dense layer with its shapes.  A block's layers are its layout's
(:class:`~.architecture.BlockLayout`, which the Flax block builds), so a new block type is counted
from its own definition, and a block name without a layout is refused.  From it:

* :func:`count_macs` -- multiply-accumulates of the convs and the dense head (and the two small
  fully connected layers of each squeeze-and-excitation), the paper's "FLOPs" (Table 1 counts
  multiply-adds).  Excluded: BN, ReLU, pooling, the SE gate, the residual additions and option-A
  padding (all O(activations), ~1% of a conv net).  XLA's ``cost_analysis()['flops']``
  counts 2 flops per multiply-add plus those extras.
* :func:`count_params` -- conv kernels + BN scale/bias + dense kernel/bias; running statistics
  (``batch_stats``) are not parameters.
* :func:`format_model_table` -- a text table of every model (parameters and multiply-adds from the
  layer table, at the native resolution: nothing is traced or compiled; tests check the analytic
  count against ``jax.eval_shape`` of ``init`` for every family).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, NamedTuple, Optional, Sequence

from .architecture import Architecture, block_layout, scaled
from .registry import ModelSpec, list_models, model_config, model_spec


class Layer(NamedTuple):
  """One layer: ``kind`` is 'conv', 'bn' or 'dense'; ``out_hw`` is the output spatial size."""

  name: str
  kind: str
  kernel: int
  cin: int
  cout: int
  groups: int
  out_hw: tuple[int, int]
  in_hw: tuple[int, int] = (1, 1)
  stride: int = 1

  @property
  def params(self) -> int:
    if self.kind == "conv":
      return self.kernel * self.kernel * (self.cin // self.groups) * self.cout
    if self.kind == "bn":
      return 2 * self.cout
    return self.cin * self.cout + self.cout  # dense: kernel + bias

  @property
  def macs(self) -> int:
    if self.kind == "conv":
      h, w = self.out_hw
      return h * w * self.kernel * self.kernel * (self.cin // self.groups) * self.cout
    if self.kind == "dense":
      return self.cin * self.cout
    return 0

  @property
  def valid_macs(self) -> int:
    """Like ``macs`` but without the taps that fall on zero padding (what XLA counts)."""
    if self.kind != "conv":
      return self.macs
    taps = 1
    for n, o in zip(self.in_hw, self.out_hw):
      taps *= _valid_taps(n, o, self.kernel, self.stride)
    return taps * (self.cin // self.groups) * self.cout


def _valid_taps(n: int, n_out: int, k: int, s: int) -> int:
  """Sum over output positions of kernel taps landing inside an input of size n (padding k // 2)."""
  p = k // 2
  return sum(sum(1 for t in range(k) if 0 <= o * s - p + t < n) for o in range(n_out))


def _out(n: int, k: int, s: int) -> int:
  """Output size of a k x k / s conv or pool with torchvision's k // 2 padding."""
  return (n + 2 * (k // 2) - k) // s + 1


def _config(model, overrides) -> dict:
  if isinstance(model, Architecture):  # a built ResNet
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(Architecture)}
    return {**fields, **overrides}
  defaults = {f.name: f.default for f in dataclasses.fields(Architecture)}
  return {**defaults, **model_config(model, **overrides)}


def _native_size(model, config) -> int:
  if isinstance(model, (str, ModelSpec)):
    return model_spec(model).image_size
  return 32 if config["stem"] == "cifar" else 224


def layer_table(
  model, image_size: Optional[int | Sequence[int]] = None, in_channels: int = 3, **overrides
) -> list[Layer]:
  """Every conv/BN/dense layer of ``model`` (a name, ModelSpec or ResNet) at ``image_size``."""
  c = _config(model, overrides)
  size = image_size if image_size is not None else _native_size(model, c)
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  m = c["width_multiplier"]
  layers: list[Layer] = []

  def add_conv(name, k, cin, cout, s=1, g=1):
    nonlocal h, w
    hw_in = (h, w)
    h, w = _out(h, k, s), _out(w, k, s)
    layers.append(Layer(name, "conv", k, cin, cout, g, (h, w), hw_in, s))

  def add_bn(name, ch):
    layers.append(Layer(name, "bn", 1, ch, ch, 1, (h, w)))

  stem = scaled(c["stem_width"], m)
  if c["stem"] == "deep":  # ResNet-C: 3x3/2, 3x3, 3x3 (the last at twice the width)
    for i, (ci, co, s) in enumerate(((in_channels, stem, 2), (stem, stem, 1), (stem, 2 * stem, 1))):
      add_conv(f"stem_conv{i + 1}", 3, ci, co, s)
      add_bn(f"stem_bn{i + 1}", co)
    stem = 2 * stem
    h, w = _out(h, 3, 2), _out(w, 3, 2)  # 3x3/2 max-pool, padding 1
  elif c["stem"] == "imagenet":
    add_conv("stem_conv", 7, in_channels, stem, 2)
    add_bn("stem_bn", stem)
    h, w = _out(h, 3, 2), _out(w, 3, 2)  # 3x3/2 max-pool, padding 1
  else:
    add_conv("stem_conv", 3, in_channels, stem, 1)
    if not c["preact"]:
      add_bn("stem_bn", stem)

  layout = block_layout(c["block"])
  cin = stem
  for i, (n_blocks, planes) in enumerate(zip(c["stage_sizes"], c["stage_widths"])):
    for j in range(n_blocks):
      block = layout(
        scaled(planes, m),
        stride=2 if (i > 0 and j == 0) else 1,
        shortcut=c["shortcut"],
        stride_on=c["stride_on"],
        groups=c["groups"],
        base_width=c["width_per_group"],
        preact=c["preact"],
        se_ratio=c["se_ratio"],
      )
      h0, w0 = h, w  # the block's input, where its shortcut starts
      for layer in block.layers(cin):
        name = f"stage{i + 1}_block{j}/{layer.name}"
        if layer.kind == "bn":
          add_bn(name, layer.cout)
        elif layer.kind == "dense":  # SE's 1x1 convs with bias on the pooled features
          layers.append(Layer(name, "dense", 1, layer.cin, layer.cout, 1, (1, 1)))
        elif layer.shortcut:
          h1, w1 = h, w
          h, w = _out(h0, 1, layer.pool), _out(w0, 1, layer.pool)  # ResNet-D: 2x2/s pool (ceil)
          add_conv(name, layer.kernel, layer.cin, layer.cout, layer.stride, layer.groups)
          assert (h, w) == (h1, w1), name  # the shortcut meets the branch
        else:
          add_conv(name, layer.kernel, layer.cin, layer.cout, layer.stride, layer.groups)
      cin = block.out_channels
  if c["preact"]:
    add_bn("final_bn", cin)
  layers.append(Layer("head", "dense", 1, cin, c["num_classes"], 1, (1, 1)))
  return layers


def count_macs(
  model,
  image_size: Optional[int | Sequence[int]] = None,
  in_channels: int = 3,
  *,
  exclude_padding: bool = False,
  **overrides,
) -> int:
  """Multiply-adds of one image's forward pass (convs + dense; BN/ReLU/pool/adds excluded).

  ``model`` is a name, a ModelSpec or a ResNet; ``image_size`` defaults to the native one;
  ``overrides`` are ResNet fields (e.g. ``stride_on='1x1'`` for the paper's placement).
  The usual convention (and the paper's) counts every kernel tap at every output position;
  ``exclude_padding=True`` skips taps on the zero padding, as XLA's cost analysis does.
  """
  layers = layer_table(model, image_size, in_channels, **overrides)
  return sum(layer.valid_macs if exclude_padding else layer.macs for layer in layers)


def count_params(model, in_channels: int = 3, **overrides) -> int:
  """Trainable parameters (conv kernels, BN scale+bias, dense kernel+bias), from the layer table."""
  return sum(layer.params for layer in layer_table(model, 32, in_channels, **overrides))


def format_model_table(names: Optional[Iterable[str]] = None) -> str:
  """A text table: name, family, native image size, parameters, multiply-adds (both analytic).

  Multiply-adds count convs and the dense head at the native resolution (BN, ReLU, pooling and
  residual additions excluded).
  """
  names = list(names) if names is not None else list_models()
  header = f"{'model':<20} {'family':<9} {'image':>5} {'params':>13} {'mult-adds':>10}"
  rows = [header, "-" * len(header)]
  for name in names:
    spec = model_spec(name)
    params = count_params(name)
    macs = count_macs(name)
    rows.append(
      f"{name:<20} {spec.family:<9} {spec.image_size:>5} {params:>13,} {_human(macs):>10}"
    )
  return "\n".join(rows)


def _human(n: int) -> str:
  if n >= 1e9:
    return f"{n / 1e9:.2f}G"
  return f"{n / 1e6:.1f}M"
