"""Input-pipeline throughput on real JPEGs: `python benchmarks/throughput.py` (from the checkout).

Writes a few hundred JPEG photographs (random crops/resizes of scikit-learn's china and
flower sample photos, 300-500 px) into a temporary image folder, then times the
ImageNet-style pipelines end to end (read + decode + augment + batch):
train `paper` at 224 and eval `center` / `ten_crop` (256 -> 224). Reports images/s and
images/s per CPU core available to this process.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags

_NUM_IMAGES = flags.DEFINE_integer("num_images", 300, "JPEG photographs written per split")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "images per batch")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 8, "timed batches per pipeline")


def write_photo_folder(root: str, num_images: int = 300, seed: int = 0) -> str:
  import tensorflow as tf
  from sklearn.datasets import load_sample_images

  photos = load_sample_images().images
  names = ("china", "flower")
  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    for name in names:
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
  for i in range(num_images):
    c = i % 2
    p = photos[c]
    h, w = rng.integers(200, p.shape[0]), rng.integers(200, p.shape[1])
    y, x = rng.integers(0, p.shape[0] - h + 1), rng.integers(0, p.shape[1] - w + 1)
    crop = tf.constant(p[y : y + h, x : x + w])
    target = rng.integers(300, 501)
    scale = target / min(h, w)
    crop = tf.image.resize(crop, [int(h * scale), int(w * scale)])
    jpg = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(crop, 0, 255), tf.uint8), quality=90)
    for split in ("train", "test"):
      with open(os.path.join(root, split, names[c], f"{i:04d}.jpg"), "wb") as f:
        f.write(jpg.numpy())
  return root


def _time(iterator, num_batches: int, batch_images: int) -> float:
  next(iterator)  # Warm-up: tracing, thread pools.
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches * batch_images / (time.perf_counter() - start)


def measure(num_images: int, batch_size: int, num_batches: int) -> list[tuple[str, float]]:
  """Times the pipelines, prints the table; returns (pipeline, images/s) rows."""
  from resnet_jax.data import pipeline

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  common = dict(
    global_batch_size=batch_size,
    data_dir=None,
    process_index=0,
    process_count=1,
    local_device_count=1,
  )
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = write_photo_folder(tmp, num_images)
    common["data_dir"] = root
    rate = _time(
      pipeline.train_batches("image_folder", seed=0, augment="paper", **common),
      num_batches,
      batch_size,
    )
    rows.append(("train paper 224 (256-480 resize, crop, flip, PCA)", rate))
    for method in ("center", "ten_crop"):
      # The eval split has num_images examples: keep to batches that exist.
      n = min(num_batches, num_images // batch_size - 1)
      rate = _time(pipeline.eval_batches("image_folder", method=method, **common), n, batch_size)
      rows.append((f"eval {method} 256->224", rate))
  print(
    f"{num_images} JPEGs (300-500 px shorter side), batch {batch_size}, "
    f"{cores} CPU core(s) available"
  )
  print(f"{'pipeline':<52}{'images/s':>10}{'per core':>10}")
  for name, rate in rows:
    print(f"{name:<52}{rate:>10.1f}{rate / cores:>10.1f}")
  return rows


def main(argv) -> None:
  del argv
  measure(_NUM_IMAGES.value, _BATCH_SIZE.value, _NUM_BATCHES.value)


if __name__ == "__main__":
  app.run(main)
