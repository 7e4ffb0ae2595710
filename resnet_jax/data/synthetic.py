"""The ``synthetic`` dataset: random batches made in memory, to time the train step without input.

No tf.data, no files, no tfds: one batch of standard-normal images (already "normalised") and
uniform labels per host, in the pipeline's layout ``[local_devices, per_device, ...]``, yielded
again at every step. A trainer that sees ``DatasetSpec.storage == "synthetic"`` puts that batch on
its devices once and reuses it (``train.loop`` does), so a step reads nothing from the host: what
is timed is the step itself, as with flax's ImageNet ``fake_data_benchmark`` configuration or
tf_cnn_benchmarks' synthetic input. Eval batches come from the same generator (all examples
real, ``mask`` all True).

The shape is ImageNet's (224 px, 3 channels, 1000 classes) unless ``image_size`` says otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

NAME = "synthetic"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
CHANNELS = 3
EVAL_BATCHES = 2  # batches in the synthetic eval split (every host the same number)


def host_batch(
  *,
  per_host: int,
  local_device_count: int,
  image_size: int | None = None,
  num_classes: int = NUM_CLASSES,
  seed: int = 0,
  process_index: int = 0,
) -> dict[str, np.ndarray]:
  """One random batch ``{'image': float32 [D, B/D, H, W, 3], 'label': int32 [D, B/D]}``.

  A pure function of its arguments; hosts draw different examples (``process_index`` is part of
  the seed).
  """
  size = image_size or IMAGE_SIZE
  rng = np.random.default_rng([int(seed) & ((1 << 63) - 1), process_index])
  lead = (local_device_count, per_host // local_device_count)
  image = rng.standard_normal((*lead, size, size, CHANNELS), dtype=np.float32)
  label = rng.integers(0, num_classes, lead, dtype=np.int32)
  return {"image": image, "label": label}


def train_batches(**kwargs) -> Iterator[dict[str, np.ndarray]]:
  """Endless: the same :func:`host_batch` object at every step (made once)."""
  return itertools.repeat(host_batch(**kwargs))


def eval_batches(*, num_views: int = 1, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """``EVAL_BATCHES`` batches in the eval layout ``[D, B/D, V, H, W, C]`` with a True mask
  (``num_views``: 10 for ten_crop, else 1)."""
  batch = host_batch(**kwargs)
  image = np.repeat(batch["image"][:, :, None], num_views, axis=2)
  out = {"image": image, "label": batch["label"], "mask": np.ones(batch["label"].shape, bool)}
  return itertools.repeat(out, EVAL_BATCHES)
