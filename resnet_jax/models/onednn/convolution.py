"""``conv_nhwc``: a 2-D convolution (NHWC, HWIO, fp32) run by oneDNN inside the compiled step.

Forward, input gradient and weight gradient are three XLA FFI custom calls (``conv.cc``) tied
together by ``jax.custom_vjp``; XLA still fuses everything around them (BatchNorm, ReLU, the
residual addition).  Same arithmetic as ``lax.conv_general_dilated(x, w, strides, padding,
dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)``.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import kernel


def _out_size(n: int, k: int, stride: int, lo: int, hi: int) -> int:
  return (n + lo + hi - k) // stride + 1


def _attrs(strides, padding, groups, threads) -> dict:
  (lo_h, hi_h), (lo_w, hi_w) = padding
  return {
    "stride_h": np.int64(strides[0]),
    "stride_w": np.int64(strides[1]),
    "pad_lo_h": np.int64(lo_h),
    "pad_hi_h": np.int64(hi_h),
    "pad_lo_w": np.int64(lo_w),
    "pad_hi_w": np.int64(hi_w),
    "groups": np.int64(groups),
    "threads": np.int64(threads),
  }


def _call(target: str, shape, *args, **attrs):
  out = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_nhwc(x, w, strides: Sequence[int], padding, groups: int = 1, threads: int = 1):
  """oneDNN convolution; ``padding`` is ((lo_h, hi_h), (lo_w, hi_w)).

  ``threads``: the call's OpenMP team (0: OpenMP's own count). Above 1 only for measurements
  (benchmarks/bench_conv.py): inside a training step such teams deadlocked (:func:`conv`).

  Raises RuntimeError when the kernel cannot be loaded (:func:`conv` falls back instead).
  """
  return _fwd(x, w, strides, padding, groups, threads)[0]


def _fwd(x, w, strides, padding, groups, threads):
  if kernel.load() is None:
    raise RuntimeError(f"oneDNN kernel unavailable: {kernel.unavailable_reason()}")
  strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
  oh = _out_size(x.shape[1], w.shape[0], strides[0], *padding[0])
  ow = _out_size(x.shape[2], w.shape[1], strides[1], *padding[1])
  y = _call(
    "onednn_conv_fwd",
    (x.shape[0], oh, ow, w.shape[3]),
    x,
    w,
    **_attrs(strides, padding, groups, threads),
  )
  return y, (x, w)


def _bwd(strides, padding, groups, threads, residuals, dy):
  x, w = residuals
  attrs = _attrs(tuple(strides), tuple(tuple(p) for p in padding), groups, threads)
  dx = _call("onednn_conv_bwd_data", x.shape, dy, w, **attrs)
  dw = _call("onednn_conv_bwd_weights", w.shape, x, dy, **attrs)
  return dx, dw


conv_nhwc.defvjp(_fwd, _bwd)


# --- the model-facing entry: oneDNN where it can run, lax.conv otherwise -----------------------

_logged: set = set()


def _log_once(reason: str) -> None:
  if reason not in _logged:
    _logged.add(reason)
    logging.getLogger(__name__).warning("conv_impl='onednn' falls back to lax.conv: %s", reason)


def unsupported_reason(x, w, groups: int = 1) -> str | None:
  """Why :func:`conv` would not run oneDNN for these operands, or None if it would.

  The platform is not asked here: the model calls :func:`conv` only in the code it lowers for the
  CPU (``models.cpu_conv``).
  """
  if x.dtype != jnp.float32 or w.dtype != jnp.float32:
    return f"oneDNN kernel is fp32 only, got {x.dtype}/{w.dtype}"
  if x.ndim != 4 or w.ndim != 4 or groups < 1 or x.shape[-1] != w.shape[2] * groups:
    return f"unsupported shapes x{tuple(x.shape)} w{tuple(w.shape)} groups={groups}"
  if kernel.load() is None:
    return kernel.unavailable_reason()
  return None


def conv(x, w, strides: Sequence[int], padding, groups: int = 1):
  """``lax.conv_general_dilated`` (NHWC, HWIO, explicit padding) run by oneDNN when it can.

  Falls back to ``lax.conv_general_dilated`` -- with one warning per reason per process -- when
  the operands are not fp32 or the kernel cannot be built or loaded (no oneDNN:
  ``pip install 'resnet-jax[cpu]'``; no C++ compiler). Lowered only for the CPU: the custom calls
  have no lowering elsewhere (the model picks them per platform, ``models.cpu_conv``).
  """
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  reason = unsupported_reason(x, w, groups)
  if reason is not None:
    _log_once(reason)
    return lax.conv_general_dilated(
      x,
      w,
      tuple(strides),
      padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )
  # One thread a call, always. OpenMP teams started from XLA's own threads deadlocked: a training
  # step's convolution spun forever in oneDNN's code in 6 of 12 test runs, never with one thread
  # (docs/DEVELOPING.md, "The stall"). A CPU run uses its cores through the split instead: one
  # XLA device per core, each calling oneDNN single-threaded, side by side.
  return conv_nhwc(x, w, tuple(strides), padding, groups, threads=1)
