"""Convolutions lowered per platform: the CPU's fast forms on the CPU, plain convolutions elsewhere.

What makes a ResNet step fast on XLA:CPU is wrong or impossible on a GPU or TPU: a 1x1 conv written
as a matmul over channels, gradient convolutions written in forward form (for scanned blocks), and
oneDNN's convolutions as FFI custom calls, which only the CPU can run. :func:`conv` computes
``lax.conv_general_dilated`` (NHWC, HWIO, explicit padding) with one of those CPU forms
(``cpu_form``), and picks at lowering, with ``lax.platform_dependent``: the CPU form when the
program is lowered for the CPU, the plain convolution and its ordinary gradients for every other
platform. A model therefore lowers to plain convolutions for ``cuda`` and ``tpu`` whatever its
``conv_impl`` says, and one jitted function can be lowered for either.

The forward pass and the backward pass each pick (a ``jax.custom_vjp``), so autodiff never
differentiates through the platform switch: both keep ``(x, kernel)`` as their only residuals,
and each lowered program holds one form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from . import onednn

CPU_FORMS = ("matmul", "forward_form", "onednn")

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_nhwc(x, kernel, stride: int, padding, groups: int = 1):
  return lax.conv_general_dilated(
    x, kernel, (stride, stride), padding, dimension_numbers=_NHWC, feature_group_count=groups
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_forward_form_grads(x, kernel, stride: int, padding):
  """``lax.conv_general_dilated`` (NHWC, HWIO) whose two gradients are forward-form convolutions.

  Same value and same gradients as the plain convolution.  Why: inside a ``while`` loop (what
  ``nn.scan`` compiles to) XLA:CPU keeps the gradient convolutions in the transposed dimension
  orders autodiff gives them, and runs those on a slow generic path -- a scanned ResNet step was
  many times slower than the unrolled one.  Written here as ordinary NHWC/HWIO convolutions (the
  weight gradient with channels as the batch and the batch as the features, the input gradient
  with the flipped kernel), the scanned step runs as fast as the unrolled one.
  """
  return _conv_nhwc(x, kernel, stride, padding)


def _forward_form_fwd(x, kernel, stride, padding):
  return _conv_nhwc(x, kernel, stride, padding), (x, kernel)


def _forward_form_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  k = kernel.shape[0]
  out_hw = dy.shape[1:3]
  # Input gradient: a stride-1 convolution of the (stride-dilated) output gradient with the
  # spatially flipped kernel, in/out channels swapped; the barrier keeps XLA from folding the
  # transpose back into the convolution's dimension numbers.
  flipped = lax.optimization_barrier(jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2)))
  dx_pad = tuple(
    (k - 1 - lo, k - 1 - hi + (n + lo + hi - k) % stride)
    for n, (lo, hi) in zip(x.shape[1:3], padding)
  )
  dx = lax.conv_general_dilated(
    dy, flipped, (1, 1), dx_pad, lhs_dilation=(stride, stride), dimension_numbers=_NHWC
  )
  # Weight gradient: channels of x as the batch, the batch as features, dy as a (dilated) kernel;
  # the high padding is chosen so the output is exactly k x k (it may be negative: a crop).
  dw_pad = tuple(
    (lo, k + stride * (o - 1) - n - lo) for n, o, (lo, _) in zip(x.shape[1:3], out_hw, padding)
  )
  dw = lax.conv_general_dilated(
    jnp.transpose(x, (3, 1, 2, 0)),
    jnp.transpose(dy, (1, 2, 0, 3)),
    (1, 1),
    dw_pad,
    rhs_dilation=(stride, stride),
    dimension_numbers=_NHWC,
  )
  return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(kernel.dtype)


conv_forward_form_grads.defvjp(_forward_form_fwd, _forward_form_bwd)


def _matmul(x, kernel, stride, padding, groups):
  """A 1x1 conv with padding 0 as a matmul over channels (every ``stride``-th row and column)."""
  del padding, groups  # 0 and 1: checked by :func:`conv`
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  return lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


def _forward_form(x, kernel, stride, padding, groups):
  del groups  # 1: checked by :func:`conv`
  return conv_forward_form_grads(x, kernel, stride, padding)


def _onednn(x, kernel, stride, padding, groups):
  return onednn.conv(x, kernel, (stride, stride), padding, groups)


_CPU = {"matmul": _matmul, "forward_form": _forward_form, "onednn": _onednn}


def _check(kernel_shape, padding, groups: int, cpu_form: str) -> None:
  if cpu_form not in CPU_FORMS:
    raise ValueError(f"cpu_form must be one of {CPU_FORMS}, got {cpu_form!r}")
  if cpu_form == "matmul" and (kernel_shape[:2] != (1, 1) or any(any(p) for p in padding)):
    raise ValueError("cpu_form='matmul' computes 1x1 convolutions without padding only")
  if cpu_form != "onednn" and groups != 1:
    raise ValueError(f"cpu_form={cpu_form!r} computes ungrouped convolutions only")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x, kernel, stride: int, padding, groups: int, cpu_form: str):
  """``lax.conv_general_dilated(x, kernel, (stride, stride), padding, NHWC/HWIO, groups)``.

  Lowered for the CPU as ``cpu_form`` (one of :data:`CPU_FORMS`), for any other platform as the
  plain convolution; the gradients the same way.

  Args:
    x: [N, H, W, C] input.
    kernel: [kh, kw, C / groups, features].
    stride: the same along both spatial axes.
    padding: ``((lo_h, hi_h), (lo_w, hi_w))``, ints.
    groups: ``feature_group_count``.
    cpu_form: ``'matmul'`` (1x1, padding 0, groups 1), ``'forward_form'`` (groups 1;
      :func:`conv_forward_form_grads`) or ``'onednn'`` (:func:`onednn.conv`, which itself falls
      back to ``lax.conv`` where oneDNN cannot run).
  """
  return _conv_fwd(x, kernel, stride, padding, groups, cpu_form)[0]


def _conv_fwd(x, kernel, stride, padding, groups, cpu_form):
  _check(kernel.shape, padding, groups, cpu_form)
  static = dict(stride=stride, padding=padding, groups=groups)
  y = lax.platform_dependent(
    x,
    kernel,
    cpu=functools.partial(_CPU[cpu_form], **static),
    default=functools.partial(_conv_nhwc, **static),
  )
  return y, (x, kernel)


def _vjp(fn, x, kernel, dy, **static):
  # Only the backward pass of ``fn`` stays in the program: XLA removes the unused forward.
  return jax.vjp(functools.partial(fn, **static), x, kernel)[1](dy)


def _conv_bwd(stride, padding, groups, cpu_form, residuals, dy):
  x, kernel = residuals
  static = dict(stride=stride, padding=padding, groups=groups)
  return lax.platform_dependent(
    x,
    kernel,
    dy,
    cpu=functools.partial(_vjp, _CPU[cpu_form], **static),
    default=functools.partial(_vjp, _conv_nhwc, **static),
  )


conv.defvjp(_conv_fwd, _conv_bwd)
