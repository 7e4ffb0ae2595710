"""ResNet-34 on ImageNet with the paper's recipe (§3.4; Tables 3-4), v1 stride placement."""

from resnet_jax.train.config import imagenet_paper


def get_config():
  return imagenet_paper("resnet34")
