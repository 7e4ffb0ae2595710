"""ResNet-50 v1.5 on ImageNet with a modern recipe (Goyal et al. 2017; torchvision's reference).

Not the paper's recipe: linear warm-up (5 epochs) + cosine decay over 90 epochs, lr 0.1 × batch/256,
Inception-style random-resized crops, label smoothing 0.1, no weight decay on BN and biases, bf16 on
accelerators.
"""

from resnet_jax.train import config_common
from resnet_jax.train.config import base_config

BATCH = 1024
EPOCH = config_common.IMAGENET_TRAIN_EXAMPLES // BATCH


def get_config():
  c = base_config()
  c.model = "resnet50"
  c.dataset = "imagenet2012"
  c.train_augment = "inception"
  c.eval_method = "center"
  c.precision = "auto"  # bf16 on GPU/TPU, fp32 on CPU (where XLA's bf16 is the slower one)
  c.global_batch_size = BATCH
  c.num_train_steps = 90 * EPOCH
  c.learning_rate = 0.1
  c.lr_reference_batch = 256
  c.weight_decay = 5e-5
  c.weight_decay_on_norm_and_bias = False
  c.schedule = "warmup_cosine"
  c.warmup_steps = 5 * EPOCH
  c.label_smoothing = 0.1
  c.model_overrides.zero_init_last_bn = True
  c.log_every_steps = 100
  c.eval_every_steps = 5 * EPOCH
  c.checkpoint_every_steps = EPOCH
  return c
