"""Paper §4.2 / Fig. 6: plain vs residual nets at 20, 32, 44 and 56 layers on CIFAR-10.

Plain nets get worse with depth (the degradation problem); residual nets get better. Each member
uses the paper-recipe config of its model (configs/cifar10_<model>.py).
  resnet-jax sweep launch/sweeps/degradation.py --workdir=runs/degradation
  resnet-jax sweep launch/sweeps/degradation.py --workdir=gs://BUCKET/degradation \
      --emit=tpu --launcher_arg=--name=my-tpu --launcher_arg=--zone=us-central2-b
"""

from resnet_jax.sweep import product

DEPTHS = (20, 32, 44, 56)


def get_sweep():
  # 8 members, workdirs config=cifar10_plain20,seed=0 ... config=cifar10_resnet56,seed=0
  return product(
    config=[
      f"configs/cifar10_{family}{depth}.py" for family in ("plain", "resnet") for depth in DEPTHS
    ],
    seed=[0],
  )
