"""Checkpoints through Orbax's ``CheckpointManager``: async saves, resume, last-K + best, clear errors.

A checkpoint step holds two items:
  ``state``  the train state, one copy of each array: host numpy arrays are written by the primary
             process (``parallelism="pmap"``), global ``jax.Array``s by Orbax from the devices
             that hold them, each replica once and nothing gathered (``parallelism="jit"``). The
             files are the same either way: any process and device count restores either, as
             numpy or straight into a given sharding;
  ``meta``   JSON: the model name, the config fingerprint and the host-side controller state needed to
             resume exactly (learning-rate events), plus anything the caller adds.

Every process must call ``save``/``restore``/``wait`` (Orbax synchronises them). Nothing here deletes
or rewrites an existing step except Orbax's own retention of old steps after a successful save.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from resnet_jax import storage


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: corrupt, or written by a different model/architecture."""


def _is_abandoned_read_callback(unraisable) -> bool:
  """A TensorStore completion callback that found its asyncio event loop already closed."""
  if not (
    isinstance(unraisable.exc_value, RuntimeError)
    and str(unraisable.exc_value) == "Event loop is closed"
  ):
    return False
  tb, functions = unraisable.exc_traceback, set()
  while tb is not None:
    functions.add(tb.tb_frame.f_code.co_name)
    tb = tb.tb_next
  return "call_soon_threadsafe" in functions


def _drop_abandoned_read_callbacks() -> None:
  """Called before every read of a checkpoint (idempotent).

  Orbax reads a checkpoint's arrays as one ``asyncio.gather`` of TensorStore operations on an event
  loop of its own. When one fails (a corrupt file), the error propagates and Orbax closes that loop
  while the sibling operations are still in flight in TensorStore's threads. As each completes,
  TensorStore hands its result to the closed loop, which raises ``RuntimeError('Event loop is
  closed')``, and reports it through ``sys.unraisablehook``: a traceback on stderr whenever that
  happens -- before, within or after the one error line, depending only on how loaded the machine
  is. Those results belong to a read that has already failed and been reported, so they are
  dropped; every other unraisable exception still reaches the previous hook. Installed before the
  read, not after it fails: a completion can land between Orbax closing its loop and our handler.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_drops_abandoned_reads", False):
    return

  def hook(unraisable):
    if not _is_abandoned_read_callback(unraisable):
      previous(unraisable)

  hook._drops_abandoned_reads = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _tree_paths(tree) -> dict[str, tuple]:
  """``{"params/stage1_block0/conv1/kernel": shape}``: dataclass fields and dict keys alike."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {
    "/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat
  }


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
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )

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
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics,
      force=True,
    )

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def read_meta(self, step: int) -> dict[str, Any]:
    _drop_abandoned_read_callbacks()
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
    step = self.latest_step() if step is None else step
    try:
      saved = self._manager.item_metadata(step)["state"]
      target = jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), saved)
      return self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} could not be read ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); it may be corrupt"
      ) from None

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
    shapes must match the template. Either mismatch, or an unreadable file, raises ``CheckpointError``
    with one line naming it. Nothing on disk is touched.
    """
    _drop_abandoned_read_callbacks()
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(
        f"no checkpoint at step {step} in {self.directory}; available: {self.all_steps()}"
      )
    meta = self.read_meta(step)
    for key, want in (expect_meta or {}).items():
      if meta.get(key) != want:
        raise CheckpointError(
          f"checkpoint {self.directory} step {step} was written with {key}={meta.get(key)!r} but "
          f"this run has {key}={want!r}; use a fresh workdir or the matching config"
        )
    self._check_structure(step, template)

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
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} could not be restored ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); it may be corrupt"
      ) from None
    return restored, meta

  def _check_structure(self, step: int, template):
    try:
      saved_tree = self._manager.item_metadata(step)["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} is unreadable ({type(e).__name__}); "
        f"it may be corrupt: move it aside or choose another workdir"
      ) from None
    if saved_tree is None:
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} has no readable state metadata; it may be corrupt"
      )
    saved = _tree_paths(saved_tree)
    wanted = _tree_paths(template)
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    reshaped = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    if missing or unexpected or reshaped:
      parts = []
      if missing:
        parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
      if unexpected:
        parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
      if reshaped:
        k = reshaped[0]
        parts.append(
          f"{len(reshaped)} of different shape (e.g. {k}: {saved[k]} in checkpoint, "
          f"{wanted[k]} in this model)"
        )
      raise CheckpointError(
        f"checkpoint {self.directory} step {step} does not match this model's state: "
        + "; ".join(parts)
      )
