"""The losses and the train step's inputs: BCE against its formula, mixup/cutmix and dropout keys in
the step against a hand-written step, and bad keys refused in one line by the CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.train import config as config_lib
from resnet_jax.train import mixing, steps
from tiny_nets import NUM_CLASSES, batch, train_step_on_one_device


def _bce(x, t):
  """The textbook formula: -(t log s(x) + (1 - t) log(1 - s(x))), mean over all entries."""
  s = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
  return float(np.mean(-(t * np.log(s) + (1 - t) * np.log(1 - s))))


LOGITS = np.array(
  [[2.0, -1.0, 0.5, 0.0], [-0.5, 3.0, 1.0, -2.0], [0.1, 0.2, -0.3, 4.0]], np.float32
)


def test_bce_is_the_mean_sigmoid_cross_entropy_over_classes_and_examples():
  targets = np.asarray(mixing.smooth_one_hot(jnp.array([0, 1, 3]), 4, 0.1))
  np.testing.assert_allclose(targets[0], [0.925, 0.025, 0.025, 0.025], rtol=1e-6)  # timm's on/off
  got = float(steps.binary_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(targets)))
  np.testing.assert_allclose(got, _bce(LOGITS, targets), rtol=1e-6)


def test_bce_threshold_turns_targets_above_it_into_ones_and_the_rest_into_zeros():
  # Mixed targets (lam 0.7 with the reversed batch) plus smoothing: 0.7+, 0.3+, and 0.025 entries.
  targets = np.asarray(mixing.mix_targets(jnp.array([0, 1, 3]), 4, 0.7, 0.1))
  binary = (targets > 0.2).astype(np.float32)
  assert binary.sum(axis=1).tolist() == [2.0, 1.0, 2.0]  # the middle example is its own partner
  got = float(steps.binary_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(targets), 0.2))
  np.testing.assert_allclose(got, _bce(LOGITS, binary), rtol=1e-6)
  assert abs(got - _bce(LOGITS, targets)) > 1e-3


def _step_and_state(**train_kwargs):
  c = config_lib.base_config()
  c.update(weight_decay=0.0, momentum=0.0, learning_rate=0.5, schedule="constant")
  model, _, state, step = train_step_on_one_device(c, **train_kwargs)
  return model, state, step


def test_train_step_mixes_on_device_feeds_dropout_and_takes_the_bce_gradient():
  """One step with cutmix/mixup, smoothing, thresholded BCE and dropout equals the same step
  written out: the step's key splits into the mixing key and the dropout key."""
  mix = mixing.MixConfig(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1)
  model, state, step = _step_and_state(
    label_smoothing=0.1, loss="bce", bce_target_threshold=0.2, mix=mix
  )
  data, rng = batch(), jax.random.key(7)
  new, metrics = step(state, data, rng)

  def reference(params, rng):
    """The step written out: one compiled program (the mixing run eagerly pays a compile per op)."""
    mix_rng, dropout_rng = jax.random.split(rng)
    images, targets = mixing.mix(mix_rng, data["image"], data["label"], NUM_CLASSES, mix)
    (loss_value, logits), grads = jax.value_and_grad(loss, has_aux=True)(
      params, images, targets, dropout_rng
    )
    return images, targets, loss_value, logits, grads

  def loss(params, images, targets, dropout_rng):
    logits, _ = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_rng},
    )
    t = (targets > 0.2).astype(jnp.float32)
    return optax.sigmoid_binary_cross_entropy(logits, t).mean(), logits

  images, targets, want_loss, logits, grads = jax.jit(reference)(state.params, rng)
  assert not np.array_equal(images, data["image"])  # this key mixes
  np.testing.assert_allclose(metrics["train_loss"], want_loss, rtol=1e-6)
  want = jax.tree_util.tree_map(
    lambda p, g: np.asarray(p) - 0.5 * np.asarray(g), state.params, grads
  )
  for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # With soft targets an example counts as the class its target weighs most.
  error = np.mean(np.argmax(logits, -1) != np.argmax(targets, -1))
  np.testing.assert_allclose(metrics["train_top1_error"], error)


def test_softmax_loss_without_mixing_is_the_papers_cross_entropy_on_the_labels():
  model, state, step = _step_and_state(label_smoothing=0.1)
  data, rng = batch(), jax.random.key(3)
  _, metrics = step(state, data, rng)
  logits, _ = jax.jit(  # one compile; run eagerly each of the model's ops compiles on its own
    lambda v, x, k: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k})
  )(
    {"params": state.params, "batch_stats": state.batch_stats},
    data["image"],
    jax.random.split(rng)[1],
  )
  p = jax.nn.log_softmax(logits)
  t = np.full((len(data["label"]), NUM_CLASSES), 0.1 / NUM_CLASSES)
  t[np.arange(len(t)), data["label"]] += 0.9
  np.testing.assert_allclose(metrics["train_loss"], -np.mean(np.sum(t * p, -1)), rtol=1e-6)


@pytest.mark.e2e
@pytest.mark.parametrize(
  "override, words",
  [
    ("--config.optimizer=adam", "config.optimizer='adam': unknown optimizer; choose one of sgd"),
    ("--config.loss=focal", "config.loss='focal': unknown loss; choose one of softmax_ce, bce"),
  ],
)
def test_unknown_optimizer_or_loss_is_one_line_and_exit_2(tmp_path, run_main, override, words):
  workdir = str(tmp_path / "bad")
  proc = run_main(workdir, override, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and words in lines[-1], lines[-1]
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
