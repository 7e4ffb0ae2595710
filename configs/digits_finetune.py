"""Fine-tune an imported ImageNet ResNet-18 on the bundled handwritten digits (issue 9).

First convert torchvision weights, then start from them:

  resnet-jax convert --from=torchvision --model=resnet18 --src=resnet18.pth --workdir=/tmp/r18
  resnet-jax train --config=configs/digits_finetune.py --config.init_from=/tmp/r18 --workdir=...

``init_from`` copies every parameter and BN statistic whose name and shape match; the 1000-way
ImageNet head is replaced by a freshly initialised 10-way one (logged).  Digits are 28x28x1: the
imported RGB stem kernel (7, 7, 3, 64) is summed over its input channels to (7, 7, 1, 64) -- exactly
the response to the grey image replicated into three channels -- so no data-pipeline change is
needed.  At 28 px the ImageNet stem leaves a 7x7 map after the max-pool and 1x1 after stage 4; that
is small but trains, and it keeps the run to minutes on a CPU (set ``image_size`` for larger input).
Without ``init_from`` this trains the same network from scratch (the baseline to compare with).
"""

from resnet_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model = "resnet18"
  c.dataset = "digits"
  c.init_from = ""  # set on the command line: the --workdir of `resnet-jax convert`.
  c.global_batch_size = 64
  c.num_train_steps = 200  # 3.2 epochs of 4,000 images
  c.learning_rate = 0.01  # fine-tuning: 10x below the from-scratch rate
  c.schedule = "warmup_cosine"
  c.warmup_steps = 20
  c.weight_decay = 1e-4
  c.log_every_steps = 25
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  return c
