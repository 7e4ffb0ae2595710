"""Paper Table 3: ImageNet ResNet-34 with projection shortcut options A, B and C.

``zipped`` pairs each option with its label; ``product`` crosses that with the seeds.
  python -m resnet_jax.sweep launch/sweeps/shortcuts.py --workdir=gs://BUCKET/shortcuts --emit=tpu \
      --launcher-arg=--name=my-v4-32 --launcher-arg=--zone=us-central2-b
"""
from resnet_jax.sweep import product, zipped

CONFIG = "configs/imagenet.py"


def get_sweep():
  # model=resnet34,model_overrides.shortcut=A,seed=0  ... =B ...  ... =C ...
  return product(zipped(model=["resnet34"] * 3, **{"model_overrides.shortcut": ["A", "B", "C"]}),
                 seed=[0])
