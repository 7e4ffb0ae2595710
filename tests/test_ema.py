"""The moving average of parameters and BN statistics: its update and its place in checkpoints (old
ones without it still restore). Its resume and serving's choice of it are test_modern's tiny run
with every ingredient on."""

import dataclasses

import jax
import numpy as np
import pytest

from resnet_jax.checkpoint import CheckpointError, Checkpointer
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop, parallel
from tiny_nets import batch, train_step_on_one_device


def _setup(ema_decay):
  c = config_lib.base_config()
  c.update(learning_rate=0.3, schedule="constant", ema_decay=ema_decay)
  _, tx, state, step = train_step_on_one_device(c, ema_decay=ema_decay)
  return c, tx, state, step


def test_ema_is_decay_times_ema_plus_one_minus_decay_times_the_new_variables_each_step():
  decay = 0.75
  _, _, state, step = _setup(decay)
  variables = lambda s: {"params": s.params, "batch_stats": s.batch_stats}
  want = jax.tree_util.tree_map(np.asarray, variables(state))  # the average starts at step 0's
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, state.ema, want))
  for i in range(3):
    state, _ = step(state, batch(seed=i), jax.random.key(i))
    new = jax.tree_util.tree_map(np.asarray, variables(state))
    want = jax.tree_util.tree_map(lambda e, n: decay * e + (1 - decay) * n, want, new)
    for a, b in zip(jax.tree_util.tree_leaves(state.ema), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  # Both averaged: parameters moved, and BN statistics (which the optimizer never touches).
  assert not np.allclose(state.ema["batch_stats"]["BatchNorm_0"]["mean"], 0.0)
  assert not np.allclose(state.ema["params"]["head"]["kernel"], state.params["head"]["kernel"])


def test_without_ema_the_state_tree_is_the_one_older_checkpoints_hold():
  _, _, state, _ = _setup(0.0)
  assert state.ema is None
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  assert not any("ema" in p for p in paths)
  assert sorted({p.split("[")[0].split(".")[1] for p in paths}) == [
    "batch_stats",
    "lr_scale",
    "opt_state",
    "params",
    "step",
  ]


def _save_and_restore(tmp_path, monkeypatch, saved_layout, restored_with_ema):
  """Saves a state stepped once in ``saved_layout`` and restores it through the loop; returns
  ``(saved, restored)`` after checking the loop read the checkpoint once."""
  monkeypatch.setattr(loop, "_expect_meta", lambda config: {})
  config, tx, saved, step = _setup(0.5 if saved_layout == "ema" else 0.0)
  saved, _ = step(saved, batch(), jax.random.key(1))
  on_disk = jax.tree_util.tree_map(np.asarray, saved)
  if saved_layout == "before_ema":  # as the train state was saved before it had an ema field
    on_disk = {f.name: getattr(on_disk, f.name) for f in dataclasses.fields(on_disk)}
    del on_disk["ema"]
  ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(1, on_disk, {"model": "tiny"})
  ckpt.wait()
  config.ema_decay = 0.5 if restored_with_ema else 0.0
  template = jax.eval_shape(lambda: _setup(config.ema_decay)[2])
  reads = []
  restore = ckpt.restore
  monkeypatch.setattr(ckpt, "restore", lambda *a, **k: reads.append(a) or restore(*a, **k))
  try:
    restored, _ = loop._restore(config, ckpt, parallel.Pmap(), template)
  finally:
    ckpt.close()
  assert len(reads) == 1  # the template comes from the saved fields: no trial and error
  assert type(restored) is type(saved)
  return saved, restored


@pytest.mark.parametrize("saved_layout", ["before_ema", "no_ema", "ema"])
@pytest.mark.parametrize("restored_with_ema", [False, True])
def test_checkpoints_restore_whether_or_not_either_side_keeps_an_average(
  tmp_path, monkeypatch, saved_layout, restored_with_ema
):
  """A run written before EMA existed (or with it off) restores with it off, or on: the average then
  starts from the restored variables. A run with one restores with it off: it is dropped."""
  saved, restored = _save_and_restore(tmp_path, monkeypatch, saved_layout, restored_with_ema)
  for field in ("params", "batch_stats", "opt_state", "step"):
    for a, b in zip(
      jax.tree_util.tree_leaves(getattr(restored, field)),
      jax.tree_util.tree_leaves(getattr(saved, field)),
    ):
      np.testing.assert_array_equal(a, b)
  if not restored_with_ema:
    assert restored.ema is None
  else:
    want = (
      saved.ema
      if saved_layout == "ema"
      else {"params": saved.params, "batch_stats": saved.batch_stats}
    )
    for a, b in zip(jax.tree_util.tree_leaves(restored.ema), jax.tree_util.tree_leaves(want)):
      np.testing.assert_array_equal(a, b)


def test_a_checkpoint_of_another_net_fails_at_the_one_restore_naming_the_difference(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(loop, "_expect_meta", lambda config: {})
  config, _, saved, _ = _setup(0.5)
  ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(1, jax.tree_util.tree_map(np.asarray, saved), {"model": "tiny"})
  wider = jax.eval_shape(lambda: _setup(0.0)[2])
  head = wider.params["head"]["kernel"]
  wider = wider.replace(
    params={**wider.params, "head": {**wider.params["head"], "kernel": head.update(shape=(5, 4))}}
  )
  reads = []
  restore = ckpt.restore
  monkeypatch.setattr(ckpt, "restore", lambda *a, **k: reads.append(a) or restore(*a, **k))
  with pytest.raises(CheckpointError, match=r"params/head/kernel \(5, 3\) != expected \(5, 4\)"):
    loop._restore(config, ckpt, parallel.Pmap(), wider)
  ckpt.close()
  assert len(reads) == 1
