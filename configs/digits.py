"""The default experiment: a CIFAR-style ResNet-20 (paper §4.2) on the bundled handwritten digits.

Runs offline in a few minutes on a 2-core CPU (`make train`); the recipe lives in the package
(`resnet_jax.train.config.digits`) so that analyses and sweeps find it from an installed wheel.
"""

from resnet_jax.train.config import digits


def get_config():
  return digits()
