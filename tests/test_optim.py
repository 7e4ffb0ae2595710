"""Learning-rate schedules, the paper's warm-up and plateau rules, and the SGD update rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_nets

from resnet_jax.train import config as config_lib
from resnet_jax.train import optim


def make_config(**kw):
  c = config_lib.base_config()
  c.update(kw)
  return c


def test_lr_scales_linearly_with_global_batch():
  c = make_config(learning_rate=0.1, lr_reference_batch=256, global_batch_size=1024)
  assert optim.base_learning_rate(c) == pytest.approx(0.4)


def test_warmup_cosine_rises_then_decays_to_zero():
  c = make_config(schedule="warmup_cosine", warmup_steps=10, num_train_steps=110)
  s = optim.create_schedule(c)
  assert float(s(0)) == 0 and float(s(10)) == pytest.approx(0.1)
  assert float(s(60)) == pytest.approx(0.05, abs=1e-3) and float(s(110)) == pytest.approx(0)


def test_resnet110_warmup_ends_at_the_first_step_whose_own_training_error_is_below_80_percent():
  """configs/cifar10_resnet110.py's warm-up on a tiny net: 0.01 up to the first step whose own
  minibatch error (recomputed here on the host from the state before it) is below 0.8, 0.1 from
  that step on, with no cap; decided inside the jitted step."""
  c = config_lib.load("cifar10_resnet110")
  assert (c.warmup_lr_scale, c.warmup_until_train_error, c.warmup_max_steps) == (0.1, 0.8, 0)
  model, _, state, step = tiny_nets.train_step_on_one_device(c)
  data = tiny_nets.batch(n=30)
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, data["image"])
  data["label"] = (np.argmax(logits, -1) + 1) % tiny_nets.NUM_CLASSES  # 100 % error at the start
  errors, rates = [], []
  for i in range(1, 31):
    rng = jax.random.key(i)
    logits, _ = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      data["image"],
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.split(rng)[1]},  # the step's dropout half of its key
    )
    errors.append(float(np.mean(np.argmax(logits, -1) != data["label"])))
    state, metrics = step(state, data, rng)
    assert float(metrics["train_top1_error"]) == errors[-1], i
    rates.append(float(metrics["learning_rate"]))
  first = next(i for i, e in enumerate(errors) if e < 0.8)
  assert first >= 3, errors  # a few steps of warm-up, then the switch
  assert rates[:first] == pytest.approx([0.01] * first), (errors, rates)
  assert rates[first:] == pytest.approx([0.1] * (30 - first)), (errors, rates)
  assert float(optim.warmup_lr_multiplier(state.opt_state)) == 1.0


def test_warmup_cap_ends_it_after_max_steps_whatever_the_error():
  """warmup_max_steps > 0 (tests only; the paper has no cap): step max_steps + 1 is at full rate."""
  params = jax.tree_util.tree_map(jnp.asarray, TREE)
  c = make_config(warmup_lr_scale=0.1, warmup_max_steps=3)
  tx = optim.create_optimizer(c, params)
  opt_state = tx.init(params)
  multipliers = []
  for step in range(5):
    _, opt_state = tx.update(GRADS, opt_state, params, train_error=0.9, step=step)
    multipliers.append(float(optim.warmup_lr_multiplier(opt_state)))
  assert multipliers == pytest.approx([0.1, 0.1, 0.1, 1.0, 1.0])
  # Without the warm-up the optimizer state holds no multiplier (its layout is unchanged).
  assert optim.warmup_lr_multiplier(optim.create_optimizer(make_config(), params).init(params)) == 1


def test_plateau_divides_by_ten_after_patience_evals_without_improvement():
  c = make_config(schedule="plateau", plateau_patience=2, plateau_min_delta=0.01)
  ctl = optim.LearningRateController.from_config(c)
  changes = [ctl.after_eval(c, e) for e in (0.5, 0.4, 0.395, 0.40, 0.30, 0.31, 0.305)]
  assert changes == [False, False, False, True, False, False, True]
  assert ctl.lr_scale == pytest.approx(0.01)
  restored = optim.LearningRateController.from_json(ctl.to_json())
  assert restored == ctl


def test_sgd_step_is_l2_then_momentum_like_the_paper():
  """Two steps by hand: v = m v + (g + wd w); w -= lr v; BN scale excluded when configured."""
  c = make_config(weight_decay=0.1, momentum=0.9, weight_decay_on_norm_and_bias=False)
  params = {"conv": {"kernel": jnp.array([1.0, -2.0])}, "bn": {"scale": jnp.array([3.0])}}
  grads = {"conv": {"kernel": jnp.array([0.5, 0.5])}, "bn": {"scale": jnp.array([1.0])}}
  tx = optim.create_optimizer(c, params)
  state = tx.init(params)
  lr = 0.1
  w, s = np.array([1.0, -2.0]), np.array([3.0])
  v_w, v_s = np.zeros(2), np.zeros(1)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, jax.tree_util.tree_map(lambda u: -lr * u, updates))
    v_w = 0.9 * v_w + (0.5 + 0.1 * w)
    v_s = 0.9 * v_s + 1.0
    w, s = w - lr * v_w, s - lr * v_s
  np.testing.assert_allclose(params["conv"]["kernel"], w, rtol=1e-6)
  np.testing.assert_allclose(params["bn"]["scale"], s, rtol=1e-6)


# A conv kernel, a BN layer and a dense head: the kernels are adapted and decayed, BN scale/bias and
# the dense bias are not (timm's param_groups_weight_decay, MLPerf's LARS).
TREE = {
  "conv": {"kernel": np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])},
  "bn": {"scale": np.array([1.0, 0.5, 2.0]), "bias": np.array([0.1, -0.2, 0.3])},
  "head": {
    "kernel": np.array([[0.5, -0.5], [1.0, 2.0], [-1.5, 0.0]]),
    "bias": np.array([0.2, -0.1]),
  },
}
GRADS = {
  "conv": {"kernel": np.array([[0.3, -0.1, 0.2], [0.05, -0.4, 0.1]])},
  "bn": {"scale": np.array([0.2, -0.3, 0.1]), "bias": np.array([-0.5, 0.25, 0.05])},
  "head": {
    "kernel": np.array([[0.1, 0.2], [-0.3, 0.4], [0.5, -0.6]]),
    "bias": np.array([0.7, -0.8]),
  },
}
KERNELS = (("conv", "kernel"), ("head", "kernel"))
NOT_KERNELS = (("bn", "scale"), ("bn", "bias"), ("head", "bias"))


def _update(config, steps=1):
  params = jax.tree_util.tree_map(jnp.asarray, TREE)
  grads = jax.tree_util.tree_map(jnp.asarray, GRADS)
  tx = optim.create_optimizer(config, params)
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return jax.tree_util.tree_map(np.asarray, updates)


def test_lamb_first_step_is_adam_plus_decay_times_the_trust_ratio_on_kernels_only():
  """Step 1 of bias-corrected Adam is g / (|g| + eps); kernels add wd * w and are scaled by
  ||w|| / ||update||; BN and biases keep the plain Adam step (no decay, no trust ratio)."""
  wd, eps = 0.05, 1e-6
  updates = _update(make_config(optimizer="lamb", weight_decay=wd, eps=eps))
  for a, b in KERNELS:
    w, g = TREE[a][b], GRADS[a][b]
    u = g / (np.abs(g) + eps) + wd * w
    want = u * np.linalg.norm(w) / np.linalg.norm(u)
    np.testing.assert_allclose(updates[a][b], want, rtol=1e-5)
  for a, b in NOT_KERNELS:
    g = GRADS[a][b]
    np.testing.assert_allclose(updates[a][b], g / (np.abs(g) + eps), rtol=1e-5)


def test_lars_scales_decayed_kernel_gradients_by_eta_times_the_norm_ratio_then_momentum():
  """LARS: u = g + wd * w, times eta * ||w|| / ||u|| on kernels; BN and biases get g alone; then
  momentum v = m * v + u (two steps with the same gradient: v = (1 + m) u)."""
  wd, eta, m = 1e-4, 0.001, 0.9
  config = make_config(optimizer="lars", weight_decay=wd, trust_coefficient=eta, momentum=m)
  one, two = _update(config), _update(config, steps=2)
  for a, b in KERNELS:
    w, g = TREE[a][b], GRADS[a][b]
    u = g + wd * w
    want = eta * np.linalg.norm(w) / np.linalg.norm(u) * u
    np.testing.assert_allclose(one[a][b], want, rtol=1e-5)
    np.testing.assert_allclose(two[a][b], (1 + m) * want, rtol=1e-5)
  for a, b in NOT_KERNELS:
    np.testing.assert_allclose(one[a][b], GRADS[a][b], rtol=1e-6)
    np.testing.assert_allclose(two[a][b], (1 + m) * GRADS[a][b], rtol=1e-6)


def test_adamw_decay_is_decoupled_from_the_adaptive_step_and_skips_norm_and_bias():
  wd, eps = 0.05, 1e-8
  updates = _update(make_config(optimizer="adamw", weight_decay=wd, eps=eps))
  for a, b in KERNELS:
    w, g = TREE[a][b], GRADS[a][b]
    np.testing.assert_allclose(updates[a][b], g / (np.abs(g) + eps) + wd * w, rtol=1e-5)
  for a, b in NOT_KERNELS:
    g = GRADS[a][b]
    np.testing.assert_allclose(updates[a][b], g / (np.abs(g) + eps), rtol=1e-5)


def test_sgd_optimizer_state_keeps_the_layout_its_checkpoints_hold():
  """Old sgd checkpoints restore only if the state tree is unchanged: (masked decay, momentum)."""
  params = jax.tree_util.tree_map(jnp.asarray, TREE)
  state = optim.create_optimizer(make_config(), params).init(params)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  assert paths == [f"[1].trace['{a}']['{b}']" for a, b in sorted(KERNELS + NOT_KERNELS)], paths


@pytest.mark.parametrize(
  "key, value, words",
  [
    (
      "optimizer",
      "adamax",
      "config.optimizer='adamax': unknown optimizer; choose one of sgd, lamb",
    ),
    ("loss", "focal", "config.loss='focal': unknown loss; choose one of softmax_ce, bce"),
    ("ema_decay", 1.0, "config.ema_decay=1.0: must be in [0, 1)"),
    ("mix_prob", 1.5, "config.mix_prob=1.5: must be in [0, 1]"),
    ("cutmix_alpha", -1.0, "config.cutmix_alpha=-1.0: must not be negative"),
  ],
)
def test_bad_training_keys_are_refused_in_one_line(key, value, words):
  config = make_config(**{key: value})
  with pytest.raises(ValueError) as error:
    config_lib.validate(config, known_models=["resnet20"], known_datasets=["digits"])
  assert str(error.value).startswith(words) and "\n" not in str(error.value), str(error.value)
