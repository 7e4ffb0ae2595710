"""Checkpointer: retention (latest K + best), exact round trip, and one-line refusals."""

import numpy as np
import pytest

from resnet_jax.checkpoint import CheckpointError, Checkpointer, mismatch


def state(scale=1.0):
  return {
    "params": {"conv": {"kernel": np.full((3, 3, 1, 4), scale, np.float32)}},
    "step": np.int32(7),
  }


def test_keeps_the_latest_k_plus_the_best_by_validation_error(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep_last=2, keep_best=1, async_save=False)
  errors = {10: 0.5, 20: 0.1, 30: 0.4, 40: 0.3, 50: 0.35}
  for step, err in errors.items():
    ckpt.save(step, state(step), {"model": "m"}, metrics={"eval_top1_error": err})
  ckpt.wait()
  assert ckpt.all_steps() == [20, 40, 50]  # best (20) + latest two
  ckpt.close()


def test_round_trip_is_exact_and_meta_is_kept(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  original = state(0.25)
  ckpt.save(3, original, {"model": "resnet20", "lr_controller": {"lr_scale": 0.1}})
  ckpt.wait()
  restored, meta = ckpt.restore(original, expect_meta={"model": "resnet20"})
  np.testing.assert_array_equal(
    restored["params"]["conv"]["kernel"], original["params"]["conv"]["kernel"]
  )
  assert meta["lr_controller"] == {"lr_scale": 0.1}
  ckpt.close()


def test_another_model_or_shape_is_refused_naming_the_difference(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, state(), {"model": "resnet20"})
  with pytest.raises(CheckpointError, match="model='resnet20' but this run has model='resnet56'"):
    ckpt.restore(state(), expect_meta={"model": "resnet56"})
  wider = {"params": {"conv": {"kernel": np.zeros((3, 3, 1, 8), np.float32)}}, "step": np.int32(0)}
  with pytest.raises(
    CheckpointError,
    match=r"1 of the wrong shape: params/conv/kernel \(3, 3, 1, 4\) != expected \(3, 3, 1, 8\)$",
  ):
    ckpt.restore(wider)
  with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
    ckpt.restore(state(), step=5)
  with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
    ckpt.saved_fields(5)
  ckpt.close()


def test_saved_fields_are_read_from_the_metadata_without_a_template(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, {**state(), "ema": None}, {"model": "m"})
  assert ckpt.saved_fields() == {"params": True, "step": True, "ema": False}
  ckpt.close()


def test_mismatch_lists_every_kind_in_one_line():
  have = {("a", "x"): (3,), ("a", "y"): (2, 4), "extra": ()}
  want = {("a", "x"): (3,), ("a", "y"): (4, 2), ("a", "z"): (1,)}
  assert mismatch(want, want) is None
  assert mismatch(have, want, transposed_hint=True) == (
    "1 missing: a/z; 1 unexpected: extra; 1 of the wrong shape: a/y (2, 4) != expected (4, 2) "
    "(transposed?)"
  )
  many = {("p", f"w{i}"): (1,) for i in range(14)}
  assert mismatch({}, many) == (
    "14 missing: p/w0, p/w1, p/w2, p/w3, p/w4, p/w5, p/w6, p/w7, p/w8, p/w9, p/w10, p/w11, ... "
    "(2 more)"
  )


def test_reads_abandoned_by_a_failed_restore_print_nothing(monkeypatch):
  """Why the corrupt-checkpoint test was flaky, replayed deterministically: Orbax gathers TensorStore
  reads on its own event loop and closes it when one fails; a sibling read that completes later
  raises 'Event loop is closed' in TensorStore's thread, reported through sys.unraisablehook (a
  traceback on stderr at a moment set by the machine's load). The runtime's set-up drops exactly
  those."""
  import asyncio
  import sys

  import tensorstore as ts

  from resnet_jax import runtime

  reported = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))

  def failed_read_leaving_one_in_flight():
    promise, in_flight = ts.Promise.new()

    async def corrupt():
      raise ValueError("DATA_LOSS: Error decoding manifest")

    async def read_all():  # what Orbax does: one gather over every array's read
      await asyncio.gather(corrupt(), in_flight)

    loop = asyncio.new_event_loop()
    with pytest.raises(ValueError, match="DATA_LOSS"):
      loop.run_until_complete(read_all())
    loop.close()
    promise.set_result(0)  # the abandoned read completes after the loop closed

  failed_read_leaving_one_in_flight()
  assert [str(e) for e in reported] == ["Event loop is closed"]  # the traceback users saw
  reported.clear()
  runtime.drop_abandoned_read_callbacks()  # what the front door's set-up does first
  runtime.drop_abandoned_read_callbacks()  # idempotent: one hook, not a chain
  failed_read_leaving_one_in_flight()
  assert reported == []
  sys.unraisablehook(
    type("U", (), {"exc_value": RuntimeError("other"), "exc_traceback": None})()
  )  # anything else still reaches the previous hook
  assert [str(e) for e in reported] == ["other"]
