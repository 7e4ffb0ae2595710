"""Plain-34 on ImageNet with the paper's recipe (§3.4; Table 2, Fig. 4 left), v1 stride placement.

The plain baseline of the degradation experiment on ImageNet: the 34-layer net of Table 1 with
basic blocks and no shortcuts (BN after every convolution, before ReLU). Batch 256, SGD momentum 0.9,
weight decay 1e-4, lr 0.1 divided by 10 when the validation error plateaus, 60×10⁴ iterations; scale
augmentation (shorter side in [256, 480], 224 crop, flip, PCA lighting); 10-crop testing, as Table 2
reports.
"""

from resnet_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model = "plain34"
  c.model_overrides.stride_on = "1x1"  # v1 (a basic block strides its first 3x3 either way)
  c.model_overrides.shortcut = "none"  # no shortcuts: the plain net (Table 2)
  c.dataset = "imagenet2012"
  c.train_augment = "paper"  # shorter side in [256, 480], 224 crop, flip, PCA lighting
  c.eval_method = "ten_crop"  # the paper's 10-crop testing
  c.precision = "auto"  # bf16 on GPU/TPU (the paper's is fp32), fp32 on CPU
  c.global_batch_size = 256
  c.num_train_steps = 600_000
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = "plateau"  # lr / 10 when the validation error stops improving
  c.plateau_patience = 3
  c.plateau_min_delta = 1e-3
  c.log_every_steps = 500
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 5_000
  return c
