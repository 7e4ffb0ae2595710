"""ResNet-50-D with the Bag of Tricks refinements (He et al. 2019, §3-§5) on ImageNet.

Batch 1024 at lr 0.1 x 1024/256 = 0.4 with a 5-epoch linear warm-up and cosine decay, Nesterov SGD,
weight decay 1e-4 on kernels only, zero-initialised last BN of each block, label smoothing 0.1 and
mixup (alpha 0.2 on every batch); 200 epochs, since the paper lengthens its 120-epoch schedule to
200 when it adds mixup (§5.4). Random-resized crops and flips; the paper's extra HSV jitter and PCA
lighting are not part of the 'inception' transform. bf16 on accelerators ('auto').
"""

from resnet_jax.train import config_common
from resnet_jax.train.config import base_config

# Published top-1: 79.15 % (He et al. 2019, "Bag of Tricks for Image Classification with CNNs", Table 6: ResNet-50-D + cosine + label smoothing + mixup, no distillation).
PUBLISHED_TOP1 = 79.15
BATCH = 1024
EPOCH = config_common.IMAGENET_TRAIN_EXAMPLES // BATCH


def get_config():
  c = base_config()
  c.model = "resnet50d"
  c.model_overrides.zero_init_last_bn = True
  c.dataset = "imagenet2012"
  c.train_augment = "inception"
  c.eval_method = "center"
  c.precision = "auto"
  c.global_batch_size = BATCH
  c.num_train_steps = 200 * EPOCH
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.lr_reference_batch = 256
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 1e-4
  c.weight_decay_on_norm_and_bias = False
  c.schedule = "warmup_cosine"
  c.warmup_steps = 5 * EPOCH
  c.label_smoothing = 0.1
  c.mixup_alpha = 0.2
  c.log_every_steps = 100
  c.eval_every_steps = 5 * EPOCH
  c.checkpoint_every_steps = EPOCH
  return c
