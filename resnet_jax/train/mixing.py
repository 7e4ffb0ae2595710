"""Mixup (Zhang et al. 2017) and CutMix (Yun et al. 2019) per batch, on device, with timm's semantics.

timm's ``Mixup`` in ``mode="batch"``: one draw per batch decides
  - whether to mix at all (probability ``mix_prob``);
  - mixup or cutmix: cutmix with probability ``switch_prob`` when both alphas are > 0, otherwise
    whichever alpha is > 0;
  - lam ~ Beta(alpha, alpha) of the chosen method.
Every example is mixed with its partner in the batch REVERSED (example i with N - 1 - i).
Mixup: x = lam * x + (1 - lam) * x_partner. CutMix: a box of side sqrt(1 - lam) of each image
side, centred uniformly at random and clipped to the image, is pasted from the partner; lam is
then corrected to the kept area, 1 - box_area / image_area (timm's ``correct_lam=True``).
Targets: label smoothing first (off = smoothing / K, on = 1 - smoothing + off), then
lam * y + (1 - lam) * y_partner, so they sum to 1. Without mixing (lam = 1) the images pass
through unchanged and the targets are the smoothed one-hot labels.

Everything is traced: ``mix`` runs under ``jax.jit`` (the method choice uses ``jnp.where``, not
Python branches). Randomness comes from the key alone; derive it per step, e.g.
``jax.random.fold_in(key, step)``.

Differences from timm: an odd batch size is allowed (the middle example is its own partner);
with both alphas 0 nothing is mixed (timm refuses to build a Mixup) but labels are still smoothed.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MixConfig:
  """timm's Mixup arguments (batch mode, correct_lam=True)."""

  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  switch_prob: float = 0.5
  label_smoothing: float = 0.0

  def __post_init__(self):
    for name in ("mixup_alpha", "cutmix_alpha"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    for name in ("mix_prob", "switch_prob", "label_smoothing"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class MixParams(NamedTuple):
  """One batch's draw. ``lam`` is already corrected to the box for cutmix."""

  lam: jax.Array  # float32 scalar: weight of the example itself
  use_cutmix: jax.Array  # bool scalar
  box: jax.Array  # int32 [4]: y_lo, y_hi, x_lo, x_hi (empty unless cutmix is used)


def smooth_one_hot(labels, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """One-hot [N, K] with ``smoothing`` spread evenly over all K classes (timm's convention)."""
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on, off).astype(
    jnp.float32
  )


def mix_targets(labels, num_classes: int, lam, smoothing: float = 0.0) -> jax.Array:
  """timm's mixup_target: smoothed one-hot mixed with the reversed batch's, weights lam, 1 - lam."""
  y = smooth_one_hot(labels, num_classes, smoothing)
  return lam * y + (1.0 - lam) * y[::-1]


def cutmix_box(rng, height: int, width: int, lam) -> tuple[jax.Array, jax.Array]:
  """timm's rand_bbox and lam correction: (box [y_lo, y_hi, x_lo, x_hi], corrected lam).

  The cut has sides int(size * sqrt(1 - lam)); its centre is uniform over the pixels; the box
  spans centre -/+ half the cut (integer halves) and is clipped to the image.
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(rng)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  y_lo = jnp.clip(cy - cut_h // 2, 0, height)
  y_hi = jnp.clip(cy + cut_h // 2, 0, height)
  x_lo = jnp.clip(cx - cut_w // 2, 0, width)
  x_hi = jnp.clip(cx + cut_w // 2, 0, width)
  area = (y_hi - y_lo) * (x_hi - x_lo)
  corrected = 1.0 - area.astype(jnp.float32) / float(height * width)
  return jnp.stack([y_lo, y_hi, x_lo, x_hi]), corrected


def _beta(rng, alpha: float):
  # An alpha of 0 means the method is off; any valid value keeps the traced graph well defined.
  return jax.random.beta(rng, alpha or 1.0, alpha or 1.0, dtype=jnp.float32)


def draw_params(rng, height: int, width: int, config: MixConfig) -> MixParams:
  """The per-batch draw: apply or not, mixup or cutmix, lam and the cutmix box."""
  k_apply, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(rng, 5)
  apply = jax.random.uniform(k_apply) < config.mix_prob
  if config.mixup_alpha > 0 and config.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < config.switch_prob
  else:
    use_cutmix = jnp.asarray(config.cutmix_alpha > 0)
  use_cutmix = use_cutmix & apply & config.enabled
  lam = jnp.where(
    use_cutmix, _beta(k_cutmix, config.cutmix_alpha), _beta(k_mixup, config.mixup_alpha)
  )
  lam = jnp.where(apply & config.enabled, lam, 1.0)
  box, corrected = cutmix_box(k_box, height, width, lam)
  box = jnp.where(use_cutmix, box, jnp.zeros_like(box))
  return MixParams(jnp.where(use_cutmix, corrected, lam), use_cutmix, box)


def box_mask(box, height: int, width: int) -> jax.Array:
  """bool [H, W]: the pixels inside box [y_lo, y_hi, x_lo, x_hi]."""
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])


def mix_images(images, params: MixParams) -> jax.Array:
  """Applies a draw to images [N, H, W, C] (partner: the batch reversed); same dtype out."""
  partner = images[::-1]
  height, width = images.shape[1], images.shape[2]
  inside = box_mask(params.box, height, width)[None, :, :, None]
  lam = params.lam.astype(images.dtype)
  blended = images * lam + partner * (1 - lam)
  mixed = jnp.where(params.use_cutmix, jnp.where(inside, partner, images), blended)
  # Without mixing lam is 1, but 0 * partner is NaN where the partner is inf: keep it exact.
  return jnp.where(params.lam < 1.0, mixed, images)


def mix(rng, images, labels, num_classes: int, config: MixConfig) -> tuple[jax.Array, jax.Array]:
  """Mixup / cutmix on one batch.

  Args:
    rng: a JAX PRNG key for this batch (e.g. ``fold_in(key, step)``).
    images: [N, H, W, C] float (normalised).
    labels: int [N] class indices.
    num_classes: K.
    config: a MixConfig (static under jit).

  Returns:
    (mixed images [N, H, W, C], soft targets float32 [N, K] summing to 1 per row).
  """
  params = draw_params(rng, images.shape[1], images.shape[2], config)
  targets = mix_targets(labels, num_classes, params.lam, config.label_smoothing)
  return mix_images(images, params), targets
