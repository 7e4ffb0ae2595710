"""ResNet-50 with ResNet strikes back's procedure A3: 100 epochs, trained at 160 px, tested at 224.

Wightman, Touvron & Jégou 2021, Table 1. Batch 2048; LAMB (eps 1e-6, timm's) with a 5-epoch linear
warm-up and cosine decay, no decay or trust ratio on BN and biases; binary cross-entropy with targets
thresholded at 0.2 (timm's ``--bce-target-thresh`` for these runs); mixup and cutmix (alpha 1.0),
one of them on every batch, each half of the time; RandAugment; random-resized crops and flips;
zero-initialised last BN of each block; tested at 224 with crop ratio 0.95. A1, A2 and A3 differ in
epochs, lr, weight decay, mixup, label smoothing, RandAugment, stochastic depth and train size.
Repeated augmentation (A1, A2) is not implemented: the pipeline reads each example once per epoch.
Not run at scale here.
"""

from resnet_jax.train import config_common
from resnet_jax.train.config import base_config

# Published top-1: 78.1 % (Wightman, Touvron & Jégou 2021, "ResNet strikes back: An improved training procedure in timm", Table 1, procedure A3, ImageNet-val at 224 px).
PUBLISHED_TOP1 = 78.1
BATCH = 2048
EPOCH = config_common.IMAGENET_TRAIN_EXAMPLES // BATCH


def get_config():
  c = base_config()
  c.model = "resnet50"
  c.model_overrides.zero_init_last_bn = True
  c.model_overrides.drop_path_rate = 0.0  # stochastic depth
  c.dataset = "imagenet2012"
  c.train_augment = "inception"  # random-resized crops and flips
  c.image_size = 160
  c.eval_image_size = 224
  c.eval_crop_ratio = 0.95
  c.precision = "auto"
  c.global_batch_size = BATCH
  c.num_train_steps = 100 * EPOCH
  c.optimizer = "lamb"
  c.learning_rate = 8e-3
  c.weight_decay = 0.02
  c.eps = 1e-6
  c.schedule = "warmup_cosine"
  c.warmup_steps = 5 * EPOCH
  c.loss = "bce"
  c.bce_target_threshold = 0.2
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.1
  c.cutmix_alpha = 1.0
  c.mix_prob = 1.0  # every batch is mixed ...
  c.mix_switch_prob = 0.5  # ... by cutmix half of the time, mixup the other half
  c.randaugment = "rand-m6-mstd0.5-inc1"
  c.log_every_steps = 100
  c.eval_every_steps = 10 * EPOCH
  c.checkpoint_every_steps = EPOCH
  return c
