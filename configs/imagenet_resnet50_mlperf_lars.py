"""ResNet-50 v1.5 with MLPerf Training's large-batch LARS recipe (NVIDIA's reference submission).

Batch 3264 (408 per GPU x 8), LARS at lr 10.5 (trust coefficient 0.001, momentum 0.9, weight decay
5e-5, BN and biases excluded from decay and trust ratio), 2 warm-up epochs, label smoothing 0.1,
random-resized crops and flips, 37 epochs, tested on a 224 centre crop of a 256 resize. MLPerf's
rate decays polynomially (power 2) after the warm-up; optim has no polynomial schedule, so this
config decays with the cosine instead. Not run at scale here.
"""

from resnet_jax.train import config_common
from resnet_jax.train.config import base_config

# Published top-1: 75.9 % (MLPerf Training ResNet-50 quality target; recipe of mlcommons/training_results_v2.0 NVIDIA/benchmarks/resnet/implementations/mxnet/config_DGXA100.sh).
PUBLISHED_TOP1 = 75.9
BATCH = 3264
EPOCH = config_common.IMAGENET_TRAIN_EXAMPLES // BATCH


def get_config():
  c = base_config()
  c.model = "resnet50"
  c.dataset = "imagenet2012"
  c.train_augment = "inception"
  c.eval_method = "center"
  c.precision = "auto"
  c.global_batch_size = BATCH
  c.num_train_steps = 37 * EPOCH
  c.optimizer = "lars"
  c.learning_rate = 10.5
  c.momentum = 0.9
  c.weight_decay = 5e-5
  c.trust_coefficient = 0.001
  c.schedule = "warmup_cosine"
  c.warmup_steps = 2 * EPOCH
  c.label_smoothing = 0.1
  c.log_every_steps = 100
  c.eval_every_steps = 4 * EPOCH
  c.checkpoint_every_steps = EPOCH
  return c
