"""The ResNet network: stem -> stages of residual blocks -> global average pool -> dense head.

He et al. 2015, "Deep Residual Learning for Image Recognition": Table 1 (ImageNet: 7x7/2 conv stem,
3x3/2 max-pool, four stages at 64-128-256-512 planes) and §4.2 (CIFAR-10: 3x3 conv with 16 filters,
three stages of n basic blocks at 16-32-64 filters, 6n+2 layers).  Pre-activation ("v2", He et al.
2016) puts BN-ReLU before each conv and a final BN-ReLU before pooling.

Call: ``model.apply({'params': p, 'batch_stats': s}, x_nhwc, train=False)``; with ``train=True``
pass ``mutable=['batch_stats']``.  Any number of input channels; logits are float32 whatever
``dtype`` (the compute dtype) is.  ``param_dtype`` is the storage dtype of the parameters.

Parameter naming (stable; a torchvision state-dict importer maps onto it one-to-one).  Stages and
blocks count like torchvision's ``layer{i}.{j}`` (stages from 1, blocks from 0)::

    stem_conv/kernel                 <- conv1.weight            (7, 7, cin, 64) or (3, 3, cin, 16)
    stem_bn/{scale,bias}             <- bn1.{weight,bias}       (batch_stats: {mean,var} <- running_*)
    stage{i}_block{j}/conv{k}/kernel <- layer{i}.{j}.conv{k}.weight   k = 1, 2 (basic), 1, 2, 3 (bottleneck)
    stage{i}_block{j}/bn{k}/...      <- layer{i}.{j}.bn{k}.*
    stage{i}_block{j}/shortcut_conv/kernel <- layer{i}.{j}.downsample.0.weight   (options B, C)
    stage{i}_block{j}/shortcut_bn/...      <- layer{i}.{j}.downsample.1.*
    final_bn/...                     (pre-activation nets only: BN-ReLU before the pool)
    head/{kernel,bias}               <- fc.weight.T, fc.bias    kernel (features, num_classes)

timm's variants (``resnet*d``, ``seresnet*``, ``seresnext*``) add, in timm's order::

    stem_conv{1,2,3}/kernel, stem_bn{1,2,3}/...   <- conv1.{0,3,6}.weight; conv1.{1,4}.*, bn1.*
                                     (deep stem, ``stem='deep'``: 3x3/2, 3x3, 3x3 convs at
                                     stem_width, stem_width, 2 * stem_width, each with BN-ReLU)
    stage{i}_block{j}/shortcut_conv, shortcut_bn  <- layer{i}.{j}.downsample.{1,2}  (option D:
                                     downsample.0 is the parameter-free average pool)
    stage{i}_block{j}/se/fc{1,2}/{kernel,bias}    <- layer{i}.{j}.se.fc{1,2}.{weight,bias}
                                     kernel (1, 1, cin, cout) like a conv's

Conv kernels are flax's standard ``(kh, kw, cin / groups, cout)`` (torch: ``w.transpose(2, 3, 1, 0)``);
convs have no bias.  Example, resnet50's first block (``stage1_block0``)::

    stage1_block0/conv1/kernel (1, 1, 64, 64)     stage1_block0/bn1/{scale,bias} (64,)
    stage1_block0/conv2/kernel (3, 3, 64, 64)     stage1_block0/bn2/{scale,bias} (64,)
    stage1_block0/conv3/kernel (1, 1, 64, 256)    stage1_block0/bn3/{scale,bias} (256,)
    stage1_block0/shortcut_conv/kernel (1, 1, 64, 256)  stage1_block0/shortcut_bn/{scale,bias} (256,)

Padding follows torchvision exactly (k // 2 on every side; max-pool 3x3/2 with padding 1, padded
with -inf), so imported weights reproduce torchvision's outputs.  Initialisation: convs
kaiming-normal fan_out (torchvision), BN scale 1 / bias 0 (scale 0 for the last BN of each block
with ``zero_init_last_bn``), head U(+-1/sqrt(fan_in)) like ``torch.nn.Linear``.

Performance options (docs/benchmarks.md; none changes the arithmetic or the parameters):

* ``matmul_1x1=True`` (default): 1x1 convs as matmuls over channels (blocks.Conv1x1), same kernels.
* ``scan_blocks=True`` (opt-in): within each stage the identical blocks 1..n-1 are one ``nn.scan``
  (compiled once instead of n-1 times).  Their variables then live, stacked on a leading axis of
  length n-1, under ``stage{i}_blocks/block/...`` instead of ``stage{i}_block{j}/...`` (j >= 1);
  block 0 (stride / projection) stays ``stage{i}_block0``.  :func:`to_scanned` and
  :func:`to_unrolled` convert any such tree (params, batch_stats, optimizer-state subtrees) both
  ways exactly, so checkpoints and parameter counts use the unrolled layout documented above.
  The scanned blocks compute their conv gradients with ``blocks.conv_forward_form_grads`` (same
  values; XLA:CPU runs autodiff's own gradient convolutions many times slower inside a loop).
* ``remat=True`` (opt-in): each block is rematerialised (``nn.remat``) -- activations inside a
  block are recomputed in the backward pass instead of stored; for very deep nets (ResNet-1202).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .architecture import Architecture, check_drop_path_rate, scaled
from .blocks import BLOCKS, SHORTCUTS, STRIDE_ON, Compute, uniform_fan_in

STEMS = ("imagenet", "cifar", "deep")


class ResNet(nn.Module, Architecture, Compute):
  """A residual (or plain) network; every field can be overridden through ``get_model``.

  The shape fields come from :class:`~.architecture.Architecture`, the compute fields (dtypes,
  BatchNorm settings, ``matmul_1x1``, ``conv_impl``, ``zero_init_last_bn``) from
  :class:`~.blocks.Compute`, which the blocks share; the network adds how blocks are stacked.

  Attributes:
    stage_sizes: blocks per stage (Table 1, e.g. (3, 4, 6, 3); CIFAR: (n, n, n)).
    block: ``'basic'`` or ``'bottleneck'`` (see blocks.py).
    stage_widths: planes per stage (block output = planes * expansion).
    stem: ``'imagenet'`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), ``'cifar'`` (3x3 conv, BN, ReLU)
      or ``'deep'`` (ResNet-C, He et al. 2019: three 3x3 convs, the first with stride 2, each with
      BN-ReLU, then the 3x3/2 max-pool; timm's ``stem_type='deep'``).
    stem_width: stem conv filters (64 ImageNet, 16 CIFAR); for the deep stem, as in timm, the
      width of its first two convs, the third having twice as many (resnet*d: 32, 32, 64).
    width_multiplier: scales ``stem_width`` and ``stage_widths`` (1.0 = the paper's).
    num_classes: head outputs.
    shortcut: ``'A'``, ``'B'``, ``'C'`` or ``'none'`` (plain net), paper §3.3/§4.1; ``'D'``:
      B with an average pool before a stride-1 projection (ResNet-D, He et al. 2019).
    stride_on: ``'3x3'`` (torchvision v1.5) or ``'1x1'`` (paper v1), bottleneck only.
    groups, width_per_group: ResNeXt cardinality and per-group width (64 = plain ResNet; wide
      ResNet-50-2 is 128).
    preact: pre-activation v2 blocks plus a final BN-ReLU.
    se_ratio: squeeze-and-excitation in every block (timm's seresnet: 1/16; 0: none).
    drop_path_rate: stochastic depth (Huang et al. 2016) of the last block; block k of K drops its
      residual branch per example with probability ``drop_path_rate * k / (K - 1)`` in training
      (timm's rule), from the ``"dropout"`` RNG stream (``apply(..., rngs={"dropout": key})``).
    scan_blocks: compile the repeated blocks of a stage once (``nn.scan``; scanned param layout).
    remat: rematerialise each block in the backward pass (less memory, ~1/3 more compute).
    (compute fields): see :class:`~.blocks.Compute`.
  """

  drop_path_rate: float = 0.0
  scan_blocks: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Stem, then the stages of blocks, then the pooled head (Table 1's columns, top to bottom)."""
    self._check()
    x = self._stem(jnp.asarray(x, self.dtype), train)
    rates = self._drop_path_rates()
    for i, (n_blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      stage_rates, rates = rates[:n_blocks], rates[n_blocks:]
      x = self._stage(x, i + 1, scaled(planes, self.width_multiplier), stage_rates, train)
    return self._head(x, train)

  def _drop_path_rates(self) -> list[float]:
    """Each block's stochastic-depth rate, rising linearly from 0 (first) to the rate (last)."""
    total = sum(self.stage_sizes)
    return [self.drop_path_rate * k / max(total - 1, 1) for k in range(total)]

  def _check(self):
    for field, allowed in (
      ("block", tuple(BLOCKS)),
      ("stem", STEMS),
      ("shortcut", SHORTCUTS),
      ("stride_on", STRIDE_ON),
    ):
      if getattr(self, field) not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
    if len(self.stage_sizes) != len(self.stage_widths):
      raise ValueError("stage_sizes and stage_widths must have the same length")
    check_drop_path_rate(self.drop_path_rate)
    if self.drop_path_rate > 0 and self.shortcut == "none":
      raise ValueError(
        "drop_path_rate needs residual blocks; a plain net (shortcut='none') has none"
      )

  def _stem(self, x, train: bool):
    """Table 1's conv1 (7x7/2, 64) and 3x3/2 max-pool for ImageNet; §4.2's 3x3 conv for CIFAR;
    ResNet-C's three 3x3 convs in place of the 7x7 (He et al. 2019, Fig. 2b) for ``'deep'``."""
    width = scaled(self.stem_width, self.width_multiplier)
    if self.stem == "deep":
      for i, (features, stride) in enumerate(((width, 2), (width, 1), (2 * width, 1)), start=1):
        x = self._conv(features, 3, stride, name=f"stem_conv{i}")(x)
        x = nn.relu(self._bn(train, name=f"stem_bn{i}")(x))
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    kernel, stride = (7, 2) if self.stem == "imagenet" else (3, 1)
    x = self._conv(width, kernel, stride, name="stem_conv")(x)
    if self.stem == "imagenet":
      x = nn.relu(self._bn(train, name="stem_bn")(x))
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if not self.preact:  # v2 CIFAR: the first block pre-activates the stem output.
      x = nn.relu(self._bn(train, name="stem_bn")(x))
    return x

  def _stage(self, x, stage: int, planes: int, rates: list[float], train: bool):
    """One stage (Table 1's conv2_x ... conv5_x; §4.2's 2n layers per map size): block 0 takes
    the stride (2 from the second stage on, "performed by conv3_1, conv4_1, and conv5_1") and any
    projection, then ``n_blocks - 1`` identical blocks, unrolled or as one ``nn.scan``.  ``rates``:
    each block's stochastic-depth rate (one per block)."""
    n_blocks = len(rates)
    block_cls = BLOCKS[self.block]
    fields = dict(
      planes=planes,
      shortcut=self.shortcut,
      stride_on=self.stride_on,
      groups=self.groups,
      base_width=self.width_per_group,
      preact=self.preact,
      se_ratio=self.se_ratio,
      **self.compute_fields(),
    )
    # train is positional (argument 2) so that nn.remat can treat it as static.
    first_cls = nn.remat(block_cls, static_argnums=(2,)) if self.remat else block_cls
    stride = 2 if stage > 1 else 1
    name = f"stage{stage}_block0"
    x = first_cls(stride=stride, drop_path=rates[0], name=name, **fields)(x, train)
    if n_blocks <= 1:
      return x
    if not self.scan_blocks:
      for j in range(1, n_blocks):
        name = f"stage{stage}_block{j}"
        x = first_cls(stride=1, drop_path=rates[j], name=name, **fields)(x, train)
      return x
    body = nn.remat(_ScanBody, prevent_cse=False) if self.remat else _ScanBody
    # The scanned blocks' rates differ, so they are scanned over with the blocks, and each block
    # draws its own drop mask.
    drop = self.drop_path_rate > 0
    scanned = nn.scan(
      body,
      variable_axes={"params": 0, "batch_stats": 0},
      split_rngs={"params": True, "dropout": True} if drop else {"params": True},
      length=n_blocks - 1,
    )
    # Inside the scan's while loop XLA:CPU needs the gradient convolutions written in forward
    # form (blocks.conv_forward_form_grads); same parameters and values.
    body_fields = tuple(sorted({**fields, "forward_form_grads": True}.items()))
    xs = jnp.asarray(rates[1:], jnp.float32) if drop else None
    x, _ = scanned(block=self.block, fields=body_fields, train=train, name=f"stage{stage}_blocks")(
      x, xs
    )
    return x

  def _head(self, x, train: bool):
    """Global average pooling and the fully connected layer (Table 1's last row; §3.4)."""
    if self.preact:  # v2: the last unit's output is not activated, so BN-ReLU before the pool
      x = nn.relu(self._bn(train, name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    init = uniform_fan_in(x.shape[-1])
    x = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=init,
      bias_init=init,
      name="head",
    )(x)
    return jnp.asarray(x, jnp.float32)


class _ScanBody(nn.Module):
  """One repeated block as a scan body: ``(x, rate) -> (block(x), None)``; the block is ``block``,
  ``rate`` its stochastic-depth rate (None: the field's, 0)."""

  block: str
  fields: tuple
  train: bool

  @nn.compact
  def __call__(self, x, rate):
    block = BLOCKS[self.block](stride=1, name="block", **dict(self.fields))
    return block(x, self.train, rate), None


_UNROLLED = re.compile(r"^stage(\d+)_block(\d+)$")
_SCANNED = re.compile(r"^stage(\d+)_blocks$")


def to_scanned(tree):
  """Unrolled layout -> ``scan_blocks=True`` layout (exact; numpy/jax leaves are stacked).

  ``tree`` is any dict keyed like the model's variables of one collection (``params``,
  ``batch_stats``, or e.g. an optimizer's momentum for the params): ``stage{i}_block{j}`` for
  j >= 1 are stacked into ``stage{i}_blocks/block``; other keys pass through.  A
  ``{'params': ..., 'batch_stats': ...}`` variables dict is converted collection by collection.
  """
  if _is_variables(tree):
    return {k: to_scanned(v) for k, v in tree.items()}
  out, stacks = {}, {}
  for key, value in tree.items():
    m = _UNROLLED.match(key)
    if m and int(m.group(2)) >= 1:
      stacks.setdefault(int(m.group(1)), {})[int(m.group(2))] = value
    else:
      out[key] = value
  for stage, blocks in stacks.items():
    if sorted(blocks) != list(range(1, len(blocks) + 1)):
      raise ValueError(f"stage{stage}: blocks {sorted(blocks)} are not 1..n-1")
    ordered = [blocks[j] for j in range(1, len(blocks) + 1)]
    out[f"stage{stage}_blocks"] = {
      "block": jax.tree_util.tree_map(lambda *xs: _stack(xs), *ordered)
    }
  return out


def to_unrolled(tree):
  """``scan_blocks=True`` layout -> the unrolled (checkpoint) layout; inverse of :func:`to_scanned`."""
  if _is_variables(tree):
    return {k: to_unrolled(v) for k, v in tree.items()}
  out = {}
  for key, value in tree.items():
    m = _SCANNED.match(key)
    if not m:
      out[key] = value
      continue
    inner = value["block"]
    n = jax.tree_util.tree_leaves(inner)[0].shape[0]
    for j in range(n):
      out[f"stage{m.group(1)}_block{j + 1}"] = jax.tree_util.tree_map(lambda a, j=j: a[j], inner)
  return out


def _is_variables(tree) -> bool:
  return bool(tree) and set(tree) <= {"params", "batch_stats"}


def _stack(xs):
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)
