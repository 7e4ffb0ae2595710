"""A minute-scale sweep on the bundled offline digits data: plain20 vs resnet20, two seeds.

resnet-jax sweep launch/sweeps/digits_tiny.py --workdir=runs/digits_tiny --parallel=2
"""

from resnet_jax.sweep import product

CONFIG = "configs/digits.py"
OVERRIDES = {"num_train_steps": 200, "eval_every_steps": 100}  # every member; not in the names


def get_sweep():
  # model=plain20,seed=0  model=plain20,seed=1  model=resnet20,seed=0  model=resnet20,seed=1
  return product(model=["plain20", "resnet20"], seed=[0, 1])
