"""The steady-state train step moves nothing between host and devices: steps 2..N of the real step
(train.parallel, both layouts) on device-resident synthetic batches run under
``jax.transfer_guard("disallow")``, which raises at any implicit host<->device transfer."""

import functools

import jax
import pytest

from resnet_jax import models
from resnet_jax.data import synthetic
from resnet_jax.train import config as config_lib
from resnet_jax.train import optim, parallel, steps
from resnet_jax.train import state as state_lib

pytestmark = pytest.mark.slow  # two compiles of the train step


def _tiny():
  c = config_lib.base_config()
  c.schedule = "piecewise"  # the step reads its learning rate from the schedule, on the device
  c.lr_boundaries = (3,)
  model = models.get_model(
    "resnet20", num_classes=10, stem_width=4, stage_widths=(4, 8, 8), stage_sizes=(1, 1, 1)
  )
  image_shape = (16, 16, 3)
  tx = optim.create_optimizer(c, state_lib.abstract_variables(model, image_shape)["params"])
  state = jax.jit(
    functools.partial(state_lib.create_train_state, model, tx, image_shape=image_shape)
  )(jax.random.key(0))
  return c, model, tx, state


@pytest.mark.parametrize("parallelism", parallel.PARALLELISMS)
def test_steps_after_the_first_transfer_nothing(parallelism):
  c, model, tx, state = _tiny()
  par = parallel.create(parallelism)
  n = jax.local_device_count()
  batch = par.put_batch(
    synthetic.host_batch(per_host=4 * n, local_device_count=n, image_size=16, num_classes=10)
  )
  p_train_step = par.train_step(
    steps.train_step,
    seed=1,
    model=model,
    tx=tx,
    schedule=optim.create_schedule(c),
    num_classes=10,
  )
  state = par.replicate(state)
  state, metrics = p_train_step(state, batch)  # step 1: compiles, may move what it likes
  jax.block_until_ready(state)
  with jax.transfer_guard("disallow"):
    for _ in range(4):
      state, metrics = p_train_step(state, batch)
    jax.block_until_ready((state, metrics))
  assert int(par.fetch(state.step)) == 5


def test_the_guard_catches_a_host_value_passed_per_step():
  """The test above can fail: a numpy argument in the step is a host-to-device transfer."""
  import numpy as np

  add = jax.jit(lambda x, y: x + y)
  x = jax.device_put(np.ones(3, np.float32))
  add(x, np.ones(3, np.float32))
  with pytest.raises(Exception, match="[Dd]isallowed"):
    with jax.transfer_guard("disallow"):
      add(x, np.ones(3, np.float32))
