"""Which convolutions a model runs on the CPU (its ``conv_impl``), decided without importing JAX.

* ``'xla'``: ``lax.conv``, with XLA:CPU's own fast forms (1x1 convs as matmuls, forward-form
  gradient convolutions in scanned blocks; :mod:`.cpu_conv`).
* ``'onednn'``: oneDNN inside the compiled step (:mod:`.onednn`; the optional extra
  ``resnet-jax[cpu]`` and a C++ compiler to build its kernel on first use).
* ``'auto'`` (the default): ``'onednn'`` where the extra and the compiler are both here, else
  ``'xla'``; fp32 only (oneDNN's kernel is fp32).

Only the CPU lowering depends on the choice: a model lowered for GPU or TPU runs plain convolutions
whatever it says (:mod:`.cpu_conv`), so ``'auto'`` needs to know nothing about the platform. The
probe only looks for files, so the launcher can ask it before JAX starts (the CPU device split
depends on it).
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import sys

CONV_IMPLS = ("auto", "xla", "onednn")

LIB_NAME = "libdnnl.so.3"
HEADER = pathlib.Path("oneapi", "dnnl", "dnnl.hpp")


def onednn_prefix() -> pathlib.Path | None:
  """The prefix holding oneDNN's ``lib/libdnnl.so.3`` and headers, or None."""
  candidates = [os.environ.get("RESNET_JAX_ONEDNN"), sys.prefix, sys.base_prefix]
  for c in candidates:
    if c and (pathlib.Path(c, "lib", LIB_NAME).exists()):
      return pathlib.Path(c)
  return None


def compiler() -> str:
  """The C++ compiler that builds the oneDNN kernel: ``$CXX`` or ``g++``."""
  return os.environ.get("CXX") or "g++"


def onednn_missing() -> str | None:
  """What is missing to build oneDNN's kernel here (the fix included), or None if nothing is."""
  prefix = onednn_prefix()
  if prefix is None:
    return f"oneDNN not found ({LIB_NAME} under {sys.prefix}/lib): pip install 'resnet-jax[cpu]'"
  if not (prefix / "include" / HEADER).exists():
    return f"oneDNN headers missing under {prefix}/include: pip install 'resnet-jax[cpu]'"
  if shutil.which(compiler()) is None:
    return f"no C++ compiler ({compiler()}) to build the oneDNN kernel"
  return None


@functools.cache
def _onednn_installed() -> bool:
  # Cached: a process asks once per convolution it builds; installing the extra needs a restart.
  return onednn_missing() is None


def resolve(conv_impl: str, *, fp32: bool = True) -> str:
  """``'xla'`` or ``'onednn'``: what ``conv_impl`` (``''`` counts as ``'auto'``) means here.

  An explicit ``'onednn'`` stays ``'onednn'`` even where it cannot run, which then falls back to
  ``lax.conv`` with a warning; ``'auto'`` picks it only for fp32 compute with the extra and a
  compiler installed.

  Raises:
    ValueError: for a name not in :data:`CONV_IMPLS`.
  """
  conv_impl = conv_impl or "auto"
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
  if conv_impl == "auto":
    return "onednn" if fp32 and _onednn_installed() else "xla"
  return conv_impl
