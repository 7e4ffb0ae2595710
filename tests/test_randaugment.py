"""RandAugment (resnet_jax.data.randaugment): timm's spec strings, op choice, magnitudes and ops."""

import numpy as np
import pytest
import tensorflow as tf

from resnet_jax.data import randaugment as ra


def _image(shape, seed=0, dtype=np.uint8):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


def _seed(i):
  return tf.constant([i, 7], tf.int64)


def test_parse_reads_timm_strings():
  spec = ra.parse("rand-m7-mstd0.5-inc1")
  assert spec == ra.RandAugmentSpec(magnitude=7, magnitude_std=0.5, increasing=True)
  assert spec.num_layers == 2 and spec.prob == 0.5 and spec.magnitude_max == 10
  assert spec.ops == ra.RAND_INCREASING_OPS
  spec = ra.parse("rand-n3-mmax15-p0.7-m9-inc0-mstd101")
  assert spec == ra.RandAugmentSpec(3, 9, 101.0, 15, 0.7, False)
  assert spec.ops == ra.RAND_OPS
  assert ra.parse("rand") == ra.RandAugmentSpec()


@pytest.mark.parametrize(
  "spec",
  ["", "rnd-m9", "rand-m", "rand-x9", "rand-m9.5", "rand-p1.5", "rand-inc2", "rand--m9",
   "rand-m9-m7", "rand-tweights", "rand-mstd-1", "m9-rand", 7],
)  # fmt: skip
def test_malformed_strings_raise_one_line(spec):
  with pytest.raises(ValueError) as error:
    ra.parse(spec)
  message = str(error.value)
  assert "\n" not in message and repr(ra.EXAMPLE) in message and "RandAugment" in message


def test_same_seed_same_image_different_seed_different_image():
  spec = ra.parse("rand-m9-n2-p1.0-mstd0.5-inc1")
  image = _image((32, 32, 3))
  first = ra.randaugment(image, _seed(3), spec).numpy()
  np.testing.assert_array_equal(first, ra.randaugment(image, _seed(3), spec).numpy())
  outputs = {ra.randaugment(image, _seed(i), spec).numpy().tobytes() for i in range(6)}
  assert len(outputs) >= 5


def test_every_op_can_be_drawn_uniformly():
  for spec_string, ops in (
    ("rand-n3000-inc1", ra.RAND_INCREASING_OPS),
    ("rand-n3000", ra.RAND_OPS),
  ):
    draws = ra.draw_layers(_seed(0), ra.parse(spec_string))
    counts = np.bincount(draws.op_index.numpy(), minlength=len(ops))
    assert len(counts) == len(ops) == 15 and counts.min() > 0
    p = 1 / 15
    assert np.all(np.abs(counts / 3000 - p) <= 4 * np.sqrt(p * (1 - p) / 3000))


def test_op_selection_varies_per_seed():
  spec = ra.parse("rand-n2-inc1")
  chosen = {tuple(ra.draw_layers(_seed(i), spec).op_index.numpy()) for i in range(40)}
  assert len(chosen) > 20


def test_layer_probability_and_sign():
  draws = ra.draw_layers(_seed(1), ra.parse("rand-n4000-p0.3"))
  applied = draws.applied.numpy().mean()
  assert abs(applied - 0.3) <= 4 * np.sqrt(0.3 * 0.7 / 4000)
  assert abs(draws.negate.numpy().mean() - 0.5) <= 4 * np.sqrt(0.25 / 4000)


def test_magnitude_noise_is_gaussian_with_mstd():
  magnitude = ra.draw_layers(_seed(2), ra.parse("rand-m7-mstd0.5-n4000")).magnitude.numpy()
  assert abs(magnitude.mean() - 7.0) < 0.05 and abs(magnitude.std() - 0.5) < 0.03
  fixed = ra.draw_layers(_seed(2), ra.parse("rand-m7-n50")).magnitude.numpy()
  np.testing.assert_array_equal(fixed, 7.0)


def test_magnitude_noise_is_clipped_to_zero_and_mmax():
  # m9, std 2, clip at 10: P(above 10) = P(z > 0.5) = 0.3085; m1: P(below 0) = P(z < -0.5).
  high = ra.draw_layers(_seed(3), ra.parse("rand-m9-mstd2-n4000")).magnitude.numpy()
  assert high.max() == 10.0 and abs((high == 10.0).mean() - 0.3085) < 0.03
  low = ra.draw_layers(_seed(3), ra.parse("rand-m1-mstd2-n4000")).magnitude.numpy()
  assert low.min() == 0.0 and abs((low == 0.0).mean() - 0.3085) < 0.03
  wide = ra.draw_layers(_seed(3), ra.parse("rand-m9-mstd2-mmax15-n4000")).magnitude.numpy()
  assert wide.max() > 10.0 and wide.max() <= 15.0
  # timm: m above 10 without mmax is clipped to 10.
  assert set(ra.draw_layers(_seed(3), ra.parse("rand-m15-n8")).magnitude.numpy()) == {10.0}


def test_huge_mstd_draws_uniformly_up_to_m():
  magnitude = ra.draw_layers(_seed(4), ra.parse("rand-m8-mstd101-n4000")).magnitude.numpy()
  assert magnitude.min() >= 0.0 and magnitude.max() <= 8.0
  assert abs(magnitude.mean() - 4.0) < 0.15


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_every_op_keeps_dtype_and_shape(shape, dtype):
  image = _image(shape, dtype=dtype)
  for name in ra.OPS:
    for negate in (False, True):
      out = ra.apply_op(image, name, 7.0, negate=negate)
      assert out.dtype == tf.as_dtype(dtype) and out.shape == shape, name
      values = out.numpy()
      assert values.min() >= 0 and values.max() <= 255, name
  out = ra.randaugment(image, _seed(0), "rand-m9-n4-p1.0-inc1")
  assert out.dtype == tf.as_dtype(dtype) and out.shape == shape


