"""Random erasing (Zhong et al. 2017) with timm's semantics, in TensorFlow ops on one example.

Applied to a NORMALISED float image [H, W, C] (after mean/std), as timm applies it. With
probability ``probability`` one box is erased: up to 10 attempts each draw a target area
uniformly in [min_area, max_area] of the image and a log aspect ratio uniformly in
[log min_aspect, log max_aspect]; h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect));
the first attempt with h < H and w < W is placed uniformly at random (no erasing when none fits).
The box is filled according to ``mode``:
  pixel  per-pixel standard-normal noise (timm's ``--remode pixel``, the ResNet strikes back one)
  rand   one standard-normal value per channel
  const  zeros (the normalised mean)
All randomness is stateless in ``seed`` ([2] int32/int64), so a per-example seed fixes the result.
timm's ``count`` (several boxes) and ``num_splits`` are not supported: one box, every example.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

MODES = ("pixel", "rand", "const")
ATTEMPTS = 10


class EraseBox(NamedTuple):
  """Where one image is erased; ``erase`` is false when the draw or every attempt failed."""

  erase: tf.Tensor  # bool scalar
  top: tf.Tensor  # int32 scalar
  left: tf.Tensor  # int32 scalar
  height: tf.Tensor  # int32 scalar
  width: tf.Tensor  # int32 scalar


def _seed64(seed) -> tf.Tensor:
  # TF's stateless streams differ between int32 and int64 seeds: one dtype makes a seed mean one
  # thing however the caller built it.
  return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def draw_box(
  seed,
  image_height,
  image_width,
  probability: float,
  min_area: float = 0.02,
  max_area: float = 1 / 3,
  min_aspect: float = 0.3,
  max_aspect: float | None = None,
) -> EraseBox:
  """Draws the box random erasing would erase in an image of the given size."""
  max_aspect = max_aspect or 1.0 / min_aspect
  seeds = tf.random.experimental.stateless_split(_seed64(seed), 5)
  img_h = tf.cast(image_height, tf.float32)
  img_w = tf.cast(image_width, tf.float32)
  # timm skips erasing when random() > probability.
  erase = tf.random.stateless_uniform([], seeds[0]) <= probability
  area = img_h * img_w * tf.random.stateless_uniform([ATTEMPTS], seeds[1], min_area, max_area)
  log_aspect = tf.random.stateless_uniform(
    [ATTEMPTS], seeds[2], math.log(min_aspect), math.log(max_aspect)
  )
  aspect = tf.exp(log_aspect)
  # tf.round and Python's round both round half to even.
  heights = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  widths = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (heights < tf.cast(image_height, tf.int32)) & (widths < tf.cast(image_width, tf.int32))
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  height, width = heights[first], widths[first]
  # A uniform integer in [0, size - box] inclusive, as random.randint.
  top = _uniform_int(seeds[3], tf.cast(image_height, tf.int32) - height)
  left = _uniform_int(seeds[4], tf.cast(image_width, tf.int32) - width)
  return EraseBox(erase & tf.reduce_any(fits), top, left, height, width)


def _uniform_int(seed, high):
  """Uniform integer in [0, high] (inclusive), high a scalar int32 tensor >= 0."""
  u = tf.random.stateless_uniform([], seed)
  return tf.minimum(tf.cast(tf.floor(u * tf.cast(high + 1, tf.float32)), tf.int32), high)


def random_erase(
  image,
  seed,
  probability: float,
  mode: str = "pixel",
  min_area: float = 0.02,
  max_area: float = 1 / 3,
  min_aspect: float = 0.3,
  max_aspect: float | None = None,
) -> tf.Tensor:
  """Random erasing on one normalised float image [H, W, C]; same dtype and shape out.

  Args:
    image: normalised float image [H, W, C].
    seed: stateless seed, int32/int64 [2]; derive it per example.
    probability: chance that a box is erased (0 leaves every image unchanged).
    mode: "pixel", "rand" or "const" (see the module docstring).
    min_area, max_area: range of the erased fraction of the image area.
    min_aspect, max_aspect: range of the box's aspect ratio h / w (max defaults to 1 / min).
  """
  if mode not in MODES:
    raise ValueError(f"random erasing mode must be one of {', '.join(MODES)}, got {mode!r}")
  if not 0.0 <= probability <= 1.0:
    raise ValueError(f"random erasing probability must be in [0, 1], got {probability}")
  image = tf.convert_to_tensor(image)
  if not image.dtype.is_floating:
    raise ValueError(f"random erasing expects a normalised float image, got {image.dtype.name}")
  shape = tf.shape(image)
  noise_seed, box_seed = tf.unstack(tf.random.experimental.stateless_split(_seed64(seed), 2))
  box = draw_box(
    box_seed, shape[0], shape[1], probability, min_area, max_area, min_aspect, max_aspect
  )
  rows = tf.range(shape[0])[:, None, None]
  cols = tf.range(shape[1])[None, :, None]
  inside = (
    box.erase
    & (rows >= box.top)
    & (rows < box.top + box.height)
    & (cols >= box.left)
    & (cols < box.left + box.width)
  )
  if mode == "pixel":
    fill = tf.random.stateless_normal(shape, noise_seed, dtype=image.dtype)
  elif mode == "rand":
    fill = tf.random.stateless_normal([1, 1, shape[2]], noise_seed, dtype=image.dtype)
  else:
    fill = tf.zeros([], image.dtype)
  return tf.where(inside, fill, image)
