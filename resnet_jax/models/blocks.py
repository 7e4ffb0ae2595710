"""Residual building blocks (He et al. 2015, "Deep Residual Learning for Image Recognition").

* :class:`BasicBlock`      -- two 3x3 convs (paper §3.3, Fig. 5 left; Table 1 for ResNet-18/34).
* :class:`BottleneckBlock` -- 1x1 reduce, 3x3, 1x1 expand x4 (paper §4.1 "Deeper Bottleneck
  Architectures", Fig. 5 right; Table 1 for ResNet-50/101/152).  ``groups``/``base_width`` give
  ResNeXt (Xie et al. 2017) and Wide ResNet-50/101-2 (torchvision's widened bottleneck).
* ``preact=True`` on either block gives the pre-activation ("v2") unit of He et al. 2016,
  "Identity Mappings in Deep Residual Networks", Fig. 1(b)/§4: BN-ReLU-conv, nothing after the add.

As in torchvision the two blocks differ, for the network that stacks them, only by ``expansion``
(output channels = ``planes * expansion``).  Which layers a block type has is written once, in its
layout (:class:`~.architecture.BlockLayout`: the branch's convs and the shared BN, SE and shortcut
rules), which the block inherits and builds and :mod:`.flops` counts.  BN follows every conv
(§3.4), ReLU follows the addition (Eq. 1, Fig. 2).  Convs have no bias; BN is flax
``nn.BatchNorm`` (momentum 0.9, eps 1e-5 -- torchvision's defaults) in the ``batch_stats``
collection, with ``axis_name`` for cross-replica statistics under ``pmap``.

Shortcut options (paper §3.3 "Residual Network" and §4.1 "Identity vs. Projection Shortcuts",
Table 3) -- one per network:

* ``'A'``: identity; where the shape changes, strided subsampling ``x[:, ::s, ::s]`` and
  zero-padded extra channels (no parameters).
* ``'B'``: identity; 1x1 projection (+ BN) only where the shape changes (torchvision's choice).
* ``'C'``: 1x1 projection (+ BN) on every block.
* ``'D'``: like B, but a strided projection first averages each 2x2 window (stride s, the last
  window clipped, padding not counted) and then applies a 1x1 conv with stride 1 (+ BN), so that
  it sees every input position (He et al. 2019, "Bag of Tricks", ResNet-D; timm's ``avg_down``).
* ``'none'``: plain network of §4.1 (Fig. 3 middle): no shortcut and no addition.

Stride placement for the bottleneck (``stride_on``): ``'3x3'`` (torchvision "v1.5", the default)
or ``'1x1'`` (the paper, §3.4/Table 1: "downsampling is performed by conv3_1, conv4_1, and conv5_1
with a stride of 2" -- on the first 1x1 in the original Caffe models).  A basic block's first conv
is the 3x3 either way.

Squeeze-and-excitation (``se_ratio`` > 0; Hu et al. 2018, timm's ``SEModule``) rescales the
channels of the residual branch after its last BN, before the addition.  Stochastic depth
(``drop_path``; Huang et al. 2016, timm's ``DropPath``) drops the whole residual branch per example
in training, from the ``"dropout"`` RNG stream, and is the identity at evaluation.

Parameter names inside a block: ``conv1, bn1, conv2, bn2[, conv3, bn3][, se/fc1, se/fc2][,
shortcut_conv, shortcut_bn]`` (pre-activation blocks: ``bn1`` precedes ``conv1`` etc., and the
projection shortcut is a bare ``shortcut_conv`` applied to the pre-activated input, as in the v2
paper's code).

Performance (docs/benchmarks.md): ``conv_impl`` and ``matmul_1x1`` choose how convolutions run on
the CPU, and only there (:mod:`.cpu_conv` picks per platform at lowering; GPU and TPU always get
plain convolutions).  ``conv_impl="onednn"`` runs every conv through oneDNN inside the compiled
step (:mod:`.onednn`, the XLA FFI; the optional extra ``resnet-jax[cpu]``), which is what
PyTorch's CPU convolutions run; ``"xla"`` keeps ``lax.conv``, with every ungrouped 1x1 conv as a
matmul over channels (``matmul_1x1=True``, the default: XLA's CPU convolution is several times
slower than its dot for 1x1 kernels, above all for the weight gradient) and, in scanned blocks,
gradient convolutions in forward form; ``"auto"`` (the default) is oneDNN where the extra and a
C++ compiler are installed (:mod:`.conv_impl`).  oneDNN falls back to ``lax.conv`` with one
warning where it cannot run.  Each replacement keeps ``nn.Conv``'s ``(k, k, cin / groups, cout)``
``kernel`` parameter and initialiser, so checkpoints, parameter counts and weight import do not
change.
"""