def test_op_arguments_follow_timm_levels():
  def arg(name, m, negate=False):
    return float(ra.op_argument(name, m, negate))

  assert arg("Rotate", 5) == pytest.approx(15.0) and arg("Rotate", 5, True) == pytest.approx(-15.0)
  assert arg("ShearX", 10, True) == pytest.approx(-0.3)
  assert arg("TranslateYRel", 10) == pytest.approx(0.45)
  assert arg("PosterizeIncreasing", 5) == 2.0 and arg("Posterize", 5) == 2.0
  assert arg("PosterizeIncreasing", 0) == 4.0 and arg("PosterizeIncreasing", 10) == 0.0
  assert arg("SolarizeIncreasing", 5) == 128.0 and arg("Solarize", 3) == 76.0
  assert arg("SolarizeAdd", 5) == 55.0
  assert arg("ColorIncreasing", 5) == pytest.approx(1.45)
  assert arg("ContrastIncreasing", 5, True) == pytest.approx(0.55)
  assert arg("BrightnessIncreasing", 15, True) == pytest.approx(0.1)  # kept >= 0.1
  assert arg("Sharpness", 5) == pytest.approx(1.0)


def test_pixel_ops_by_hand():
  image = np.array([[0, 63, 100, 127], [128, 200, 250, 255]], np.uint8)[:, :, None]

  def op(name, m):
    return ra.apply_op(image, name, m).numpy()[:, :, 0].tolist()

  # threshold 128: values at or above it are inverted.
  assert op("SolarizeIncreasing", 5) == [[0, 63, 100, 127], [127, 55, 5, 0]]
  # keep 2 bits: multiples of 64.
  assert op("PosterizeIncreasing", 5) == [[0, 0, 64, 64], [128, 192, 192, 192]]
  # +55 below 128, capped at 255.
  assert op("SolarizeAdd", 5) == [[55, 118, 155, 182], [128, 200, 250, 255]]
  assert op("Invert", 0) == [[255, 192, 155, 128], [127, 55, 5, 0]]
  # factors 1.45 and 0.55, clipped to 255 and truncated as PIL does.
  assert op("BrightnessIncreasing", 5) == [[0, 91, 145, 184], [185, 255, 255, 255]]
  assert ra.apply_op(image, "BrightnessIncreasing", 5, True).numpy()[1, :, 0].tolist() == [
    70, 110, 137, 140,
  ]  # fmt: skip


def test_geometric_ops_by_hand():
  image = _image((20, 20, 3), seed=5)
  # magnitude 30 is 90 degrees: PIL rotates counter-clockwise about the centre.
  np.testing.assert_array_equal(ra.apply_op(image, "Rotate", 30.0).numpy(), np.rot90(image))
  # 0.45 of 20 px = 9 px: the content moves left and the uncovered pixels get the fill.
  moved = ra.apply_op(image, "TranslateXRel", 10.0, fill=(1, 2, 3)).numpy()
  np.testing.assert_array_equal(moved[:, :11], image[:, 9:])
  np.testing.assert_array_equal(moved[:, 11:], np.broadcast_to([1, 2, 3], (20, 9, 3)))
  down = ra.apply_op(image, "TranslateYRel", 10.0, negate=True).numpy()
  np.testing.assert_array_equal(down[9:], image[:11])
  assert np.all(down[:9] == 128)


def test_uint8_pixel_ops_equal_pil():
  pil_image = pytest.importorskip("PIL.Image")
  ops = pytest.importorskip("PIL.ImageOps")
  enhance = pytest.importorskip("PIL.ImageEnhance")
  image = (_image((24, 24, 3), seed=1) // 3 + 40).astype(np.uint8)  # a range to stretch
  pil = pil_image.fromarray(image)
  expected = {
    "AutoContrast": ops.autocontrast(pil),
    "Equalize": ops.equalize(pil),
    "ColorIncreasing": enhance.Color(pil).enhance(1.63),
    "ContrastIncreasing": enhance.Contrast(pil).enhance(1.63),
    "BrightnessIncreasing": enhance.Brightness(pil).enhance(1.63),
    "SharpnessIncreasing": enhance.Sharpness(pil).enhance(1.63),
  }
  for name, reference in expected.items():
    np.testing.assert_array_equal(ra.apply_op(image, name, 7.0).numpy(), np.asarray(reference))


def test_runs_in_tf_data_with_per_example_seeds():
  spec = ra.parse("rand-m7-mstd0.5-inc1")
  images = tf.constant(np.stack([_image((28, 28, 1), seed=i) for i in range(4)]))
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
  ds = ds.map(lambda i, x: ra.randaugment(x, tf.stack([i, tf.constant(11, tf.int64)]), spec))
  first = [x.numpy() for x in ds]
  again = [x.numpy() for x in ds]
  for a, b, i in zip(first, again, range(4)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, ra.randaugment(images[i], [i, 11], spec).numpy())


def test_bad_images_and_ops_are_refused():
  with pytest.raises(ValueError, match="1 or 3"):
    ra.randaugment(np.zeros((8, 8, 2), np.uint8), _seed(0), "rand")
  with pytest.raises(ValueError, match="unknown RandAugment op"):
    ra.apply_op(np.zeros((8, 8, 3), np.uint8), "Cutout", 5)
  with pytest.raises(ValueError, match="fill"):
    ra.apply_op(np.zeros((8, 8, 1), np.uint8), "Rotate", 5, fill=(1, 2, 3))
