"""RandAugment (Cubuk et al. 2019) with timm's spec strings and op semantics, in TensorFlow ops.

A spec string is dash-separated: ``rand`` then any of, in any order,
  m<int>      magnitude (default 10), on timm's 0..10 scale
  n<int>      number of ops applied in sequence per image (default 2)
  p<float>    probability that each chosen op is applied (default 0.5)
  mstd<float> std of gaussian noise added to the magnitude per op (default 0); above 100 the
              magnitude is drawn uniformly from [0, m] instead
  mmax<int>   upper clip of the noisy magnitude (default 10)
  inc<0|1>    1: timm's "increasing" op set, where severity grows with magnitude (default 0)
e.g. ``rand-m9-mstd0.5-inc1`` (ResNet strikes back A2/A3 use ``rand-m7-mstd0.5-inc1``).

Per image and per layer: one op is drawn uniformly (with replacement) from the set, applied with
probability p at magnitude clip(m + mstd * N(0, 1), 0, mmax); signed ops (rotate, shear, translate,
the increasing enhancements) negate their argument with probability 1/2.

Images are HWC with 1 or 3 channels (static), uint8 or float in 0..255 pixel units, before
normalisation. Ops work on float32; after each op, values are clipped to [0, 255] and, for uint8
input, quantised as PIL quantises (the PIL ops timm uses work on uint8): uint8 results of the
pixel ops equal timm's, those of the geometric ops are within one level away from the border. The output has the input's dtype and shape.
All randomness is stateless: the same seed ([2] int32/int64) gives the same image.

Differences from timm, all deliberate:
- Geometric ops interpolate bilinearly (ImageProjectiveTransformV3 has no bicubic); timm draws
  bilinear or bicubic per op by default.
- ``inc0`` selects the non-increasing set (timm tests ``bool("0")``, which is true).
- A malformed string raises ValueError; timm skips sections without digits and asserts on others.
  The transform-set key ``t`` (weighted choice, 3-Augment) is not supported.
- Near the image border, geometric ops sample the fill differently from PIL.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Callable, NamedTuple, Sequence, Union

import tensorflow as tf

# timm's magnitude scale: level / 10 maps to the op's full argument range.
LEVEL_DENOM = 10.0
EXAMPLE = "rand-m9-mstd0.5-inc1"
# timm's default fill for pixels a geometric op uncovers; timm's own pipelines pass the dataset
# mean in pixels instead, which callers can do through ``fill``.
DEFAULT_FILL = 128.0

RAND_OPS = (
  "AutoContrast",
  "Equalize",
  "Invert",
  "Rotate",
  "Posterize",
  "Solarize",
  "SolarizeAdd",
  "Color",
  "Contrast",
  "Brightness",
  "Sharpness",
  "ShearX",
  "ShearY",
  "TranslateXRel",
  "TranslateYRel",
)
RAND_INCREASING_OPS = (
  "AutoContrast",
  "Equalize",
  "Invert",
  "Rotate",
  "PosterizeIncreasing",
  "SolarizeIncreasing",
  "SolarizeAdd",
  "ColorIncreasing",
  "ContrastIncreasing",
  "BrightnessIncreasing",
  "SharpnessIncreasing",
  "ShearX",
  "ShearY",
  "TranslateXRel",
  "TranslateYRel",
)


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  """A parsed RandAugment string (see the module docstring for each field's key)."""

  num_layers: int = 2
  magnitude: int = 10
  magnitude_std: float = 0.0
  magnitude_max: int = 10
  prob: float = 0.5
  increasing: bool = False

  @property
  def ops(self) -> tuple[str, ...]:
    return RAND_INCREASING_OPS if self.increasing else RAND_OPS


# key -> (RandAugmentSpec field, converter, check on the converted value, what the check means)
_SECTIONS = {
  "m": ("magnitude", int, lambda v: v >= 0, "an integer >= 0"),
  "n": ("num_layers", int, lambda v: v >= 0, "an integer >= 0"),
  "p": ("prob", float, lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
  "mstd": ("magnitude_std", float, lambda v: v >= 0, "a float >= 0"),
  "mmax": ("magnitude_max", int, lambda v: v > 0, "an integer > 0"),
  "inc": ("increasing", int, lambda v: v in (0, 1), "0 or 1"),
}


def _bad(spec, problem: str) -> ValueError:
  return ValueError(f"bad RandAugment string {spec!r}: {problem}; a valid one: {EXAMPLE!r}")


def parse(spec: str) -> RandAugmentSpec:
  """Parses timm's RandAugment string, e.g. ``"rand-m7-mstd0.5-inc1"``.

  Raises:
    ValueError: one line naming the malformed part and showing a valid string.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise _bad(spec, "expected a non-empty string")
  head, *sections = spec.strip().split("-")
  if head != "rand":
    raise _bad(spec, f"must start with 'rand', not {head!r}")
  values = {}
  for section in sections:
    match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", section)
    if match is None or match.group(1) not in _SECTIONS:
      keys = ", ".join(_SECTIONS)
      raise _bad(spec, f"unknown section {section!r} (keys: {keys}, each followed by a number)")
    key, text = match.groups()
    field, convert, check, meaning = _SECTIONS[key]
    if field in values:
      raise _bad(spec, f"{key!r} given twice")
    try:
      value = convert(text)
    except ValueError:
      raise _bad(spec, f"{key!r} must be {meaning}, got {text!r}") from None
    if not check(value):
      raise _bad(spec, f"{key!r} must be {meaning}, got {text!r}")
    values[field] = bool(value) if field == "increasing" else value
  return RandAugmentSpec(**values)


class LayerDraws(NamedTuple):
  """Per-layer random choices for one image, each of shape [num_layers]."""

  op_index: tf.Tensor  # int32 index into spec.ops
  applied: tf.Tensor  # bool: the op runs (probability spec.prob)
  magnitude: tf.Tensor  # float32, after noise and clipping to [0, magnitude_max]
  negate: tf.Tensor  # bool: signed ops flip their argument's sign


def _seed64(seed) -> tf.Tensor:
  # TF's stateless streams differ between int32 and int64 seeds: one dtype makes a seed mean one
  # thing however the caller built it.
  return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def draw_layers(seed, spec: RandAugmentSpec) -> LayerDraws:
  """The random choices RandAugment makes for one image, from its stateless seed."""
  n = spec.num_layers
  seeds = tf.random.experimental.stateless_split(_seed64(seed), 4)
  op_index = tf.random.stateless_uniform(
    [n], seeds[0], minval=0, maxval=len(spec.ops), dtype=tf.int32
  )
  applied = tf.random.stateless_uniform([n], seeds[1]) < spec.prob
  magnitude = tf.fill([n], tf.constant(spec.magnitude, tf.float32))
  if spec.magnitude_std > 100:
    # timm: a huge std means "uniform in [0, m]".
    magnitude = tf.random.stateless_uniform([n], seeds[2], maxval=float(spec.magnitude))
  elif spec.magnitude_std > 0:
    magnitude += spec.magnitude_std * tf.random.stateless_normal([n], seeds[2])
  magnitude = tf.clip_by_value(magnitude, 0.0, float(spec.magnitude_max))
  negate = tf.random.stateless_uniform([n], seeds[3]) < 0.5
  return LayerDraws(op_index, applied, magnitude, negate)


# ---- argument of each op from its magnitude (timm's level-to-argument maps) ----


def _signed(value, negate):
  return tf.where(negate, -value, value)


def _level(magnitude):
  return tf.cast(magnitude, tf.float32) / LEVEL_DENOM


def _enhance_arg(magnitude, negate):
  return _level(magnitude) * 1.8 + 0.1


def _enhance_increasing_arg(magnitude, negate):
  return tf.maximum(0.1, 1.0 + _signed(_level(magnitude) * 0.9, negate))


def _posterize_bits(magnitude, negate):
  return tf.floor(_level(magnitude) * 4.0)


def _posterize_increasing_bits(magnitude, negate):
  return tf.maximum(4.0 - _posterize_bits(magnitude, negate), 0.0)


def _solarize_threshold(magnitude, negate):
  return tf.minimum(256.0, tf.floor(_level(magnitude) * 256.0))


def _solarize_increasing_threshold(magnitude, negate):
  return 256.0 - _solarize_threshold(magnitude, negate)


def _solarize_add_arg(magnitude, negate):
  return tf.minimum(128.0, tf.floor(_level(magnitude) * 110.0))


def _rotate_degrees(magnitude, negate):
  return _signed(_level(magnitude) * 30.0, negate)


def _shear_arg(magnitude, negate):
  return _signed(_level(magnitude) * 0.3, negate)


def _translate_fraction(magnitude, negate):
  return _signed(_level(magnitude) * 0.45, negate)


def _no_arg(magnitude, negate):
  return tf.constant(0.0)


# ---- the ops: float32 [H, W, C] in 0..255 -> same ----


def _grayscale(image):
  """[H, W, 1] luma as PIL's convert("L") computes it (ITU-R 601-2, rounded)."""
  if image.shape[-1] == 1:
    return image
  weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
  return tf.round(tf.reduce_sum(image * weights, axis=-1, keepdims=True))


def _blend(degenerate, image, factor):
  """PIL ImageEnhance: factor 0 gives the degenerate image, 1 the image, above 1 extrapolates."""
  return degenerate + factor * (image - degenerate)


def auto_contrast(image, arg, fill):
  lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  stretched = (image - lo) * (255.0 / tf.maximum(hi - lo, 1e-6))
  # A flat channel has no range to stretch; PIL leaves it unchanged.
  return tf.where(hi > lo, stretched, image)


def _equalize_channel(channel):
  """PIL's ImageOps.equalize on one uint8-valued channel [H, W] (int32)."""
  hist = tf.math.bincount(tf.reshape(channel, [-1]), minlength=256, maxlength=256)
  last_used = 255 - tf.argmax(tf.cast(tf.reverse(hist, [0]) > 0, tf.int32), output_type=tf.int32)
  step = (tf.reduce_sum(hist) - hist[last_used]) // 255
  lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
  lut = tf.clip_by_value(lut, 0, 255)
  # One used level (or nearly all pixels in the top one) leaves nothing to spread: unchanged.
  return tf.where(step > 0, tf.gather(lut, channel), channel)


def equalize(image, arg, fill):
  levels = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.int32)
  channels = [_equalize_channel(levels[:, :, c]) for c in range(image.shape[-1])]
  return tf.cast(tf.stack(channels, axis=-1), tf.float32)


def invert(image, arg, fill):
  return 255.0 - image


def posterize(image, bits, fill):
  """Keeps the top ``bits`` bits of each 8-bit value (0 bits: black)."""
  levels = tf.floor(image)
  bucket = tf.pow(2.0, 8.0 - tf.clip_by_value(bits, 0.0, 8.0))
  return levels - tf.math.floormod(levels, bucket)


def solarize(image, threshold, fill):
  return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image, add, fill):
  return tf.where(image < 128.0, tf.minimum(255.0, image + add), image)