from __future__ import annotations

from typing import Any, Optional

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import conv_impl as conv_impl_lib
from . import cpu_conv
from .cpu_conv import conv_forward_form_grads  # noqa: F401  (part of this module's API)
from .architecture import BasicLayout, BlockLayout, BottleneckLayout, se_channels

Dtype = Any

SHORTCUTS = ("A", "B", "C", "D", "none")
CONV_IMPLS = conv_impl_lib.CONV_IMPLS
STRIDE_ON = ("3x3", "1x1")

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu") -> N(0, 2/fan_out),
# not truncated.  For a (kh, kw, cin/groups, cout) kernel flax's fan_out is kh*kw*cout, as torch's.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # jax: untruncated


def _nn_conv(
  features: int,
  kernel: int,
  stride: int = 1,
  *,
  groups: int = 1,
  name: str,
  dtype: Dtype = jnp.float32,
  param_dtype: Dtype = jnp.float32,
  kernel_init=None,
) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=False,
    kernel_init=kernel_init or conv_kernel_init,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


class _ConvKernel(nn.Module):
  """A bias-free k x k conv (padding k // 2, optionally grouped) computed by :func:`cpu_conv.conv`:
  the CPU form ``cpu_form`` when lowered for the CPU, a plain convolution elsewhere.

  The ``kernel`` parameter is the one ``nn.Conv(features, (k, k), feature_group_count=groups)``
  creates -- shape ``(k, k, cin / groups, features)``, same initialiser -- so a subclass is
  interchangeable with ``nn.Conv`` in a checkpoint, in parameter counts and in weight import.
  """

  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = conv_kernel_init
  kernel_size: int = 3
  groups: int = 1

  cpu_form = ""  # class attribute: one of cpu_conv.CPU_FORMS

  @nn.compact
  def __call__(self, x):
    k, g = self.kernel_size, self.groups
    kernel = self.param(
      "kernel", self.kernel_init, (k, k, x.shape[-1] // g, self.features), self.param_dtype
    )
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    return cpu_conv.conv(x, kernel, self.stride, pad, g, self.cpu_form)


class Conv1x1(_ConvKernel):
  """A bias-free 1x1 conv (padding 0), computed on the CPU as a matmul over channels.

  ``stride`` s keeps every s-th row and column first (what a 1x1 conv with stride s and no
  padding computes).
  """

  kernel_size: int = 1
  cpu_form = "matmul"


class ConvForwardFormGrads(_ConvKernel):
  """A bias-free, ungrouped k x k conv whose gradients are, on the CPU, forward-form convolutions
  (:func:`cpu_conv.conv_forward_form_grads`).

  Same outputs as ``nn.Conv``; used for the blocks inside ``nn.scan`` (``scan_blocks=True``),
  where it keeps XLA:CPU's gradient convolutions fast.
  """

  cpu_form = "forward_form"


class OnednnConv(_ConvKernel):
  """A bias-free k x k conv (optionally grouped) run on the CPU by oneDNN (:func:`onednn.conv`).

  Same outputs as ``nn.Conv``; falls back to ``lax.conv`` where oneDNN cannot run.
  """

  cpu_form = "onednn"


def _cpu_class(
  kernel: int, groups: int, impl: str, matmul_1x1: bool, forward_form_grads: bool
) -> type[_ConvKernel] | None:
  """The module computing a conv in its CPU form, or None where the plain ``nn.Conv`` is the CPU's
  best too."""
  if impl == "onednn":
    return OnednnConv
  if matmul_1x1 and kernel == 1 and groups == 1:
    return Conv1x1
  if forward_form_grads and groups == 1:
    return ConvForwardFormGrads
  return None


def conv(
  features: int,
  kernel: int,
  stride: int = 1,
  *,
  groups: int = 1,
  name: str,
  dtype: Dtype = jnp.float32,
  param_dtype: Dtype = jnp.float32,
  kernel_init=None,
  matmul_1x1: bool = False,
  forward_form_grads: bool = False,
  conv_impl: str = "auto",
) -> nn.Module:
  """Bias-free conv with torchvision padding (k // 2 on every side, so stride-2 output is ceil(n/2)).

  How it runs on the CPU (other platforms: a plain convolution, :mod:`.cpu_conv`):
  ``conv_impl`` ``'onednn'`` (or ``'auto'`` where oneDNN is installed, fp32): :class:`OnednnConv`;
  otherwise ``matmul_1x1``: an ungrouped 1x1 conv is :class:`Conv1x1`; ``forward_form_grads``: an
  ungrouped conv is :class:`ConvForwardFormGrads`.  Same parameter in every case.
  """
  impl = conv_impl_lib.resolve(conv_impl, fp32=jnp.dtype(dtype) == jnp.float32)
  cls = _cpu_class(kernel, groups, impl, matmul_1x1, forward_form_grads)
  if cls is None:
    return _nn_conv(
      features,
      kernel,
      stride,
      groups=groups,
      name=name,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=kernel_init,
    )
  return cls(
    features,
    stride,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=kernel_init or conv_kernel_init,
    kernel_size=kernel,
    groups=groups,
    name=name,
  )


def batch_norm(
  train: bool,
  *,
  name: str,
  zero_scale: bool = False,
  momentum: float = 0.9,
  epsilon: float = 1e-5,
  axis_name: Optional[str] = None,
  dtype: Dtype = jnp.float32,
  param_dtype: Dtype = jnp.float32,
) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=momentum,
    epsilon=epsilon,
    axis_name=axis_name,
    dtype=dtype,
    param_dtype=param_dtype,
    scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
    name=name,
  )


