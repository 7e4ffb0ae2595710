"""What several experiment files in ``configs/`` share: dataset facts and the paper's CIFAR splits.

Each file in ``configs/`` is the record of its experiment and chooses its own values; only what must
be the same across a family of files lives here. The keys themselves are documented once, in
:mod:`resnet_jax.train.config`.
"""

from __future__ import annotations

# ILSVRC-2012's training images: an ImageNet epoch is IMAGENET_TRAIN_EXAMPLES // batch steps.
IMAGENET_TRAIN_EXAMPLES = 1_281_167

# The CIFAR-10 configs' argument (``--config=configs/cifar10_resnet110.py:holdout``) -> (train_split,
# eval_split). Table 6 (§4.2) reports test error of nets trained on all 50k training images: 'test',
# the default. The paper chose its schedule on a 45k/5k train/validation split: 'holdout' (the 10k
# test images stay unseen).
CIFAR10_SPLITS = {
  "test": ("train", "test"),
  "holdout": ("train[:45000]", "train[45000:]"),
}


def cifar10_splits(split: str) -> tuple[str, str]:
  """(train_split, eval_split) of a CIFAR-10 config's argument; see :data:`CIFAR10_SPLITS`."""
  if split not in CIFAR10_SPLITS:
    raise ValueError(
      f"config argument {split!r}: a CIFAR-10 config takes {' or '.join(CIFAR10_SPLITS)} "
      "(e.g. --config=configs/cifar10_resnet20.py:holdout)"
    )
  return CIFAR10_SPLITS[split]