def color(image, factor, fill):
  if image.shape[-1] == 1:
    return image  # PIL: a grey image is its own degenerate, so saturation does nothing.
  return _blend(tf.broadcast_to(_grayscale(image), tf.shape(image)), image, factor)


def contrast(image, factor, fill):
  mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)
  return _blend(mean, image, factor)


def brightness(image, factor, fill):
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor, fill):
  """Blends with PIL's SMOOTH filter (3x3, centre 5, others 1, /13); border pixels are kept."""
  channels = image.shape[-1]
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  shape = tf.shape(image)
  rows = tf.range(shape[0])[:, None, None]
  cols = tf.range(shape[1])[None, :, None]
  interior = (rows > 0) & (rows < shape[0] - 1) & (cols > 0) & (cols < shape[1] - 1)
  degenerate = tf.where(interior, tf.round(smooth), image)
  return _blend(degenerate, image, factor)


def _affine(image, coeffs, fill):
  """PIL's Image.transform(AFFINE, coeffs): output (x, y) samples input (ax+by+c, dx+ey+f).

  PIL puts pixel centres at half-integers, the TF op at integers; conjugating by the half-pixel
  shift keeps rotations about the true image centre.
  """
  a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in coeffs]
  c = c + 0.5 * (a + b) - 0.5
  f = f + 0.5 * (d + e) - 0.5
  transform = tf.stack([a, b, c, d, e, f, 0.0, 0.0])[None]
  # The op fills with one scalar; shifting by the fill makes a per-channel fill exact (the
  # interpolation is linear).
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=(image - fill)[None],
    transforms=transform,
    output_shape=tf.shape(image)[:2],
    fill_value=0.0,
    interpolation="BILINEAR",
    fill_mode="CONSTANT",
  )[0]
  return tf.ensure_shape(out + fill, image.shape)


