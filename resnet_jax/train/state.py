"""The train state: everything a step changes, and nothing else (pure data, checkpointable)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.dynamic_scale import DynamicScale


class TrainState(struct.PyTreeNode):
  """Params, BatchNorm running statistics, optimizer state and step.

  ``lr_scale`` multiplies the step schedule (see ``optim``); ``loss_scale`` is the fp16 dynamic loss
  scale, ``None`` for fp32/bf16 runs.
  """
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  lr_scale: jnp.ndarray
  loss_scale: DynamicScale | None = None


def create_train_state(model, tx: optax.GradientTransformation, rng, image_shape,
                       lr_scale: float = 1.0, use_loss_scale: bool = False) -> TrainState:
  """Initialises the model on a dummy batch of one image of ``image_shape`` (H, W, C)."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      lr_scale=jnp.asarray(lr_scale, jnp.float32),
      loss_scale=DynamicScale() if use_loss_scale else None)


def abstract_train_state(model, tx, image_shape, lr_scale=1.0, use_loss_scale=False):
  """Shapes and dtypes of the state without computing it (nothing compiles)."""
  return jax.eval_shape(
      lambda rng: create_train_state(model, tx, rng, image_shape, lr_scale, use_loss_scale),
      jax.random.key(0))


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
