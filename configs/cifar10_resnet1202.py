"""ResNet-1202 on CIFAR-10 with the paper's recipe (§4.2, Table 6; Fig. 6)."""

from resnet_jax.train.config import cifar10_table6


def get_config():
  return cifar10_table6("resnet1202")
