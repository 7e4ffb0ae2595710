"""What several experiment files in ``configs/`` share: dataset facts and the paper's CIFAR split.

Each file in ``configs/`` is the record of its experiment and chooses its own values; only what must
be the same across a family of files lives here. The keys themselves are documented once, in
:mod:`resnet_jax.train.config`.
"""

from __future__ import annotations

import ml_collections

# ILSVRC-2012's training images: an ImageNet epoch is IMAGENET_TRAIN_EXAMPLES // batch steps.
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def cifar10_table6_data(c: ml_collections.ConfigDict) -> None:
  """The data every Table 6 net is compared on (paper §4.2): CIFAR-10's 50k training images split
  into 45k to train on and the last 5k to validate on (the 10k test images stay unseen)."""
  c.dataset = "cifar10"
  c.train_split = "train[:45000]"
  c.eval_split = "train[45000:]"
