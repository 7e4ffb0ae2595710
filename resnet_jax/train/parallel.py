"""Data parallelism over every device of every process: ``jax.pmap`` or ``jax.jit`` over a ``Mesh``.

Two small wrappers around the same pure steps (``train.steps``). A step is written for one
replica's share of the batch, with ``lax.pmean``/``lax.psum`` over ``steps.AXIS`` and cross-replica
BatchNorm; a wrapper runs it on every device and puts batches and state where it expects them.

``Pmap`` (``config.parallelism="pmap"``, the default)
  ``jax.pmap(axis_name="batch")``. Each process holds its devices' copies of the state with a
  leading device axis and feeds ``[local_devices, per_device, ...]`` batches. Checkpoints are
  written from one copy on the host.

``Jit`` (``config.parallelism="jit"``)
  ``jax.jit`` of ``jax.shard_map`` over ``Mesh(jax.devices(), ("batch",))``, every device of every
  process. The state is made of global ``jax.Array``s replicated by ``NamedSharding(mesh, P())``.
  Each process's share of the batch becomes one global ``[global_batch, ...]`` array sharded over
  "batch" (``jax.make_array_from_process_local_data``). Orbax saves and restores these arrays
  directly, with no gather to one host. This is the layout of big_vision, MaxText and Orbax's
  multi-host checkpointing.

Both compile the same per-device program: jax 0.10 implements ``pmap`` itself as a ``shard_map``
with ``check_vma=False`` inside ``jit``, and the jit path makes that call explicitly. The flag
matters. With ``check_vma=True`` JAX transposes the implicit broadcast of the replicated params
into a ``psum``, so gradients would arrive already summed over devices and the step's ``lax.pmean``
would no longer be the average gradient (it would come out multiplied by the number of devices).

The wrappers differ only in layout, so ``train.loop`` and ``bench`` use them through one interface:
``compile`` (a per-replica function; arguments are ``REPLICATED`` or ``SHARDED``), ``train_step``,
``put_batch``/``prefetch``, ``replicate``, ``fetch``, ``checkpoint_state`` and ``restore_sharding``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.train import steps

PARALLELISMS = ("pmap", "jit")

REPLICATED = "replicated"  # the same value on every device (state, step metrics, eval sums)
SHARDED = "sharded"  # split over the devices along the batch (images, labels, per-example outputs)


class DataParallel:
  """What both layouts share: the step's rng, prefetching."""

  name: str

  def compile(
    self,
    fn: Callable,
    in_kinds: Sequence[str],
    out_kinds: Any = REPLICATED,
    donate_argnums: tuple[int, ...] = (),
  ) -> Callable:
    """``fn`` (written for one replica) run on every device; ``out_kinds`` a kind or tuple of kinds.

    The result has ``.lower(...)`` (for compile timing and XLA's cost/memory analyses).
    """
    raise NotImplementedError

  def put_batch(self, batch):
    """A host batch ``[local_devices, per_device, ...]`` (``data.train_batches``) on the devices."""
    raise NotImplementedError

  def replicate(self, tree):
    """A state (host or single-device arrays) on every device; already replicated passes through."""
    raise NotImplementedError

  def fetch(self, tree):
    """A replicated value as host numpy (this process's copy)."""
    raise NotImplementedError

  def checkpoint_state(self, state):
    """What ``checkpoint.Checkpointer.save`` writes for a replicated ``state``."""
    raise NotImplementedError

  @property
  def restore_sharding(self) -> NamedSharding | None:
    """The sharding Orbax restores a state into (None: host numpy, then ``replicate``)."""
    raise NotImplementedError

  def train_step(self, fn: Callable, seed: int, **kwargs) -> Callable:
    """``fn(state, batch, rng, **kwargs)`` as a compiled ``step(state, batch)``; state donated.

    The replica's rng is ``split(fold_in(key(seed), state.step), replicas)[replica index]``: a
    function of the seed, the step and the device's place in the mesh only, so a resumed run
    draws the same keys, on either path.
    """

    def replica_step(state, batch):
      key = jax.random.fold_in(jax.random.key(seed), state.step)
      rng = jax.random.split(key, lax.axis_size(steps.AXIS))[lax.axis_index(steps.AXIS)]
      return fn(state, batch, rng, **kwargs)

    return self.compile(replica_step, (REPLICATED, SHARDED), (REPLICATED, REPLICATED), (0,))

  def prefetch(self, batches: Iterable, size: int = 2) -> Iterator:
    """Keeps ``size`` batches in flight to the devices ahead of the step (overlaps the copies)."""
    queue: collections.deque = collections.deque()
    iterator = iter(batches)

    def enqueue(n):
      for batch in iterator:
        queue.append(self.put_batch(batch))
        if len(queue) >= n:
          return

    enqueue(size)
    while queue:
      yield queue.popleft()
      enqueue(1)


