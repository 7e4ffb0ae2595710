"""The train state: everything a step changes, and nothing else (pure data, checkpointable)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.dynamic_scale import DynamicScale


class TrainState(struct.PyTreeNode):
  """Params, BatchNorm running statistics, optimizer state and step.

  ``lr_scale`` multiplies the step schedule (see ``optim``); ``loss_scale`` is the fp16 dynamic loss
  scale, ``None`` for fp32/bf16 runs. ``ema`` is the moving average ``{"params", "batch_stats"}``
  of ``config.ema_decay``, ``None`` when it is off: a ``None`` field holds no arrays, so checkpoints
  written without it have the same tree.
  """

  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  lr_scale: jnp.ndarray
  loss_scale: DynamicScale | None = None
  ema: Any = None

  def ema_state(self) -> "TrainState":
    """This state with the moving average in place of params and BN statistics (for evaluation)."""
    return self.replace(params=self.ema["params"], batch_stats=self.ema["batch_stats"])


def initial_ema(params, batch_stats) -> dict:
  """The average at its start: a copy of the variables it averages."""
  copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
  return {"params": copy(params), "batch_stats": copy(batch_stats)}


def checkpoint_template(template: TrainState, saved: Mapping[str, bool]) -> dict:
  """The fields of ``template`` laid out as a checkpoint saved them, to restore it in one read.

  ``saved``: the checkpoint's top-level fields, each with whether it holds arrays
  (``Checkpointer.saved_fields``). The layouts this state has had: a checkpoint written before the
  ``ema`` field has none; one written after holds the moving average of params and BN statistics
  there, or nothing when it was off. Every other field must fit ``template``'s as it is: the
  restore names what does not.
  """
  fields = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)}
  if "ema" not in saved:
    del fields["ema"]
  elif saved["ema"]:
    fields["ema"] = {"params": template.params, "batch_stats": template.batch_stats}
  else:
    fields["ema"] = None
  return fields


def from_checkpoint(template: TrainState, restored: Mapping[str, Any]) -> TrainState:
  """The state of ``template``'s config from the restored fields of a :func:`checkpoint_template`.

  A moving average the checkpoint holds but the config does not keep (``ema`` None in
  ``template``) is dropped; one the config keeps but the checkpoint lacks starts from the restored
  variables, as at step 0.
  """
  state = template.replace(**restored)
  if template.ema is None:
    return state.replace(ema=None)
  if restored.get("ema") is None:
    return state.replace(ema=initial_ema(state.params, state.batch_stats))
  return state


def init_variables(model, rng, image_shape):
  """The model's variables, initialised on a dummy batch of one image of ``image_shape`` (H, W, C)."""
  return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def train_state_from_variables(
  variables,
  tx: optax.GradientTransformation,
  lr_scale: float = 1.0,
  use_loss_scale: bool = False,
  use_ema: bool = False,
) -> TrainState:
  """A step-0 state around the model ``variables`` (params, and batch_stats if any)."""
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    lr_scale=jnp.asarray(lr_scale, jnp.float32),
    loss_scale=DynamicScale() if use_loss_scale else None,
    ema=initial_ema(params, batch_stats) if use_ema else None,
  )


def create_train_state(
  model,
  tx: optax.GradientTransformation,
  rng,
  image_shape,
  lr_scale: float = 1.0,
  use_loss_scale: bool = False,
  use_ema: bool = False,
) -> TrainState:
  """Initialises the model on a dummy batch of one image of ``image_shape`` (H, W, C)."""
  return train_state_from_variables(
    init_variables(model, rng, image_shape), tx, lr_scale, use_loss_scale, use_ema
  )


def abstract_variables(model, image_shape):
  """Shapes and dtypes of the model's variables (one trace of ``model.init``; nothing compiles)."""
  return jax.eval_shape(lambda rng: init_variables(model, rng, image_shape), jax.random.key(0))


def abstract_train_state(
  model, tx, image_shape, lr_scale=1.0, use_loss_scale=False, *, variables=None, use_ema=False
):
  """Shapes and dtypes of the state without computing it (nothing compiles).

  ``variables``: the model's ``abstract_variables``, when the caller already has them (e.g. to
  build the optimizer's mask from the params); the model is then not traced a second time.
  """
  if variables is None:
    variables = abstract_variables(model, image_shape)
  return jax.eval_shape(
    lambda v: train_state_from_variables(v, tx, lr_scale, use_loss_scale, use_ema), variables
  )


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
