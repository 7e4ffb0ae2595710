"""A dense net with BatchNorm and dropout: the train step's arithmetic in a compile of seconds."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.train import optim
from resnet_jax.train import state as state_lib
from resnet_jax.train import steps

NUM_CLASSES = 3
IMAGE = (4, 4, 1)


class DenseBnDropout(nn.Module):
  """Dense -> BN -> dropout -> dense head; dropout draws from the "dropout" rng in training."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(5)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(NUM_CLASSES, name="head")(x)


def batch(n=6, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": rng.normal(size=(n, *IMAGE)).astype(np.float32),
    "label": rng.integers(0, NUM_CLASSES, size=n).astype(np.int32),
  }


def on_one_device(fn):
  """``fn`` pmapped over one device, its arguments and results without the device axis."""
  mapped = jax.pmap(fn, axis_name="batch")

  def call(*args):
    out = mapped(*jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], args))
    return jax.tree_util.tree_map(lambda x: x[0], out)

  return call


def train_step_on_one_device(config, **train_kwargs):
  """(model, tx, state, step): the real ``train_step`` for :class:`DenseBnDropout` under
  ``config`` (its optimizer, schedule and ``ema_decay``), run by :func:`on_one_device`."""
  model = DenseBnDropout()
  variables = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)), train=False)
  tx = optim.create_optimizer(config, variables["params"])
  state = state_lib.train_state_from_variables(variables, tx, use_ema=config.ema_decay > 0)
  step = functools.partial(
    steps.train_step,
    model=model,
    tx=tx,
    schedule=optim.create_schedule(config),
    num_classes=NUM_CLASSES,
    **train_kwargs,
  )
  return model, tx, state, on_one_device(step)
