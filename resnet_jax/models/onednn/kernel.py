"""Build and load the oneDNN convolution kernel (``conv.cc``) and register it with XLA's FFI.

The kernel is compiled on first use into a cache directory, not at install time: the package
installs as pure Python (an editable or wheel install has no build step to hook a compiler into),
the optional extra only brings oneDNN's library and headers, and a source-hash-keyed cache rebuilds
by itself whenever ``conv.cc``, jaxlib or the compiler changes.  The build takes a few seconds, once
per machine.

Where things are looked up:

* oneDNN: ``libdnnl.so.3`` and ``oneapi/dnnl/dnnl.hpp`` under the environment's prefix
  (``pip install 'resnet-jax[cpu]'`` installs ``onednn-cpu-gomp`` there), or ``RESNET_JAX_ONEDNN``
  = a prefix with ``lib/`` and ``include/``;
* the compiler: ``$CXX`` or ``g++``;
* the cache: ``RESNET_JAX_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/resnet_jax`` or ``~/.cache/resnet_jax``.

:func:`load` returns the loaded library, or ``None`` with the reason in :func:`unavailable_reason`;
it never raises, so a caller falls back to ``lax.conv``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import subprocess
import tempfile
import threading

import jax

from .. import conv_impl

SOURCE = pathlib.Path(__file__).with_name("conv.cc")
TARGETS = {
  "onednn_conv_fwd": "OnednnConvFwd",
  "onednn_conv_bwd_data": "OnednnConvBwdData",
  "onednn_conv_bwd_weights": "OnednnConvBwdWeights",
}

_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> pathlib.Path:
  if os.environ.get("RESNET_JAX_KERNEL_CACHE"):
    return pathlib.Path(os.environ["RESNET_JAX_KERNEL_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base, "resnet_jax")


def _compile_command(prefix: pathlib.Path, out: pathlib.Path, cxx: str) -> list[str]:
  lib = prefix / "lib"
  return [
    cxx,
    "-O2",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fopenmp",
    f"-I{prefix / 'include'}",
    f"-I{jax.ffi.include_dir()}",
    str(SOURCE),
    "-o",
    str(out),
    f"-L{lib}",
    f"-l:{conv_impl.LIB_NAME}",
    f"-Wl,-rpath,{lib}",
    "-Wl,--no-undefined",
  ]


def _build(prefix: pathlib.Path, cxx: str) -> pathlib.Path:
  key = hashlib.sha256()
  key.update(SOURCE.read_bytes())
  key.update(" ".join(_compile_command(prefix, pathlib.Path("x"), cxx)).encode())
  key.update(jax.lib.__version__.encode() if hasattr(jax.lib, "__version__") else b"")
  key.update(jax.__version__.encode())
  target = cache_dir() / f"onednn_conv-{key.hexdigest()[:16]}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target and rename: another process may be building the same file.
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    tmp_out = pathlib.Path(tmp, target.name)
    proc = subprocess.run(
      _compile_command(prefix, tmp_out, cxx), capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
      last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      raise RuntimeError(f"compiling {SOURCE.name} failed: {last}")
    os.replace(tmp_out, target)
  return target


def onednn_prefix() -> pathlib.Path | None:
  """The prefix holding oneDNN's ``lib/libdnnl.so.3`` and headers, or None."""
  return conv_impl.onednn_prefix()


def _load() -> ctypes.CDLL:
  missing = conv_impl.onednn_missing()
  prefix = onednn_prefix()
  if missing is not None or prefix is None:
    raise RuntimeError(missing or "oneDNN not found: pip install 'resnet-jax[cpu]'")
  cxx = conv_impl.compiler()
  lib = ctypes.CDLL(str(_build(prefix, cxx)))
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return lib


def load() -> ctypes.CDLL | None:
  """The kernel library, built and registered once per process; None if a piece is missing."""
  with _lock:
    if "lib" not in _state:
      try:
        _state["lib"] = _load()
      except Exception as e:  # pylint: disable=broad-except  -- any failure means: fall back.
        _state["lib"] = None
        _state["reason"] = str(e)
    return _state["lib"]


def unavailable_reason() -> str | None:
  """Why :func:`load` returned None (after it was called), else None."""
  return _state.get("reason")


def onednn_version() -> str | None:
  lib = load()
  if lib is None:
    return None
  v = lib.OnednnVersion()
  return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
