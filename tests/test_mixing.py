"""Mixup and cutmix (resnet_jax.train.mixing) against timm's batch-mode semantics, by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.train import mixing

K = 10
N, H, W, C = 4, 12, 20, 3  # one batch shape everywhere: each (shape, config) compiles once
DRAWS = 4000
BOTH = mixing.MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.3, label_smoothing=0.1)
CUTMIX = mixing.MixConfig(cutmix_alpha=1.0)
MIXUP = mixing.MixConfig(mixup_alpha=1.0, mix_prob=0.6)
OFF = mixing.MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.0, label_smoothing=0.1)
KEYS = jax.random.split(jax.random.key(0), DRAWS)

_mix = jax.jit(mixing.mix, static_argnums=(3, 4))


@functools.partial(jax.jit, static_argnums=(1,))
def _draw_many(keys, config):
  return jax.vmap(lambda k: mixing.draw_params(k, H, W, config))(keys)


def _images():
  return jax.random.normal(jax.random.key(1), (N, H, W, C))


def _constant_batch():
  """Example i is filled with the value i: each pixel tells which example it came from."""
  return jnp.broadcast_to(jnp.arange(N, dtype=jnp.float32)[:, None, None, None], (N, H, W, C))


def _binomial_ok(hits, n, p):
  return abs(hits / n - p) <= 4 * np.sqrt(p * (1 - p) / n)


def test_label_smoothing_composes_with_mixing_as_timm():
  # smoothing 0.1 over 10 classes: on = 0.91, off = 0.01; lam = 0.7 mixes rows with the reversed
  # batch: own class 0.7 * 0.91 + 0.3 * 0.01 = 0.64, partner's 0.7 * 0.01 + 0.3 * 0.91 = 0.28.
  targets = np.asarray(mixing.mix_targets(jnp.array([2, 7, 5]), K, 0.7, 0.1))
  expected = np.full((3, K), 0.01)
  expected[0, 2], expected[0, 5] = 0.64, 0.28
  expected[1, 7] = 0.91  # the middle example is its own partner
  expected[2, 5], expected[2, 2] = 0.64, 0.28
  np.testing.assert_allclose(targets, expected, atol=1e-6)


@pytest.mark.parametrize("config", [BOTH, CUTMIX, MIXUP])
def test_soft_targets_sum_to_one(config):
  labels = jnp.array([1, 8, 8, 0])
  for step in range(4):
    _, targets = _mix(KEYS[step], _images(), labels, K, config)
    np.testing.assert_allclose(np.asarray(targets).sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(targets) >= 0)


def test_mixup_images_are_the_convex_combination_the_targets_state():
  images, labels = _images(), jnp.arange(N)
  draws = _draw_many(KEYS, MIXUP)
  step = int(np.argmax(np.asarray(draws.lam) < 1.0))  # a batch that mixes
  mixed, targets = _mix(KEYS[step], images, labels, K, MIXUP)
  lam = float(targets[0, 0])
  assert 0.0 < lam < 1.0 and float(targets[0, N - 1]) == pytest.approx(1 - lam)
  np.testing.assert_allclose(mixed[0], lam * images[0] + (1 - lam) * images[N - 1], atol=1e-6)


def test_cutmix_pasted_area_is_one_minus_lam_after_clipping():
  images, labels = _constant_batch(), jnp.arange(N)
  boxes = _draw_many(KEYS, CUTMIX).box
  clipped = 0
  for step in range(40):
    mixed, targets = _mix(KEYS[step], images, labels, K, CUTMIX)
    from_partner = int(jnp.sum(mixed[0, :, :, 0] == N - 1))
    lam = float(targets[0, 0])
    assert from_partner / (H * W) == pytest.approx(1 - lam, abs=1e-6)
    assert float(targets[0, N - 1]) == pytest.approx(1 - lam, abs=1e-6)
    # Every example takes the same box from its partner, in every channel.
    assert int(jnp.sum(mixed[N - 1] == 0)) == from_partner * C
    box = [int(v) for v in boxes[step]]
    clipped += int(box[0] == 0 or box[1] == H or box[2] == 0 or box[3] == W)
  assert clipped > 0  # the clipping path was exercised


def test_cutmix_box_by_hand():
  # lam 0.75 on 16x16: cut 8x8 (sqrt(0.25) * 16), spanning centre -/+ 4, clipped to the image.
  for seed in range(20):
    key = jax.random.key(seed)
    box, lam = mixing.cutmix_box(key, 16, 16, 0.75)
    key_y, key_x = jax.random.split(key)
    cy = int(jax.random.randint(key_y, (), 0, 16))
    cx = int(jax.random.randint(key_x, (), 0, 16))
    expected = [max(cy - 4, 0), min(cy + 4, 16), max(cx - 4, 0), min(cx + 4, 16)]
    assert [int(v) for v in box] == expected
    area = (expected[1] - expected[0]) * (expected[3] - expected[2])
    assert float(lam) == pytest.approx(1 - area / 256)


def test_switch_probability_holds():
  draws = _draw_many(KEYS, BOTH)
  assert _binomial_ok(int(draws.use_cutmix.sum()), DRAWS, 0.3)


def test_mix_probability_holds():
  draws = _draw_many(KEYS, MIXUP)
  assert not bool(draws.use_cutmix.any())  # only mixup_alpha is set
  assert _binomial_ok(int((draws.lam < 1.0).sum()), DRAWS, 0.6)


def test_cutmix_alone_always_cuts():
  assert bool(_draw_many(KEYS, CUTMIX).use_cutmix.all())


def test_no_mixing_passes_images_and_smoothed_labels_through():
  images = _images().at[0, 0, 0, 0].set(jnp.inf)
  labels = jnp.array([3, 1, 4, 1])
  out, targets = _mix(KEYS[0], images, labels, K, OFF)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_allclose(targets, mixing.smooth_one_hot(labels, K, 0.1))


def test_deterministic_in_the_key():
  images, labels = _images(), jnp.arange(N)
  seen = set()
  for step in range(3):
    key = jax.random.fold_in(jax.random.key(0), step)
    first = _mix(key, images, labels, K, BOTH)
    again = _mix(key, images, labels, K, BOTH)
    for a, b in zip(first, again):
      np.testing.assert_array_equal(a, b)
    seen.add(round(float(first[1][0, 0]), 6))
  assert len(seen) > 1  # different steps draw differently


@pytest.mark.parametrize(
  "kwargs", [{"mixup_alpha": -1.0}, {"mix_prob": 1.5}, {"switch_prob": -0.1}]
)
def test_invalid_config_is_refused(kwargs):
  with pytest.raises(ValueError):
    mixing.MixConfig(**kwargs)
