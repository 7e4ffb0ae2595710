"""ResNet-50 with ResNet strikes back's procedure A1: 600 epochs at 224 px.

The recipe (LAMB, BCE, mixup/cutmix, RandAugment, stochastic depth...) is
`resnet_jax.train.config.resnet_strikes_back`, shared by A1, A2 and A3. Repeated augmentation is
not implemented. Not run at scale here.
"""

from resnet_jax.train.config import resnet_strikes_back

# Published top-1: 80.4 % (Wightman, Touvron & Jégou 2021, "ResNet strikes back: An improved training procedure in timm", Table 1, procedure A1, ImageNet-val at 224 px).
PUBLISHED_TOP1 = 80.4


def get_config():
  return resnet_strikes_back("A1")
