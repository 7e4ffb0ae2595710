"""Random erasing (resnet_jax.data.random_erasing) against timm's semantics, by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from resnet_jax.data import random_erasing as re_

H, W, C = 64, 48, 3


def _image(seed=0):
  return tf.constant(np.random.default_rng(seed).normal(size=(H, W, C)).astype(np.float32) + 10)


def _erased(image, out):
  """bool [H, W]: the pixels that changed (the input is ~10, the noise ~N(0, 1))."""
  return np.any(np.asarray(out) != np.asarray(image), axis=-1)


def test_probability_zero_is_the_identity():
  image = _image()
  for seed in range(5):
    np.testing.assert_array_equal(re_.random_erase(image, [seed, 0], 0.0), image)


def test_probability_one_erases_one_box_of_the_drawn_size():
  image = _image()
  fractions = []
  for seed in range(40):
    out = re_.random_erase(image, [seed, 1], 1.0)
    erased = _erased(image, out)
    rows, cols = np.nonzero(erased)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert erased.sum() == height * width  # one full rectangle
    # The drawn area lies in [0.02, 1/3] of the image; h and w are each rounded from it, which
    # moves h * w by at most (h + w) / 2 + 1/4.
    slack = (height + width) / 2 + 0.25
    assert 0.02 * H * W - slack <= height * width <= H * W / 3 + slack
    # The drawn aspect ratio lies in [0.3, 1/0.3]; rounding moves each side by at most 1/2.
    assert (height + 0.5) / (width - 0.5) >= 0.3 and (height - 0.5) / (width + 0.5) <= 1 / 0.3
    fractions.append(height * width / (H * W))
  assert min(fractions) < 0.1 and max(fractions) > 0.2  # the range is used, not one size


def test_box_is_placed_inside_the_image_as_drawn():
  for seed in range(40):
    box = re_.draw_box([seed, 2], H, W, 1.0)
    assert bool(box.erase)
    top, left, height, width = (int(v) for v in (box.top, box.left, box.height, box.width))
    assert 0 < height < H and 0 < width < W
    assert 0 <= top <= H - height and 0 <= left <= W - width


def test_erasing_probability_holds():
  n = 600
  hits = sum(bool(re_.draw_box([seed, 3], H, W, 0.25).erase) for seed in range(n))
  assert abs(hits / n - 0.25) <= 4 * math.sqrt(0.25 * 0.75 / n)


def test_same_seed_same_result_different_seed_different():
  image = _image()
  first = re_.random_erase(image, [5, 5], 1.0).numpy()
  np.testing.assert_array_equal(first, re_.random_erase(image, tf.constant([5, 5], tf.int64), 1.0))
  assert not np.array_equal(first, re_.random_erase(image, [6, 5], 1.0).numpy())


def test_pixel_mode_fills_with_standard_normal_noise_per_pixel():
  image = _image()
  out = re_.random_erase(image, [0, 4], 1.0, mode="pixel", min_area=0.3, max_area=0.33).numpy()
  noise = out[_erased(image, out)]
  assert noise.size > 500 * C
  assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1.0) < 0.1
  assert len(np.unique(noise[:, 0])) == len(noise)  # differs pixel to pixel


def test_rand_and_const_modes():
  image = _image()
  out = re_.random_erase(image, [0, 4], 1.0, mode="rand").numpy()
  patch = out[_erased(image, out)]
  assert np.all(patch == patch[0])  # one colour per channel
  out = re_.random_erase(image, [0, 4], 1.0, mode="const").numpy()
  assert np.all(out[_erased(image, out)] == 0.0)


def test_keeps_dtype_and_shape_in_tf_data():
  images = tf.stack([_image(i) for i in range(3)])
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
  ds = ds.map(lambda i, x: re_.random_erase(x, tf.stack([i, tf.constant(9, tf.int64)]), 0.5))
  for i, out in enumerate(ds):
    assert out.dtype == tf.float32 and out.shape == (H, W, C)
    np.testing.assert_array_equal(out, re_.random_erase(images[i], [i, 9], 0.5))


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="mode"):
    re_.random_erase(_image(), [0, 0], 0.5, mode="noise")
  with pytest.raises(ValueError, match="probability"):
    re_.random_erase(_image(), [0, 0], 1.5)
  with pytest.raises(ValueError, match="float"):
    re_.random_erase(tf.zeros([8, 8, 3], tf.uint8), [0, 0], 0.5)
