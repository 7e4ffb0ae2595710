"""Checkpoints through Orbax's ``CheckpointManager``: async saves, resume, last-K + best, clear errors.

A checkpoint step holds two items:
  ``state``  the train state, one copy of each array: host numpy arrays are written by the primary
             process (``parallelism="pmap"``), global ``jax.Array``s by Orbax from the devices
             that hold them, each replica once and nothing gathered (``parallelism="jit"``). The
             files are the same either way: any process and device count restores either, as
             numpy or straight into a given sharding;
  ``meta``   JSON: the model name, the config fingerprint and the host-side controller state needed to
             resume exactly (learning-rate events), plus anything the caller adds.

Every process must call ``save``/``restore``/``wait`` (Orbax synchronises them). What a failed read
or write would print besides its one line (Orbax's logged tracebacks, TensorStore's late callbacks)
is kept quiet by ``resnet_jax.runtime.setup``, not here: importing or using this module changes
nothing of the process's. Nothing here deletes
or rewrites an existing step except Orbax's own retention of old steps after a successful save.

A save that cannot be written (full disk, read-only or unwritable workdir) -- also when it fails in
Orbax's background threads and surfaces only at the next ``save`` or ``wait`` -- raises
`CheckpointWriteError`: one line naming the directory, the cause and the last committed step, which
is untouched.

A restore reads once: ``saved_fields`` tells the caller, from the checkpoint's metadata, which
fields the state was saved with, so it can build the one template that fits (``train.state``).
This module also holds the one flattening of a tree into paths (`flatten`) and the one check that
a tree fits another (`mismatch`), for runs, weights and initialisation too.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from resnet_jax import storage


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: corrupt, or written by a different model/architecture."""


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (no space left, unwritable directory); earlier ones stand."""


# How the file system's refusal reads in the errors Orbax and TensorStore raise.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")
_WRITE_FAILURE = re.compile(
  r"error writing|failed writing|failed to write|no space left|file too large|read-only file "
  r"system|permission denied|disk quota|os_error_code",
  re.IGNORECASE,
)
_TMP_STEP = re.compile(r"/(\d+)\.orbax-checkpoint-tmp")
_MAX_LISTED = 12  # entries a mismatch names of each kind


def _write_failure_cause(error: BaseException) -> str | None:
  """'no space left on device' (the OS's words) for a failed write, None for any other error."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in errno.errorcode:
      return os.strerror(seen.errno).lower()
    text = str(seen)
    match = _OS_ERROR_CODE.search(text)
    if match:
      return os.strerror(int(match.group(1) or match.group(2))).lower()
    if _WRITE_FAILURE.search(text):
      first = " ".join(text.split())
      return first if len(first) <= 200 else first[:200] + "..."
    seen = seen.__cause__ or seen.__context__
  return None


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, except that its save-finalize thread cannot move the preemption step counter.

  JAX's preemption sync point keeps the last step each process reported and, once a SIGTERM
  arrives, stops everyone at the largest reported step + 1. Orbax's background finalize thread
  asks about the step it just committed -- older than the step the loop is at -- which would
  report an old step, and a stop step this process has already passed (it would run on while the
  others stop and save). Only the main thread, at the current step, may report.
  """

  def reached_preemption(self, step: int) -> bool:
    if threading.current_thread() is not threading.main_thread():
      return False
    return super().reached_preemption(step)


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flatten(tree) -> dict[tuple[str, ...], Any]:
  """``{("params", "stage1_block0", "conv1", "kernel"): leaf}``: dict keys, dataclass fields and
  sequence indices alike, as strings. Empty fields (``None``) hold no leaves."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {tuple(_key_name(k) for k in path): leaf for path, leaf in flat}


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  """Nested dicts from :func:`flatten`'s paths."""
  out: dict = {}
  for path, leaf in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = leaf
  return out


def shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """:func:`flatten` with each leaf's shape: arrays, abstract arrays and Orbax's metadata alike."""
  return {path: _shape(leaf) for path, leaf in flatten(tree).items()}


def _shape(leaf) -> tuple[int, ...]:
  return tuple(int(d) for d in getattr(leaf, "shape", np.shape(leaf)))


def _natural(text: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def listing(label: str, items: list[str]) -> str:
  """``"3 missing: a, b, c"``: the count and the first entries in natural order, then how many more."""
  items = sorted(items, key=_natural)
  shown = ", ".join(items[:_MAX_LISTED])
  more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
  return f"{len(items)} {label}: {shown}{more}"


def mismatch(
  have: Mapping[Any, tuple[int, ...]],
  want: Mapping[Any, tuple[int, ...]],
  *,
  transposed_hint: bool = False,
) -> str | None:
  """Why ``have`` does not fit ``want`` (each ``{path: shape}``, a path a :func:`flatten` tuple or
  a name), or None when it fits: every missing, unexpected and wrongly shaped entry, listed in one
  line ("2 missing: a/b, a/c; 1 of the wrong shape: d (3, 4) != expected (4, 3)").

  The one check of "does this tree fit" for checkpoints, runs, initialisation and imported weights.
  ``transposed_hint`` marks a shape that is ``want``'s permuted (a source that keeps its axes in
  another order).
  """
  name = lambda path: "/".join(path) if isinstance(path, tuple) else str(path)  # noqa: E731
  missing = [name(p) for p in want if p not in have]
  unexpected = [name(p) for p in have if p not in want]
  reshaped = []
  for path in (p for p in want if p in have and tuple(have[p]) != tuple(want[p])):
    got, expected = tuple(have[path]), tuple(want[path])
    hint = " (transposed?)" if transposed_hint and sorted(got) == sorted(expected) else ""
    reshaped.append(f"{name(path)} {got} != expected {expected}{hint}")
  parts = [
    listing(label, items)
    for label, items in (
      ("missing", missing),
      ("unexpected", unexpected),
      ("of the wrong shape", reshaped),
    )
    if items
  ]
  return "; ".join(parts) or None


class Checkpointer:
  """Keeps the latest ``keep_last`` steps plus the ``keep_best`` best by ``best_metric``."""

  def __init__(
    self,
    directory,
    *,
    keep_last: int = 3,
    keep_best: int = 1,
    best_metric: str = "eval_top1_error",
    best_mode: str = "min",
    async_save: bool = True,
    read_only: bool = False,
  ):
    # A folder or a bucket URL: Orbax writes both (arrays through TensorStore's gs:// driver).
    self.directory = storage.location(directory)
    policies = [ocm.LatestN(n=keep_last)]
    if keep_best:
      policies.append(
        ocm.BestN(
          get_metric_fn=lambda m: m[best_metric],
          reverse=best_mode == "min",
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocm.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save,
      read_only=read_only,
      create=not read_only,
    )
    self._manager = _Manager(
      self.directory,
      options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )
    self._async = async_save
    # The last step known to be fully written (what a rerun resumes from), and the one in flight.
    self.committed_step: int | None = None if read_only else self.latest_step()
    self._pending: int | None = None
    self._failed = False

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any], metrics: dict[str, float] | None = None):
    """Starts an async save of ``state`` at ``step``.

    ``state``: a pytree of host arrays, or of global ``jax.Array``s, which Orbax copies from the
    devices before this returns (a donating step may then overwrite them) and writes as they are.
    """
    state = jax.tree_util.tree_map(
      lambda x: x if isinstance(x, jax.Array) else np.asarray(x), state
    )
    # A write that fails (full disk) leaves TensorStore writes in flight into Orbax's closed loop:
    # their late results are dropped by runtime.drop_abandoned_read_callbacks.
    try:
      # Orbax first waits for the previous save to commit (and raises its error, if any).
      self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics,
        force=True,
      )
    except Exception as e:  # noqa: BLE001 - anything but a failed write is re-raised as it is
      self._raise_write_error(e, step)
    if self._pending is not None:
      self.committed_step = self._pending
    self._pending = step if self._async else None
    if not self._async:
      self.committed_step = step

  def reached_preemption(self, step: int) -> bool:
    """True at the step all processes agreed to stop at after a preemption notice (SIGTERM).

    JAX's preemption sync point, through Orbax (which also consults it inside ``save``, so both
    must be given the training step). Always False in a single-process run. Every process must
    call it at every step, from the same start step.
    """
    return self._manager.reached_preemption(step)

  def wait(self):
    """Blocks until the save in flight (if any) has committed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._raise_write_error(e, self._pending)
    if self._pending is not None:
      self.committed_step, self._pending = self._pending, None

  def close(self):
    """Waits for the save in flight, then releases Orbax's threads (quietly after a failed save,
    whose error was raised already)."""
    try:
      self._manager.close()
    except Exception as e:  # noqa: BLE001
      if not self._failed:
        self._raise_write_error(e, self._pending)

  def _raise_write_error(self, error: Exception, step: int | None):
    """Raises `CheckpointWriteError` for a failed write (naming the failed step: a later call may
    report it after the fact), or ``error`` itself for anything else."""
    cause = _write_failure_cause(error)
    if cause is None:
      raise error
    self._failed = True
    match = _TMP_STEP.search(str(error))
    failed = int(match.group(1)) if match else step
    good = f"step {self.committed_step}" if self.committed_step is not None else "none"
    raise CheckpointWriteError(
      f"could not write checkpoint{' step ' + str(failed) if failed is not None else ''} in "
      f"{self.directory}: {cause}; last good checkpoint: {good} (untouched). Free space or make "
      f"the workdir writable, then rerun the same command to resume"
    ) from None

  def read_meta(self, step: int) -> dict[str, Any]:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        "meta"
      ]
    except Exception as e:  # noqa: BLE001 - any failure to read means an unusable checkpoint
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} is unreadable ({type(e).__name__}); "
        f"it may be corrupt: move it aside or choose another workdir"
      ) from None

  def read_state(self, step: int | None = None):
    """The state at ``step`` (default: latest) as a raw tree of host numpy arrays, no template.

    Works however the state was written (host numpy by pmap runs, global arrays by jit runs on
    any number of devices): Orbax is asked for numpy, not for the writer's device layout.
    """
    step = self._existing_step(step)
    saved = self._saved_tree(step)
    try:
      target = jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), saved)
      return self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )["state"]
    except Exception as e:  # noqa: BLE001
      raise self._unreadable(step, "read", e) from None

  def saved_fields(self, step: int | None = None) -> dict[str, bool]:
    """The top-level fields of the state saved at ``step`` (default: latest), each with whether it
    holds any array (a field saved empty, e.g. ``None``, holds none). Read from the checkpoint's
    metadata, no array: what a caller needs to build the one template that restores it."""
    saved = self._saved_tree(self._existing_step(step))
    if not hasattr(saved, "items"):  # Orbax's tree of a dict or dataclass is not a Mapping
      return {}
    return {str(name): bool(jax.tree_util.tree_leaves(value)) for name, value in saved.items()}

  def _existing_step(self, step: int | None) -> int:
    """``step``, or the latest when None; a missing one is one `CheckpointError` line."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(
        f"no checkpoint at step {step} in {self.directory}; available: {self.all_steps()}"
      )
    return step

  def _saved_tree(self, step: int):
    """The state's metadata at ``step``: its tree with each array's shape and dtype."""
    try:
      saved = self._manager.item_metadata(step)["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} is unreadable ({type(e).__name__}); "
        f"it may be corrupt: move it aside or choose another workdir"
      ) from None
    if saved is None:
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} has no readable state metadata; it may be corrupt"
      )
    return saved

  def _unreadable(self, step: int, verb: str, error: Exception) -> CheckpointError:
    """One line for a checkpoint Orbax failed on: where, which step, and the library's first line."""
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return CheckpointError(
      f"checkpoint {self.directory} step {step} could not be {verb} ({type(error).__name__}: "
      f"{first}); it may be corrupt"
    )

  def restore(
    self,
    template,
    step: int | None = None,
    *,
    expect_meta: dict[str, Any] | None = None,
    sharding: jax.sharding.Sharding | None = None,
  ):
    """Restores ``(state, meta)`` at ``step`` (default: latest) into the structure of ``template``.

    Leaves come back as host numpy arrays, or with ``sharding`` as global ``jax.Array``s that
    Orbax reads straight onto the devices (each process reads what its devices hold).

    ``expect_meta`` entries (e.g. the model name) must equal the checkpoint's; parameter names and
    shapes must match the template (:func:`mismatch`). Either mismatch, or an unreadable file,
    raises ``CheckpointError`` with one line naming it. Nothing on disk is touched.
    """
    step = self._existing_step(step)
    meta = self.read_meta(step)
    for key, want in (expect_meta or {}).items():
      if meta.get(key) != want:
        raise CheckpointError(
          f"checkpoint {self.directory} step {step} was written with {key}={meta.get(key)!r} but "
          f"this run has {key}={want!r}; use a fresh workdir or the matching config"
        )
    problem = mismatch(shapes(self._saved_tree(step)), shapes(template))
    if problem:
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} does not match this model's state: {problem}"
      )

    def target(x):
      if not hasattr(x, "shape"):
        return x
      if sharding is None:
        return np.empty(x.shape, x.dtype)
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    abstract = jax.tree_util.tree_map(target, template)
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      )["state"]
    except Exception as e:  # noqa: BLE001
      raise self._unreadable(step, "restored", e) from None
    return restored, meta