def subsample_pad(x: jnp.ndarray, stride: int, out_channels: int) -> jnp.ndarray:
  """Option A shortcut: ``x[:, ::s, ::s]`` and zeros for the extra channels (paper §3.3)."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise ValueError(f"option A cannot reduce channels ({x.shape[-1]} -> {out_channels})")
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


def avg_pool_down(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """ResNet-D's shortcut pool: 2x2 average with ``stride``, as torch's ``AvgPool2d(2, stride,
  ceil_mode=True, count_include_pad=False)`` -- an odd edge keeps a last, clipped window that
  averages only the positions inside the input."""
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n - 2) // stride) + 1 if n >= 2 else 1
    if (out - 1) * stride >= n:  # torch drops a last window that would start outside the input
      out -= 1
    pads.append((0, max(0, (out - 1) * stride + 2 - n)))
  return nn.avg_pool(x, (2, 2), (stride, stride), tuple(pads), count_include_pad=False)


def drop_path(x: jnp.ndarray, rate, rng) -> jnp.ndarray:
  """Stochastic depth per example: zero ``x[i]`` with probability ``rate``, else scale it by
  1 / (1 - rate), so the branch's expectation is unchanged (timm's ``DropPath``)."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def uniform_fan_in(fan_in: int):
  """torch's default ``nn.Linear``/bias initialiser, U(+-1/sqrt(fan_in)) (the head's and SE's)."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class _PointwiseFc(nn.Module):
  """A 1x1 conv with bias on pooled ``(N, C)`` features, as a matmul; its parameters are those of
  ``nn.Conv(features, (1, 1), use_bias=True)``: ``kernel`` (1, 1, C, features) and ``bias``."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", conv_kernel_init, (1, 1, cin, self.features), self.param_dtype)
    bias = self.param("bias", uniform_fan_in(cin), (self.features,), self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    return x @ jnp.asarray(kernel[0, 0], self.dtype) + jnp.asarray(bias, self.dtype)


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018, Fig. 3; timm's ``SEModule``): global average pool,
  ``fc1`` to ``reduced`` channels, ReLU, ``fc2`` back, and a sigmoid gate on each channel."""

  reduced: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fc = functools.partial(_PointwiseFc, dtype=self.dtype, param_dtype=self.param_dtype)
    s = jnp.mean(x, axis=(1, 2))
    s = fc(x.shape[-1], name="fc2")(nn.relu(fc(self.reduced, name="fc1")(s)))
    return x * jnp.asarray(nn.sigmoid(s), x.dtype)[:, None, None, :]


@dataclasses.dataclass(kw_only=True)
class Compute:
  """How a network computes and initialises, not what it is: declared once, for the network and
  for its blocks (the network hands :meth:`compute_fields` down to every block it builds).

  None of these changes the parameter tree; ``zero_init_last_bn`` changes only initial values (the
  zero-γ of Goyal et al. 2017, "Accurate, Large Minibatch SGD"; torchvision's
  ``zero_init_residual``).
  Keyword-only, so a block's own fields keep their positions (``BasicBlock(planes, stride)``).

  Attributes:
    zero_init_last_bn: zero scale of each block's last BN (pre-activation: last conv's kernel).
    bn_momentum, bn_epsilon: BatchNorm running-average momentum / epsilon (torchvision: 0.9, 1e-5;
      BN after every conv, paper §3.4).
    bn_axis_name: pmap axis name for cross-replica BN statistics (None: per-replica).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); param_dtype: parameter dtype.
    matmul_1x1: 1x1 convs as matmuls on the CPU (same parameters; faster on XLA:CPU).
    conv_impl: ``'auto'`` (oneDNN where installed, :mod:`.conv_impl`), ``'xla'`` (lax.conv) or
      ``'onednn'`` (oneDNN inside the step, the extra ``resnet-jax[cpu]``); CPU only, same
      parameters: other platforms lower plain convolutions (:mod:`.cpu_conv`).
  """

  zero_init_last_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  matmul_1x1: bool = True
  conv_impl: str = "auto"

  def compute_fields(self) -> dict[str, Any]:
    """These fields' values, to build a part of the network that computes the same way."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(Compute)}

  def _conv(self, features, kernel, stride=1, groups=1, *, name, zero=False, forward_form=False):
    return conv(
      features,
      kernel,
      stride,
      groups=groups,
      name=name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.zeros if zero else None,
      matmul_1x1=self.matmul_1x1,
      forward_form_grads=forward_form,
      conv_impl=self.conv_impl,
    )

  def _bn(self, train, *, name, zero=False):
    return batch_norm(
      train,
      name=name,
      zero_scale=zero,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      axis_name=self.bn_axis_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


class _Block(nn.Module, BlockLayout, Compute):
  """The forward pass the block types share: a block type is its layout
  (:class:`~.architecture.BlockLayout`: ``expansion``, the branch's convs and the shape fields
  ``planes``, ``stride``, ``shortcut``, ...), and this builds exactly the layers it lists.
  ``planes`` is the stage width; output = planes * expansion.

  ``forward_form_grads``: the convs compute their gradients in forward form
  (:func:`conv_forward_form_grads`), which the network asks for in the blocks it scans.
  ``se_ratio``: squeeze-and-excitation with ``se_channels(out, se_ratio)`` channels (0: none).
  ``drop_path``: this block's stochastic-depth rate (the network raises it block by block).
  """

  forward_form_grads: bool = False
  drop_path: float = 0.0

  def _conv(self, features, kernel, stride=1, groups=1, *, name, zero=False):
    forward_form = self.forward_form_grads
    return super()._conv(
      features, kernel, stride, groups, name=name, zero=zero, forward_form=forward_form
    )

  def _project(self, x, out_channels: int):
    """The projection shortcut's conv: 1x1 with the block's stride, or for D the 2x2 average pool
    with that stride and then a 1x1 with stride 1."""
    if self.shortcut == "D" and self.stride > 1:
      return self._conv(out_channels, 1, 1, name="shortcut_conv")(avg_pool_down(x, self.stride))
    return self._conv(out_channels, 1, self.stride, name="shortcut_conv")(x)

  def _residual_out(self, y, train: bool, drop_rate):
    """The branch as it meets the shortcut: squeeze-and-excitation, then stochastic depth."""
    if self.se_ratio > 0:
      reduced = se_channels(y.shape[-1], self.se_ratio)
      y = SqueezeExcite(reduced, self.dtype, self.param_dtype, name="se")(y)
    rate = self.drop_path if drop_rate is None else drop_rate
    if train and not (isinstance(rate, (int, float)) and rate == 0):
      y = drop_path(y, rate, self.make_rng("dropout"))
    return y

  @nn.compact
  def __call__(self, x, train: bool = False, drop_rate=None):
    """``drop_rate``: this block's stochastic-depth rate as an array (scanned blocks, whose rates
    differ), in place of the ``drop_path`` field."""
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
    if self.stride_on not in STRIDE_ON:
      raise ValueError(f"stride_on must be one of {STRIDE_ON}, got {self.stride_on!r}")
    out_channels = self.out_channels
    convs = self.branch()
    project = self.needs_projection(x.shape[-1])

    if self.preact:  # He et al. 2016, Fig. 1(b): BN-ReLU-conv; identity path untouched.
      y = nn.relu(self._bn(train, name="bn1")(x))
      if self.shortcut == "A":
        identity = subsample_pad(x, self.stride, out_channels)
      elif project:
        identity = self._project(y, out_channels)
      else:
        identity = x
      for i, (idx, feats, k, s, g) in enumerate(convs):
        if i > 0:
          y = nn.relu(self._bn(train, name=f"bn{idx}")(y))
        last = i == len(convs) - 1
        # No BN follows the last conv, so zero_init_last_bn zeroes that conv's kernel.
        y = self._conv(feats, k, s, g, name=f"conv{idx}", zero=last and self.zero_init_last_bn)(y)
      y = self._residual_out(y, train, drop_rate)
      return y if self.shortcut == "none" else y + identity

    y = x
    for i, (idx, feats, k, s, g) in enumerate(convs):
      last = i == len(convs) - 1
      y = self._conv(feats, k, s, g, name=f"conv{idx}")(y)
      y = self._bn(train, name=f"bn{idx}", zero=last and self.zero_init_last_bn)(y)
      if not last:
        y = nn.relu(y)
    y = self._residual_out(y, train, drop_rate)
    if self.shortcut == "none":
      return nn.relu(y)
    if project:
      identity = self._bn(train, name="shortcut_bn")(self._project(x, out_channels))
    elif self.shortcut == "A":
      identity = subsample_pad(x, self.stride, out_channels)
    else:
      identity = x
    return nn.relu(y + identity)


class BasicBlock(_Block, BasicLayout):
  """3x3 -> 3x3 (paper Fig. 5 left), expansion 1: :class:`~.architecture.BasicLayout`."""


class BottleneckBlock(_Block, BottleneckLayout):
  """1x1 reduce -> 3x3 -> 1x1 expand x4 (paper §4.1, Fig. 5 right), expansion 4, grouped 3x3 for
  ResNeXt: :class:`~.architecture.BottleneckLayout`."""


# One Flax block per layout of architecture.BLOCK_LAYOUTS, under the same name.
BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}
