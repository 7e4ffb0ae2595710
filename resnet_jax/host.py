"""The host machine: its usable cores, whether JAX will find an accelerator on it, how its CPU is
split into XLA devices, and which allocator settings suit it.

Facts and decisions only: reading this module changes nothing. ``resnet_jax.runtime`` applies what
is decided here (the device split, the allocator setting) once, at process start.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from collections.abc import Sequence

# XLA flags through which a user decides the CPU devices themselves.
CPU_SPLIT_FLAGS = ("xla_force_host_platform_device_count", "xla_cpu_multi_thread_eigen")

# What a split CPU adds to XLA_FLAGS: each device computes on one core.
SINGLE_THREADED_FLAG = "--xla_cpu_multi_thread_eigen=false"

# glibc's malloc settings a user may have made through the environment; theirs win.
MALLOC_ENV = (
  "MALLOC_ARENA_MAX",
  "MALLOC_MMAP_MAX_",
  "MALLOC_TRIM_THRESHOLD_",
  "MALLOC_MMAP_THRESHOLD_",
)
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# One arena, no mmap, no trimming: a freed block stays in the heap for the next step to reuse.
REUSE_FREED_MEMORY = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

_ACCELERATOR_PLUGINS = (
  "jax_cuda12_plugin",
  "jax_cuda13_plugin",
  "jax_rocm60_plugin",
  "jax_rocm7_plugin",
  "libtpu",
)


def usable_cores() -> int:
  """Cores this process may run on (its CPU affinity), not all the machine has."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - not Linux
    return os.cpu_count() or 1


def cpu_device_count(
  requested: str | int, batch_sizes: Sequence[int] = (), cores: int | None = None
) -> int:
  """How many CPU devices a single-process run should use.

  ``requested`` is ``"auto"`` (one per usable core) or a number. The result is lowered to the
  largest count that divides every batch size, so a batch is never left indivisible by the split.
  """
  if str(requested) == "auto":
    n = cores if cores is not None else usable_cores()
  else:
    try:
      n = int(requested)
    except ValueError:
      n = 0
    if n < 1:
      raise ValueError(f"--cpu_devices must be 'auto' or a positive integer, got {requested!r}")
  while n > 1 and any(b % n for b in batch_sizes):
    n -= 1
  return max(n, 1)


def cpu_split(
  requested: str | int = "auto", batch_sizes: Sequence[int] = (), *, launcher_decides: bool = False
) -> int:
  """Into how many single-threaded XLA devices to split the CPU; 1 means leave it as it is.

  XLA:CPU spreads one convolution over the cores badly for the small tensors of a ResNet step, so
  a step split into per-core replicas of a part of the batch is faster (docs/benchmarks.md); with
  cross-replica BatchNorm (the default) the maths of the step is unchanged. Left alone: an explicit
  ``XLA_FLAGS`` device count or threading flag, ``JAX_NUM_CPU_DEVICES``, runs whose launcher decides
  the devices per process (``launcher_decides``: multi-process runs), and GPU or TPU hosts.
  """
  n = cpu_device_count(requested, batch_sizes)
  flags = os.environ.get("XLA_FLAGS", "")
  user_decided = any(f in flags for f in CPU_SPLIT_FLAGS) or os.environ.get("JAX_NUM_CPU_DEVICES")
  if n <= 1 or user_decided or launcher_decides or accelerator_expected():
    return 1
  return n


def malloc_settings() -> tuple[tuple[int, int], ...]:
  """The ``mallopt`` settings that make glibc keep freed memory for reuse here; () for none.

  XLA:CPU allocates each execution's temporaries as one large block. glibc serves a block that
  large with a fresh ``mmap`` and unmaps it on free, so every step page-faults its whole working
  set in again; kept in the heap, the next step reuses it (docs/benchmarks.md). The process keeps
  its peak heap until it exits, which a training run reaches anyway. None on GPU and TPU hosts
  (their many input threads would contend for one arena), with an allocator other than glibc's,
  or where the user made their own ``MALLOC_*`` or ``GLIBC_TUNABLES`` settings.
  """
  if accelerator_expected() or any(os.environ.get(v) for v in MALLOC_ENV):
    return ()
  if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
    return ()
  if platform.libc_ver()[0] != "glibc":
    return ()
  return REUSE_FREED_MEMORY


def accelerator_expected() -> bool:
  """True when JAX will pick a GPU/TPU backend (read from the environment and installed plugins)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return not platforms.startswith("cpu")
  return any(importlib.util.find_spec(m) is not None for m in _ACCELERATOR_PLUGINS)
