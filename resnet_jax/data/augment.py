"""Train and test transforms: pure TensorFlow functions on ONE example.

Inputs: an image either as encoded bytes (tf.string: JPEG/PNG) or decoded uint8 [H, W, C].
Outputs: float32, normalised as (x - mean) / std with mean/std in 0..255 pixel units; the mean is
per channel, or with ``config.normalization='pixel_mean'`` the training split's per-pixel mean image
(the paper's preprocessing, ``pipeline.input_mean``).
Train transforms take a stateless seed (int32/int64 [2]); the pipeline derives it from
(seed, stream position), so results never depend on thread scheduling.
Test transforms return a stack of views [V, H, W, C].

Train:
  paper      He et al. §3.4: shorter side resized to a random size in [256, 480], random
             224x224 crop, horizontal flip, AlexNet PCA lighting (std 0.1), normalisation.
  inception  random-resized crop (area 0.08-1, aspect 3/4-4/3; decode_and_crop_jpeg on
             JPEG bytes), flip, normalisation; resized to image_size.
  cifar      §4.2: 4-pixel zero pad, random 32x32 crop, flip, normalisation. By default
             with the training set's per-CHANNEL mean/std (fixed constants in the
             registry) instead of the paper's per-pixel mean image: the common choice,
             which keeps eval independent of the train split; normalization='pixel_mean'
             subtracts the paper's per-pixel mean image (then divides by the channel std).
  digits     scale + normalise (mean/std), optional pad-and-crop (pad 2); no flip.
  digits4    the cifar transform with no flip (pad 4, random crop), for 1-channel digits.
  none       normalisation only (image already at image_size): for inspection and tests.
Any of them + RandAugment (timm spec string) before normalisation and random erasing (timm's
per-pixel mode) after it: train_transform(..., randaugment=, random_erasing=).
Test (one decision, :func:`eval_views`, from the run's training transform, as data: EvalViews;
:func:`views_transform` applies it here, ``serving.export`` in jnp for the exported function):
  center     shorter side -> resize_size (256), centre image_size (224) crop. With
             resize_size None (32/28 px datasets): centre crop of image_size (identity
             when image_size equals the native size) + normalisation. V = 1.
  ten_crop   §3.4: 4 corner + centre crops of the resized image and their flips. V = 10.
             It follows the run's training: without flips in training (digits) the
             five crops are not mirrored (views 6-10 repeat 1-5); for images at native size
             (28/32 px, no resize) the corners are crops of the image padded as in training
             (the run's own augmentation: 2 px for 'digits', 4 px for 'digits4' and 'cifar').
  full_conv  §3.4 fully-convolutional form at scale s (224, 256, 384, 480, 640): shorter
             side -> s. Approximation: to batch, we take the centre s x s square rather
             than the whole (non-square) image. V = 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from resnet_jax.data import randaugment as randaugment_lib
from resnet_jax.data import random_erasing as random_erasing_lib

# AlexNet / fb.resnet.torch PCA lighting on [0, 1]-scaled RGB.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
PAPER_SCALES = (224, 256, 384, 480, 640)


def decode(image: tf.Tensor, channels: int = 3) -> tf.Tensor:
  """uint8 [H, W, C]: decodes bytes, passes decoded images through."""
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=channels, expand_animations=False)
  return image


def normalize(image: tf.Tensor, mean, std: Sequence[float]) -> tf.Tensor:
  """(image - mean) / std; ``mean`` per channel [C] or a per-pixel mean image [H, W, C], resized
  (bilinear) to the image's side where a view is larger or smaller than the stored images."""
  image = tf.cast(image, tf.float32)
  mean = tf.constant(mean, tf.float32)
  if mean.shape.rank == 3 and mean.shape[:2] != image.shape[-3:-1]:
    mean = tf.image.resize(mean, tf.shape(image)[-3:-1], "bilinear")
  return (image - mean) / tf.constant(std, tf.float32)


