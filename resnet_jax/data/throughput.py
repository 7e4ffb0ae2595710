"""Input-pipeline throughput on real JPEGs: `python -m resnet_jax.data.throughput`.

Writes a few hundred JPEG photographs (random crops/resizes of scikit-learn's china and
flower sample photos, 300-500 px) into a temporary image folder, then times the
ImageNet-style pipelines end to end (read + decode + augment + batch):
train `paper` at 224 and eval `center` / `ten_crop` (256 -> 224). Reports images/s and
images/s per CPU core available to this process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--num_batches", type=int, default=8)
  args = parser.parse_args(argv)

  from resnet_jax.data import pipeline

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  common = dict(
    global_batch_size=args.batch_size,
    data_dir=None,
    process_index=0,
    process_count=1,
    local_device_count=1,
  )
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = write_photo_folder(tmp, args.num_images)
    common["data_dir"] = root
    rate = _time(
      pipeline.train_batches("image_folder", seed=0, augment="paper", **common),
      args.num_batches,
      args.batch_size,
    )
    rows.append(("train paper 224 (256-480 resize, crop, flip, PCA)", rate))
    for method in ("center", "ten_crop"):
      # The eval split has num_images examples: keep to batches that exist.
      n = min(args.num_batches, args.num_images // args.batch_size - 1)
      rate = _time(
        pipeline.eval_batches("image_folder", method=method, **common), n, args.batch_size
      )
      rows.append((f"eval {method} 256->224", rate))
  print(
    f"{args.num_images} JPEGs (300-500 px shorter side), batch {args.batch_size}, "
    f"{cores} CPU core(s) available"
  )
  print(f"{'pipeline':<52}{'images/s':>10}{'per core':>10}")
  for name, rate in rows:
    print(f"{name:<52}{rate:>10.1f}{rate / cores:>10.1f}")
  return rows


if __name__ == "__main__":
  main()
