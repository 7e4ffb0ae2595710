"""A ResNet-20-shaped net a few channels wide on the bundled digits: seconds per run, for tests."""

from resnet_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model = "resnet20"
  c.model_overrides.stem_width = 4
  c.model_overrides.stage_widths = (4, 8, 8)
  c.model_overrides.stage_sizes = (1, 1, 1)
  c.dataset = "digits"
  c.global_batch_size = 16
  c.eval_batch_size = 200  # the 1,000 test digits in 5 batches
  c.num_train_steps = 6
  c.learning_rate = 0.05
  c.schedule = "constant"  # independent of num_train_steps, so runs of any length agree
  c.log_every_steps = 1
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 3
  c.keep_checkpoints = 10
  c.async_checkpoints = False
  c.plot_curves = False  # matplotlib is a visible share of a run this short; two tests turn it on
  return c