class Pmap(DataParallel):
  """``jax.pmap`` over this process's devices (and, joined by the runtime, every other's)."""

  name = "pmap"

  def __init__(self):
    self.devices = jax.local_devices()
    # pmap's inputs are this process's devices' shards along the leading axis (flax's layout).
    self._local_sharded = NamedSharding(
      Mesh(np.asarray(self.devices), (steps.AXIS,)), P(steps.AXIS)
    )

  def compile(self, fn, in_kinds, out_kinds=REPLICATED, donate_argnums=()):
    # Replicated and sharded values alike carry a leading device axis under pmap.
    del in_kinds, out_kinds
    return jax.pmap(fn, axis_name=steps.AXIS, donate_argnums=donate_argnums)

  def put_batch(self, batch):
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, self._local_sharded), batch)

  def replicate(self, tree):
    # The same sharding as the step's outputs (mesh axis ``steps.AXIS``). flax's
    # ``jax_utils.replicate`` names its mesh axis differently, and that alone made pmap compile the
    # train step a second time at step 2.
    copies = len(self.devices)

    def put(x):
      host = np.asarray(jax.device_get(x))
      return jax.device_put(np.broadcast_to(host, (copies, *host.shape)), self._local_sharded)

    return jax.tree_util.tree_map(put, tree)

  def fetch(self, tree):
    def first(x):
      shard = np.asarray(x.addressable_data(0))
      return shard[0] if shard.ndim == x.ndim else shard  # some jax versions keep the device axis

    return jax.tree_util.tree_map(first, tree)

  def checkpoint_state(self, state):
    # One copy on the host, written by the primary process (see checkpoint.py).
    return self.fetch(state)

  @property
  def restore_sharding(self):
    return None


class Jit(DataParallel):
  """``jax.jit`` + ``jax.shard_map`` over a 1-D mesh of every device of every process."""

  name = "jit"

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    # jax.devices() lists each process's devices together, in process order: process p's share of
    # the batch lands on the mesh's p-th block, as pmap's replica order puts it.
    self.mesh = Mesh(np.asarray(devices or jax.devices()), (steps.AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(steps.AXIS))

  def _spec(self, kind: str) -> P:
    if kind not in (REPLICATED, SHARDED):
      raise ValueError(f"unknown kind {kind!r}; use {REPLICATED!r} or {SHARDED!r}")
    return P() if kind == REPLICATED else P(steps.AXIS)

  def compile(self, fn, in_kinds, out_kinds=REPLICATED, donate_argnums=()):
    out_specs = (
      tuple(map(self._spec, out_kinds)) if isinstance(out_kinds, tuple) else self._spec(out_kinds)
    )
    mapped = jax.shard_map(
      fn,
      mesh=self.mesh,
      in_specs=tuple(map(self._spec, in_kinds)),
      out_specs=out_specs,
      check_vma=False,  # pmap's meaning of pmean/psum; see the module docstring
    )
    out_shardings = jax.tree_util.tree_map(
      lambda spec: NamedSharding(self.mesh, spec), out_specs, is_leaf=lambda x: isinstance(x, P)
    )
    return jax.jit(mapped, out_shardings=out_shardings, donate_argnums=donate_argnums)

  def put_batch(self, batch):
    def global_array(x):
      local = np.asarray(x)
      return jax.make_array_from_process_local_data(
        self.sharded, local.reshape((-1,) + local.shape[2:])
      )

    return jax.tree_util.tree_map(global_array, batch)

  def replicate(self, tree):
    def put(x):
      if isinstance(x, jax.Array) and x.sharding == self.replicated:
        return x
      host = np.asarray(jax.device_get(x))
      return jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)

  def fetch(self, tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def checkpoint_state(self, state):
    # The global arrays themselves: Orbax writes each once, from the devices that hold it.
    return state

  @property
  def restore_sharding(self):
    return self.replicated


def create(parallelism: str) -> DataParallel:
  """The wrapper for ``config.parallelism``."""
  if parallelism == "pmap":
    return Pmap()
  if parallelism == "jit":
    return Jit()
  raise ValueError(f"unknown parallelism {parallelism!r}; choose one of {', '.join(PARALLELISMS)}")