def rotate(image, degrees, fill):
  """Counter-clockwise about the image centre, as PIL's Image.rotate."""
  shape = tf.cast(tf.shape(image), tf.float32)
  cx, cy = shape[1] / 2.0, shape[0] / 2.0
  angle = -degrees * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  c = cos * -cx + sin * -cy + cx
  f = -sin * -cx + cos * -cy + cy
  return _affine(image, (cos, sin, c, -sin, cos, f), fill)


def shear_x(image, factor, fill):
  return _affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image, factor, fill):
  return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x_rel(image, fraction, fill):
  pixels = fraction * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y_rel(image, fraction, fill):
  pixels = fraction * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


OpFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
ArgFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# name -> (op, magnitude-and-sign -> the op's argument)
OPS: dict[str, tuple[OpFn, ArgFn]] = {
  "AutoContrast": (auto_contrast, _no_arg),
  "Equalize": (equalize, _no_arg),
  "Invert": (invert, _no_arg),
  "Rotate": (rotate, _rotate_degrees),
  "Posterize": (posterize, _posterize_bits),
  "PosterizeIncreasing": (posterize, _posterize_increasing_bits),
  "Solarize": (solarize, _solarize_threshold),
  "SolarizeIncreasing": (solarize, _solarize_increasing_threshold),
  "SolarizeAdd": (solarize_add, _solarize_add_arg),
  "Color": (color, _enhance_arg),
  "ColorIncreasing": (color, _enhance_increasing_arg),
  "Contrast": (contrast, _enhance_arg),
  "ContrastIncreasing": (contrast, _enhance_increasing_arg),
  "Brightness": (brightness, _enhance_arg),
  "BrightnessIncreasing": (brightness, _enhance_increasing_arg),
  "Sharpness": (sharpness, _enhance_arg),
  "SharpnessIncreasing": (sharpness, _enhance_increasing_arg),
  "ShearX": (shear_x, _shear_arg),
  "ShearY": (shear_y, _shear_arg),
  "TranslateXRel": (translate_x_rel, _translate_fraction),
  "TranslateYRel": (translate_y_rel, _translate_fraction),
}

