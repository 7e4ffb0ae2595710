"""train_step / eval_step against independent computations on a tiny net (one device, pmapped)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils
from flax.training.dynamic_scale import DynamicScale

from resnet_jax.models import get_model
from resnet_jax.train import config as config_lib
from resnet_jax.train import optim, state as state_lib, steps

TINY = dict(stem_width=2, stage_widths=(2, 4, 4), stage_sizes=(1, 1, 1))
IMAGE = (8, 8, 1)


def setup(dtype=jnp.float32, loss_scale=False, lr=0.1, wd=1e-2):
  model = get_model("resnet20", num_classes=10, dtype=dtype, **TINY)
  c = config_lib.base_config()
  c.update(learning_rate=lr, weight_decay=wd, schedule="constant")
  params = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, *IMAGE)), train=False), jax.random.key(0)
  )["params"]
  tx = optim.create_optimizer(c, params)
  # Jitted, as the loop does: one compile instead of one per operation of the initialisation.
  state = jax.jit(
    functools.partial(
      state_lib.create_train_state, model, tx, image_shape=IMAGE, use_loss_scale=loss_scale
    )
  )(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.normal(size=(4, *IMAGE)).astype(np.float32),
    "label": np.array([1, 3, 3, 7], np.int32),
  }
  step = jax.pmap(
    functools.partial(
      steps.train_step, model=model, tx=tx, schedule=optim.create_schedule(c), num_classes=10
    ),
    axis_name=steps.AXIS,
  )
  return model, state, batch, step


def run_step(state, batch, step):
  new, metrics = step(
    jax_utils.replicate(state),
    jax.tree_util.tree_map(lambda x: x[None], batch),
    jax.random.split(jax.random.key(1), 1),
  )
  return jax_utils.unreplicate(new), jax_utils.unreplicate(metrics)


def test_one_step_is_sgd_with_l2_on_the_gradient_of_the_cross_entropy():
  model, state, batch, step = setup()
  new, metrics = run_step(state, batch, step)

  def loss(params):
    logits, updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    labels = jax.nn.one_hot(batch["label"], 10)
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1)), updates["batch_stats"]

  (value, batch_stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state.params)
  # First step of momentum SGD: v = g + wd * w, w <- w - lr * v.
  expected = jax.tree_util.tree_map(
    lambda w, g: np.asarray(w) - 0.1 * (np.asarray(g) + 1e-2 * np.asarray(w)), state.params, grads
  )
  for got, want in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for got, want in zip(
    jax.tree_util.tree_leaves(new.batch_stats), jax.tree_util.tree_leaves(batch_stats)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert float(metrics["train_loss"]) == pytest.approx(float(value), rel=1e-6)
  assert float(metrics["learning_rate"]) == pytest.approx(0.1)
  assert int(new.step) == 1


def test_bf16_compute_keeps_float32_parameters():
  _, state, batch, step = setup(dtype=jnp.bfloat16)
  new, metrics = run_step(state, batch, step)
  assert {x.dtype for x in jax.tree_util.tree_leaves(new.params)} == {jnp.dtype("float32")}
  assert np.isfinite(float(metrics["train_loss"]))


def _leaves_with_paths(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_fp16_overflowing_step_is_skipped_and_the_loss_scale_shrinks():
  """A skipped step changes nothing a later step reads: params, momentum and BN statistics stay."""
  _, state, batch, step = setup(dtype=jnp.float16, loss_scale=True)
  # One good step first, so the momentum and the BN statistics are not their initial values.
  state, _ = run_step(state.replace(loss_scale=DynamicScale(scale=jnp.float32(128.0))), batch, step)
  before = state.replace(loss_scale=DynamicScale(scale=jnp.float32(2.0**100)))  # overflows fp16
  new, _ = run_step(before, batch, step)
  for field in ("params", "opt_state", "batch_stats", "lr_scale"):
    for (path, got), old in zip(
      _leaves_with_paths(getattr(new, field)),
      jax.tree_util.tree_leaves(getattr(before, field)),
    ):
      np.testing.assert_array_equal(got, old, err_msg=f"{field}{jax.tree_util.keystr(path)}")
  assert int(new.step) == int(before.step) + 1
  assert float(new.loss_scale.scale) == pytest.approx(2.0**99)
  fine, _ = run_step(new.replace(loss_scale=DynamicScale(scale=jnp.float32(128.0))), batch, step)
  for field in ("params", "opt_state", "batch_stats"):
    leaves = jax.tree_util.tree_leaves(getattr(fine, field))
    assert all(np.isfinite(x).all() for x in leaves), field
    assert any(
      not np.array_equal(a, b)
      for a, b in zip(leaves, jax.tree_util.tree_leaves(getattr(before, field)))
    ), field


def test_eval_averages_softmax_over_views_and_ignores_padding():
  model, state, batch, _ = setup()
  p_eval = jax.pmap(functools.partial(steps.eval_step, model=model), axis_name=steps.AXIS)
  views = np.stack([batch["image"], batch["image"][:, ::-1]], axis=1)  # 2 views per image
  mask = np.array([True, True, True, False])
  sums = jax_utils.unreplicate(
    p_eval(
      jax_utils.replicate(state),
      {"image": views[None], "label": batch["label"][None], "mask": mask[None]},
    )
  )
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  probs = np.mean(
    [jax.nn.softmax(model.apply(variables, views[:, v], train=False)) for v in range(2)], axis=0
  )[:3]
  labels = batch["label"][:3]
  assert float(sums["count"]) == 3
  assert float(sums["top1_correct"]) == np.sum(probs.argmax(-1) == labels)
  np.testing.assert_allclose(
    float(sums["loss_sum"]), -np.sum(np.log(probs[np.arange(3), labels])), rtol=1e-5
  )
