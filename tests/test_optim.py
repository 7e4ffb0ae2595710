"""Learning-rate schedules, the paper's warm-up and plateau rules, and the SGD update rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def test_resnet110_warmup_ends_when_training_error_drops_below_80_percent():
  c = make_config(warmup_lr_scale=0.1, warmup_max_steps=400, warmup_until_train_error=0.8)
  ctl = optim.LearningRateController.from_config(c)
  assert ctl.lr_scale == pytest.approx(0.1)
  assert not ctl.after_train_metrics(c, 100, 0.85)
  assert ctl.after_train_metrics(c, 150, 0.79) and ctl.lr_scale == pytest.approx(1.0)
  assert not ctl.after_train_metrics(c, 200, 0.5)  # once only


def test_resnet110_warmup_ends_after_400_iterations_at_the_latest():
  c = make_config(warmup_lr_scale=0.1, warmup_max_steps=400)
  ctl = optim.LearningRateController.from_config(c)
  assert ctl.after_train_metrics(c, 400, 0.9) and ctl.lr_scale == pytest.approx(1.0)


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