Fill = Union[float, Sequence[float]]


def op_argument(name: str, magnitude, negate=False) -> tf.Tensor:
  """The argument timm passes to op ``name`` at ``magnitude`` (e.g. degrees, bits, a factor)."""
  _, arg_fn = OPS[name]
  return tf.cast(arg_fn(tf.cast(magnitude, tf.float32), tf.cast(negate, tf.bool)), tf.float32)


def _check_image(image: tf.Tensor) -> None:
  if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"RandAugment expects an [H, W, 1 or 3] image, got shape {image.shape}")


def _fill_tensor(fill: Fill, channels: int) -> tf.Tensor:
  fill = tf.constant(fill, tf.float32)
  if fill.shape.rank > 1 or (fill.shape.rank == 1 and fill.shape[0] not in (1, channels)):
    raise ValueError(f"RandAugment fill must be a scalar or {channels} values, got {fill.shape}")
  return fill


# PIL rounds the interpolated pixels of its geometric transforms but truncates blends and lookup
# tables; quantising the same way keeps uint8 results equal to timm's.
_ROUNDED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})


def _finish(image, name: str, quantize: bool):
  image = tf.clip_by_value(image, 0.0, 255.0)
  if not quantize:
    return image
  if name in _ROUNDED_OPS:
    return tf.round(image)
  # The small offset keeps float round-off (e.g. 199.99998 for 200) from dropping a level.
  return tf.floor(image + 1e-4)


def _apply_float(image, name, magnitude, negate, fill, quantize):
  op, _ = OPS[name]
  return _finish(op(image, op_argument(name, magnitude, negate), fill), name, quantize)


def _restore(image, dtype):
  return tf.cast(image, dtype)


def apply_op(image, name: str, magnitude, negate=False, fill: Fill = DEFAULT_FILL) -> tf.Tensor:
  """Applies one named op (any key of OPS) at a given magnitude; keeps dtype and shape."""
  image = tf.convert_to_tensor(image)
  _check_image(image)
  if name not in OPS:
    raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(OPS)}")
  fill = _fill_tensor(fill, image.shape[-1])
  quantize = image.dtype == tf.uint8
  out = _apply_float(tf.cast(image, tf.float32), name, magnitude, negate, fill, quantize)
  return _restore(out, image.dtype)


def randaugment(
  image, seed, spec: Union[str, RandAugmentSpec], fill: Fill = DEFAULT_FILL
) -> tf.Tensor:
  """RandAugment on one image, deterministic in ``seed``.

  Args:
    image: [H, W, C] uint8 or float in 0..255, C = 1 or 3 (static).
    seed: stateless seed, int32/int64 [2]; derive it per example (e.g. from seed, step, index).
    spec: a timm RandAugment string or a parsed RandAugmentSpec.
    fill: pixel value (scalar or per channel) for areas that geometric ops uncover.

  Returns:
    The augmented image, same dtype and shape.
  """
  spec = parse(spec) if isinstance(spec, str) else spec
  image = tf.convert_to_tensor(image)
  _check_image(image)
  quantize = image.dtype == tf.uint8
  fill = _fill_tensor(fill, image.shape[-1])
  draws = draw_layers(seed, spec)
  x = tf.cast(image, tf.float32)
  for layer in range(spec.num_layers):
    branches = [
      functools.partial(
        _apply_float, x, name, draws.magnitude[layer], draws.negate[layer], fill, quantize
      )
      for name in spec.ops
    ]
    chosen = functools.partial(tf.switch_case, draws.op_index[layer], branches)
    x = tf.cond(draws.applied[layer], chosen, functools.partial(tf.identity, x))
    x = tf.ensure_shape(x, image.shape)
  return _restore(x, image.dtype)
