"""Plain-110 (no shortcuts; the degradation experiment) on CIFAR-10 with the paper's recipe (§4.2, Table 6; Fig. 6).

6n+2 = 110 layers (n = 18 blocks per stage, 16-32-64 filters), no shortcuts (the plain twin of
ResNet-110). Batch 128 on all 50k training images, tested on the 10k test images (':holdout': a
45k/5k train/validation split), SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and
48k iterations, stop at 64k; 4-pixel pad + 32x32 crop + flip. Warm-up (§4.2): lr 0.01 until the
training error is below 80 % (about 400 iterations), then back to 0.1.
"""

from resnet_jax.train import config_common
from resnet_jax.train.config import base_config


def get_config(split="test"):
  c = base_config()
  c.model = "plain110"
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
  # Warm-up: 0.1 is slightly too large to start converging; 0.01 (0.1 x 0.1) up to the first
  # step whose own training error is below 80 %, with no cap (decided on the device each step).
  c.warmup_lr_scale = 0.1
  c.warmup_until_train_error = 0.8
  c.warmup_max_steps = 0
  c.log_every_steps = 100
  c.eval_every_steps = 2_000
  c.checkpoint_every_steps = 2_000
  return c
