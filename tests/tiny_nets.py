"""A dense net with BatchNorm and dropout: the train step's arithmetic in a compile of seconds."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
