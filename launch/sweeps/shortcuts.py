"""Paper Table 3: ImageNet ResNet-34 with shortcut options A, B and C.

Needs `--config.model_overrides.shortcut` to be accepted by the config (model_overrides is a
ConfigDict of ResNet fields).
  resnet-jax sweep launch/sweeps/shortcuts.py --workdir=gs://BUCKET/shortcuts --emit=tpu \
      --launcher_arg=--name=my-v4-32 --launcher_arg=--zone=us-central2-b
"""

from resnet_jax.sweep import product

CONFIG = "configs/imagenet_resnet34.py"


def get_sweep():
  # model_overrides.shortcut=A,seed=0  ...=B,...  ...=C,...
  return product({"model_overrides.shortcut": ["A", "B", "C"]}, seed=[0])
