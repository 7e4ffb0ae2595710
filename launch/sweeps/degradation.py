"""Paper §4.2 / Fig. 6: plain vs residual nets at 20, 32, 44 and 56 layers on CIFAR-10.

Plain nets get worse with depth (the degradation problem); residual nets get better.
  resnet-jax sweep launch/sweeps/degradation.py --workdir=runs/degradation --parallel=1
  python -m resnet_jax.sweep launch/sweeps/degradation.py --workdir=gs://BUCKET/degradation --emit=tpu
"""
from resnet_jax.sweep import product

CONFIG = "configs/cifar10.py"
DEPTHS = (20, 32, 44, 56)


def get_sweep():
  # 8 members: model=plain20,seed=0 ... model=resnet56,seed=0
  return product(model=[f"{family}{depth}" for family in ("plain", "resnet") for depth in DEPTHS],
                 seed=[0])
