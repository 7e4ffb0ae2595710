"""ResNet-56 on CIFAR-10 with the paper's recipe (§4.2, Table 6; Fig. 6).

6n+2 = 56 layers (n = 9 blocks per stage, 16-32-64 filters), option A shortcuts (identity, zero-
padded where the width doubles; the registry's default for the CIFAR nets). Batch 128 on all 50k
training images, tested on the 10k test images (':holdout': a 45k/5k train/validation split), SGD
momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k;
4-pixel pad + 32x32 crop + flip.
"""

from resnet_jax.train import config_common
from resnet_jax.train.config import base_config


def get_config(split="test"):
  c = base_config()
  c.model = "resnet56"
  # Table 6's data: all 50k training images, errors on the 10k test images; the argument
  # 'holdout' (--config=FILE:holdout) trains on 45k and validates on 5k, as the paper chose its
  # schedule.
  c.dataset = "cifar10"
  c.train_split, c.eval_split = config_common.cifar10_splits(split)
  c.train_augment = "cifar"  # 4-pixel pad, random 32x32 crop, horizontal flip
  c.global_batch_size = 128
  c.num_train_steps = 64_000
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = "piecewise"
  c.lr_boundaries = (32_000, 48_000)  # lr / 10 at each
  c.log_every_steps = 100
  c.eval_every_steps = 2_000
  c.checkpoint_every_steps = 2_000
  return c
