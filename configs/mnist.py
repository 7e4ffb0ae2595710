"""A CIFAR-style ResNet-20 on the full MNIST (tfds 'mnist', downloaded when a network is there)."""

from resnet_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model = "resnet20"
  c.dataset = "mnist"
  c.global_batch_size = 128
  c.num_train_steps = 5_000  # about 10.7 epochs of 60k images
  c.learning_rate = 0.1
  c.schedule = "warmup_cosine"
  c.warmup_steps = 200
  c.weight_decay = 1e-4
  c.log_every_steps = 100
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  return c