def resize_shorter_side(image: tf.Tensor, size) -> tf.Tensor:
  """Bilinear resize so that min(H, W) == size, aspect kept. float32 out."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  size_f = tf.cast(size, tf.float32)
  scale = size_f / tf.minimum(h, w)
  new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), tf.cast(size, tf.int32))
  new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), tf.cast(size, tf.int32))
  new_h = tf.where(h <= w, tf.cast(size, tf.int32), new_h)
  new_w = tf.where(w < h, tf.cast(size, tf.int32), new_w)
  return tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method="bilinear")


def random_resize_shorter_side(image: tf.Tensor, seed, scale_range=(256, 480)) -> tf.Tensor:
  """Shorter side resized to an integer drawn uniformly from [lo, hi] (inclusive)."""
  lo, hi = scale_range
  size = tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
  return resize_shorter_side(image, size)


def pca_lighting(
  image: tf.Tensor, seed, std: float = 0.1, *, pixel_scale: float = 255.0
) -> tf.Tensor:
  """AlexNet lighting noise: adds one RGB offset (same for every pixel) along the PCA axes."""
  alpha = tf.random.stateless_normal([3], seed, stddev=std)
  rgb = tf.linalg.matvec(
    tf.constant(PCA_EIGVEC, tf.float32), alpha * tf.constant(PCA_EIGVAL, tf.float32)
  )
  return tf.cast(image, tf.float32) + rgb * pixel_scale


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return image[top : top + size, left : left + size]


def _seeds(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n))


# ---------------------------------------------------------------------------- train


def paper_train(
  image, seed, *, image_size=224, scale_range=(256, 480), mean, std, pca_std=0.1, channels=3
):
  s_resize, s_crop, s_flip, s_pca = _seeds(seed, 4)
  image = decode(image, channels)
  image = random_resize_shorter_side(image, s_resize, scale_range)
  image = tf.image.stateless_random_crop(image, [image_size, image_size, channels], s_crop)
  image = tf.image.stateless_random_flip_left_right(image, s_flip)
  if pca_std:
    image = pca_lighting(image, s_pca, pca_std)
  return normalize(image, mean, std)


def _sample_crop_window(shape, seed, area_range, aspect_range):
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=aspect_range,
    area_range=area_range,
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def inception_train(
  image,
  seed,
  *,
  image_size=224,
  area_range=(0.08, 1.0),
  aspect_range=(3 / 4, 4 / 3),
  mean,
  std,
  channels=3,
):
  s_box, s_flip = _seeds(seed, 2)
  if image.dtype == tf.string:

    def jpeg():
      window = _sample_crop_window(tf.io.extract_jpeg_shape(image), s_box, area_range, aspect_range)
      return tf.io.decode_and_crop_jpeg(image, window, channels=channels)

    def other():
      decoded = decode(image, channels)
      w = _sample_crop_window(tf.shape(decoded), s_box, area_range, aspect_range)
      return decoded[w[0] : w[0] + w[2], w[1] : w[1] + w[3]]

    crop = tf.cond(tf.io.is_jpeg(image), jpeg, other)
  else:
    w = _sample_crop_window(tf.shape(image), s_box, area_range, aspect_range)
    crop = image[w[0] : w[0] + w[2], w[1] : w[1] + w[3]]
  crop = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size], "bilinear")
  crop = tf.image.stateless_random_flip_left_right(crop, s_flip)
  return normalize(crop, mean, std)


def pad_and_crop_train(image, seed, *, image_size, pad, flip, mean, std, channels=3):
  s_crop, s_flip = _seeds(seed, 2)
  image = decode(image, channels)
  if pad:
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, [image_size, image_size, channels], s_crop)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, s_flip)
  return normalize(image, mean, std)


cifar_train = functools.partial(pad_and_crop_train, pad=4, flip=True)
digits_train = functools.partial(pad_and_crop_train, pad=2, flip=False, channels=1)
# The paper's CIFAR augmentation (§4.2, 4-pixel pad + random crop) without the flip, which would
# turn some digits into others: the degradation analysis's recipe.
digits4_train = functools.partial(pad_and_crop_train, pad=4, flip=False, channels=1)
# No augmentation: decode + normalise only (image must already be image_size).
plain_train = functools.partial(pad_and_crop_train, pad=0, flip=False)

TRAIN_AUGMENTS = {
  "paper": paper_train,
  "inception": inception_train,
  "cifar": cifar_train,
  "digits": digits_train,
  "digits4": digits4_train,
  "none": plain_train,
}


# ----------------------------------------------------------------------------- test

EVAL_METHODS = ("center", "ten_crop", "full_conv")


@dataclasses.dataclass(frozen=True)
class EvalViews:
  """A run's test-time views, decided once (:func:`eval_views`) and applied alike by the eval
  pipeline and ``predict`` (:func:`views_transform`, TensorFlow) and ``export``'s serving function
  (``serving.export.view_stack``, jnp).

  Each image: shorter side resized to ``resize`` (None: kept), then its centre ``crop`` square; or
  for ten_crop, of the image zero-padded by ``pad`` pixels, the four corner and the centre squares
  followed by the same five mirrored (``flip``) or, for a net trained without flips, repeated
  (still ten views, whose mean is the five crops' mean).
  """

  method: str  # one of EVAL_METHODS
  crop: int
  resize: int | None = None
  pad: int = 0
  flip: bool = False

  @property
  def num_views(self) -> int:
    return 10 if self.method == "ten_crop" else 1


def _shifts_and_flips(train_augment: str | None) -> tuple[int, bool]:
  """``(pad, flip)`` of a pad-and-crop train transform; ``(0, True)`` for the others (resized crops
  with flips) and for None (not trained here, e.g. converted torchvision weights)."""
  keywords = getattr(TRAIN_AUGMENTS.get(train_augment or ""), "keywords", {})
  return int(keywords.get("pad", 0)), bool(keywords.get("flip", True))


def eval_views(
  method: str,
  *,
  train_augment: str | None,
  image_size: int,
  resize_size: int | None,
  scale: int | None = None,
) -> EvalViews:
  """The test-time views of a run trained with ``train_augment`` (a TRAIN_AUGMENTS name: the run's
  own, ``datasets.train_augment_name``), at crop side ``image_size`` after resizing the shorter
  side to ``resize_size`` (None: native size).

  ten_crop mirrors only where training flipped, and for native-size images shifts its corners by
  the training's own padding. full_conv: the centre ``scale`` square of the image resized to
  ``scale`` (default: ``resize_size`` or ``image_size``).
  """
  if method == "center":
    return EvalViews("center", image_size, resize_size)
  if method == "ten_crop":
    pad, flip = _shifts_and_flips(train_augment)
    return EvalViews("ten_crop", image_size, resize_size, pad=0 if resize_size else pad, flip=flip)
  if method == "full_conv":
    if scale is None:
      scale = resize_size or image_size
    return EvalViews("full_conv", scale, scale)
  raise ValueError(f"Unknown eval method {method!r}; known: {list(EVAL_METHODS)}.")


def ten_crop_views(image, image_size: int, *, pad: int = 0, flip: bool = True) -> tf.Tensor:
  """[10, S, S, C]: TL, TR, BL, BR, centre crops, then the same five flipped (``flip=False``:
  repeated), of ``image`` zero-padded by ``pad`` pixels."""
  if pad:
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  shape = tf.shape(image)
  h, w, s = shape[0], shape[1], image_size
  crops = [
    image[:s, :s],
    image[:s, w - s :],
    image[h - s :, :s],
    image[h - s :, w - s :],
    center_crop(image, s),
  ]
  crops = tf.stack(crops)
  return tf.concat([crops, tf.reverse(crops, axis=[2]) if flip else crops], axis=0)


def view_stack(image: tf.Tensor, views: EvalViews) -> tf.Tensor:
  """float32 [V, crop, crop, C], not normalised: ``views`` of one decoded image [H, W, C]."""
  image = tf.cast(image, tf.float32)
  if views.resize:
    image = resize_shorter_side(image, views.resize)
  if views.method == "ten_crop":
    return ten_crop_views(image, views.crop, pad=views.pad, flip=views.flip)
  return center_crop(image, views.crop)[None]


def _apply_views(image, *, views, mean, std, channels):
  return normalize(view_stack(decode(image, channels), views), mean, std)


def views_transform(
  views: EvalViews, *, mean, std, channels: int
) -> Callable[[tf.Tensor], tf.Tensor]:
  """fn(image: bytes or uint8 [H, W, C]) -> float32 [V, crop, crop, C], normalised."""
  return functools.partial(_apply_views, views=views, mean=mean, std=std, channels=channels)


def train_transform(
  name: str,
  *,
  image_size: int,
  mean,
  std,
  channels: int,
  randaugment: str = "",
  random_erasing: float = 0.0,
  **kwargs,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """fn(image, seed) -> float32 [image_size, image_size, channels].

  ``randaugment`` (a timm spec string, '' = off) and ``random_erasing`` (a probability, 0 = off)
  add the ResNet strikes back augmentations to the named transform (see :func:`modern_train`);
  with both off the transform is the named one, unchanged.
  """
  if name not in TRAIN_AUGMENTS:
    raise ValueError(f"Unknown train augmentation {name!r}; known: {sorted(TRAIN_AUGMENTS)}.")
  base = functools.partial(TRAIN_AUGMENTS[name], image_size=image_size, channels=channels, **kwargs)
  if not randaugment and not random_erasing:
    return functools.partial(base, mean=mean, std=std)
  if randaugment:
    randaugment_lib.parse(randaugment)  # A malformed string fails here, not in a tf.data thread.
  return functools.partial(
    modern_train,
    base=base,
    mean=mean,
    std=std,
    randaugment=randaugment,
    random_erasing=random_erasing,
  )


def modern_train(image, seed, *, base, mean, std, randaugment="", random_erasing=0.0):
  """``base`` (crop, flip, ...), then RandAugment, normalisation and random erasing, as timm orders
  them for ResNet strikes back.

  timm runs RandAugment on the PIL image the crop produced: ``base`` runs with an identity
  normalisation, its pixels are rounded to uint8 as PIL stores them, and RandAugment quantises each
  op as PIL does, filling uncovered areas with the dataset mean in pixels (timm's ``img_mean``).
  Random erasing (timm's per-pixel mode) works on the normalised image. Their seeds are folded from
  the example's seed, so ``base`` draws exactly what it draws without them.
  """
  if randaugment:
    identity = ([0.0] * len(std), [1.0] * len(std))
    x = base(image, seed, mean=identity[0], std=identity[1])
    x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
    channel_mean = np.reshape(mean, (-1, len(std))).mean(axis=0)  # a mean image's, per channel
    fill = [min(255.0, float(round(m))) for m in channel_mean]
    x = randaugment_lib.randaugment(
      x, tf.random.experimental.stateless_fold_in(seed, 1), randaugment, fill=fill
    )
    x = normalize(x, mean, std)
  else:
    x = base(image, seed, mean=mean, std=std)
  if random_erasing:
    x = random_erasing_lib.random_erase(
      x, tf.random.experimental.stateless_fold_in(seed, 2), random_erasing, mode="pixel"
    )
  return x


def eval_transform(
  method: str,
  *,
  image_size: int,
  resize_size,
  mean,
  std,
  channels: int,
  scale: int | None = None,
  train_augment: str | None = None,
) -> Callable[[tf.Tensor], tf.Tensor]:
  """fn(image) -> float32 [V, H, W, C]: :func:`views_transform` of :func:`eval_views`."""
  views = eval_views(
    method, train_augment=train_augment, image_size=image_size, resize_size=resize_size, scale=scale
  )
  return views_transform(views, mean=mean, std=std, channels=channels)
