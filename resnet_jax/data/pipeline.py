"""Sharded, deterministic, resumable batches for pmap: [local_devices, per_device, ...].

Train stream (memory and files sources, i.e. everything but imagenet2012 records):
  Host h of P owns the contiguous index block np.array_split(arange(N), P)[h] (the same
  rule as tfds.even_splits; hosts are disjoint). Its examples form an endless stream:
  stream position p (0, 1, 2, ...) is epoch e = p // n_h, slot i = p % n_h, example
  block[index_shuffle(i, seed=[seed, e])] -- a fresh stateless permutation per epoch.
  Batch k is positions [k*B, (k+1)*B) (B = per-host batch; batches run across epoch
  boundaries, nothing is dropped). The augmentation seed of a position is
  [seed, p * P + h]. So batches are a pure function of (seed, k, host): `start_step=k`
  starts the stream at p = k*B with index arithmetic, decoding nothing skipped.
Train stream (records source, imagenet2012): per epoch, a seeded tf.data shuffle (buffer
  min(n_h, 16384)) of the host's tfds subsplit (tfds.split_for_jax_process), whole
  batches only; `start_step` skips records of the current epoch before decoding.
Eval: host h reads its block (records: its tfds subsplit), padded with masked examples
  to nb = ceil(ceil(N / P) / B) batches on EVERY host; mask sum over hosts == N.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_jax.data import augment, synthetic
from resnet_jax.data.datasets import (
  CorruptImageError,
  Source,
  dataset_info,
  hide_gpus_from_tf,
  load_source,
  num_examples,
  train_augment_name,
)

__all__ = [
  "input_mean",
  "train_batches",
  "eval_batches",
  "eval_image_sizes",
  "prefetch_to_device",
  "num_examples",
  "dataset_info",
]

_RECORDS_SHUFFLE_BUFFER = 16384
_MASK64 = (1 << 63) - 1


def _layout(global_batch_size, process_index, process_count, local_device_count):
  import jax  # Only for the host/device facts when not given.

  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if local_device_count is None:
    local_device_count = jax.local_device_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  if global_batch_size <= 0 or global_batch_size % (process_count * local_device_count):
    raise ValueError(
      f"global_batch_size {global_batch_size} must be a positive multiple of "
      f"process_count x local_device_count = {process_count} x {local_device_count}."
    )
  per_host = global_batch_size // process_count
  return process_index, process_count, local_device_count, per_host


def _sizes(spec, image_size, resize_size, crop_ratio=None):
  """(image_size, resize_size) with resize scaled like the registry's 256/224 ratio, or, given a
  crop ratio, floor(image_size / crop_ratio) as timm's ``crop_pct`` (0.95: 224 -> 235)."""
  size = image_size or spec.image_size
  if resize_size is None and crop_ratio:
    resize_size = int(math.floor(size / crop_ratio))
  if resize_size is None and spec.resize_size:
    resize_size = int(round(size * spec.resize_size / spec.image_size))
  return size, resize_size


def eval_image_sizes(
  dataset: str, image_size: int | None = None, crop_ratio: float | None = None
) -> tuple[int, int | None]:
  """``(crop side, shorter side before the crop or None)`` the eval transforms use for a run of
  ``dataset`` at ``image_size`` (None: the dataset's own): e.g. (224, 256), (64, 73), (28, None).
  ``crop_ratio`` (timm's crop_pct, e.g. 0.95): the shorter side is floor(image_size / crop_ratio),
  for every dataset (224 -> 235, 28 -> 29); None keeps the dataset's rule."""
  return _sizes(dataset_info(dataset), image_size, None, crop_ratio)


def _channels(source: Source) -> int:
  return source.images.shape[-1] if source.kind == "memory" else 3


def _loader(source: Source):
  """fn(example_index int64) -> image (uint8 or encoded bytes) for random-access sources."""
  if source.kind == "memory":
    images = tf.constant(source.images)
    return lambda i: tf.gather(images, i)
  paths = tf.constant(source.paths.astype(str))
  return lambda i: tf.io.read_file(tf.gather(paths, i))


def _host_block(n: int, process_index: int, process_count: int) -> np.ndarray:
  return np.array_split(np.arange(n, dtype=np.int64), process_count)[process_index]


def _to_devices(local_device_count):
  def fn(batch):
    return {
      k: tf.reshape(v, tf.concat([[local_device_count, -1], tf.shape(v)[1:]], 0))
      for k, v in batch.items()
    }

  return _graph_only(fn)


def _graph_only(fn):
  """``fn`` for ``Dataset.map`` traced as written, without AutoGraph's rewrite of its Python.

  The input functions branch with ``tf.cond``/``tf.switch_case``, never Python ``if`` on a tensor,
  so the rewrite changes nothing but costs a second of every process start (each map traced).
  """
  return tf.autograph.experimental.do_not_convert(fn)


def _map_each(ds, fn):
  """``fn`` on every element, in parallel and in order."""
  return ds.map(_graph_only(fn), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _options(ds):
  opts = tf.data.Options()
  opts.deterministic = True
  opts.autotune.enabled = True
  return ds.with_options(opts)


def _decodes_ok(source: Source, indices) -> list[tuple[str, str]]:
  """[(path, error)] for files in `indices` that fail to decode (eager, one by one)."""
  bad = []
  for i in indices:
    path = str(source.paths[int(i)])
    try:
      tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      bad.append((path, (e.message or str(e)).splitlines()[0]))
  return bad


def _drop_corrupt(source: Source) -> Source:
  """The source without undecodable files (one decode pass); logs how many were skipped."""
  if source.kind != "files":
    return source
  idx = tf.data.Dataset.range(source.num_examples)
  paths = tf.constant(source.paths.astype(str))

  def check(i):
    image = tf.io.decode_image(tf.io.read_file(paths[i]), channels=3, expand_animations=False)
    return i + 0 * tf.cast(tf.size(image[:1, :1]), tf.int64)  # Keeps the decode alive.

  ok = _map_each(idx, check)
  ok = np.fromiter(ok.ignore_errors().as_numpy_iterator(), np.int64)
  skipped = source.num_examples - len(ok)
  if skipped:
    logging.warning(
      "Skipped %d corrupt image file(s) of %d in split %r.",
      skipped,
      source.num_examples,
      source.split,
    )
  return Source(
    source.spec,
    source.split,
    source.kind,
    len(ok),
    source.num_classes,
    labels=source.labels[ok],
    paths=source.paths[ok],
  )


def _iterate(ds, batch_indices):
  """numpy batches; a decode failure becomes CorruptImageError naming the file."""
  it = ds.as_numpy_iterator()
  for step in itertools.count():
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      if batch_indices is None:
        raise
      source, indices = batch_indices(step)
      bad = _decodes_ok(source, indices)
      what = (
        f"{bad[0][0]} ({bad[0][1]})"
        if bad
        else f"one of {[str(source.paths[int(i)]) for i in indices]}"
      )
      raise CorruptImageError(
        f"Cannot decode image file {what}; fix or delete it, or pass skip_corrupt=True."
      ) from e
    yield batch


def _stream_indices(seed, epoch_len):
  """tf fn: stream position (int64) -> slot in the host block, per-epoch permutation."""

  def fn(pos):
    epoch = pos // epoch_len
    slot = pos % epoch_len
    if epoch_len == 1:
      return tf.zeros_like(slot)
    return tf.random.experimental.index_shuffle(
      slot, tf.stack([tf.constant(seed, tf.int64), epoch]), epoch_len - 1
    )

  return fn


def input_mean(dataset: str, normalization: str, mean_split=None, data_dir=None):
  """The mean the inputs are normalised with (0..255 pixel units): the dataset's per-channel
  constants (``'channel'``), or the per-pixel mean image [H, W, C] of the training split
  ``mean_split`` (``'pixel_mean'``, the paper's §3.4/§4.2 preprocessing; datasets held in memory
  at their stored size). Either is divided by the dataset's per-channel std."""
  if normalization == "channel":
    return dataset_info(dataset).mean
  if normalization == "pixel_mean":
    return _pixel_mean_image(dataset, mean_split, data_dir)
  raise ValueError(f"normalization {normalization!r}: must be 'channel' or 'pixel_mean'")


@functools.lru_cache(maxsize=4)
def _pixel_mean_image(dataset: str, split, data_dir) -> np.ndarray:
  """float32 [H, W, C]: the mean of every training image, pixel by pixel (computed once)."""
  source = load_source(dataset, split, data_dir, train=True)
  if source.kind != "memory":
    raise ValueError(
      f"normalization 'pixel_mean' needs a dataset held in memory at its stored size (digits, "
      f"mnist, cifar10, cifar100); {dataset} is read from {source.kind}: use 'channel'"
    )
  return source.images.mean(axis=0, dtype=np.float64).astype(np.float32)


def _train_transform(aug_name, spec, source, size, randaugment, random_erasing, mean):
  """The named train transform for ``source`` at crop side ``size``, with the added augmentations;
  ``mean``: :func:`input_mean`."""
  kwargs = {}
  if aug_name == "paper":
    lo, hi = 256, 480
    if size != 224:  # Tiny test images: scale the [256, 480] range with the crop size.
      lo, hi = int(round(lo * size / 224)), int(round(hi * size / 224))
    kwargs["scale_range"] = (lo, hi)
  return augment_lib.train_transform(
    aug_name,
    image_size=size,
    mean=mean,
    std=spec.std,
    channels=_channels(source),
    randaugment=randaugment,
    random_erasing=random_erasing,
    **kwargs,
  )


def train_batches(
  dataset: str,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  augment: str | None = None,
  image_size: int | None = None,
  data_dir: str | None = None,
  split: str | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  local_device_count: int | None = None,
  resize_size: int | None = None,
  skip_corrupt: bool = False,
  randaugment: str = "",
  random_erasing: float = 0.0,
  normalization: str = "channel",
) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of {'image': float32 [D, B/D, H, W, C], 'label': int32 [D, B/D]}.

  D = local_device_count, B = global_batch_size / process_count (this host's share).
  Same (seed, step, host) -> same batch; start_step=k resumes exactly at batch k.
  ``randaugment`` (timm spec string) and ``random_erasing`` (probability) add to the train
  transform (augment.train_transform); they draw from each example's augmentation seed, so they
  are as deterministic and resumable as the crops. ``normalization``: :func:`input_mean` (the
  per-pixel mean is this ``split``'s).
  """
  pi, pc, ldc, per_host = _layout(
    global_batch_size, process_index, process_count, local_device_count
  )
  if dataset == synthetic.NAME:  # random batches made in memory: no tf.data, no files
    yield from synthetic.train_batches(
      per_host=per_host, local_device_count=ldc, image_size=image_size, seed=seed, process_index=pi
    )
    return
  hide_gpus_from_tf()
  spec = dataset_info(dataset)
  source = load_source(dataset, split, data_dir, train=True)
  if skip_corrupt:
    source = _drop_corrupt(source)
  size, _ = _sizes(spec, image_size, resize_size)
  mean = input_mean(dataset, normalization, split, data_dir)
  transform = _train_transform(
    train_augment_name(dataset, augment), spec, source, size, randaugment, random_erasing, mean
  )
  seed = int(seed) & _MASK64
  if source.kind == "records":
    yield from _records_train(source, transform, seed, start_step, per_host, pi, pc, ldc)
  else:
    yield from _stream_train(dataset, source, transform, seed, start_step, per_host, pi, pc, ldc)


def _stream_train(dataset, source, transform, seed, start_step, per_host, pi, pc, ldc):
  # In-memory and file datasets: one global stream of positions, permuted per epoch over the whole
  # split. Global batch s is positions [s*G, (s+1)*G); host p takes its contiguous share. So the
  # global batch is the same whatever the number of hosts (2 hosts x 2 devices train exactly like
  # 1 host x 4), and within every step and every epoch the hosts read disjoint examples.
  n = source.num_examples
  if n == 0:
    raise ValueError(f"Split {source.split!r} of {dataset} has no examples.")
  global_batch = per_host * pc
  labels_t = tf.constant(source.labels)
  load = _loader(source)
  slot_of = _stream_indices(seed, n)

  def global_position(c):
    return (c // per_host) * global_batch + pi * per_host + c % per_host

  def example(c):
    pos = global_position(c)
    idx = slot_of(pos)
    aug_seed = tf.stack([tf.constant(seed, tf.int64), pos])
    return {"image": transform(load(idx), aug_seed), "label": tf.gather(labels_t, idx)}

  start = int(start_step) * per_host
  ds = tf.data.Dataset.range(start, 1 << 62)
  ds = _map_each(ds, example)
  ds = ds.batch(per_host, drop_remainder=True).map(_to_devices(ldc))
  ds = _options(ds.prefetch(tf.data.AUTOTUNE))

  def batch_indices(step):
    counters = range(start + step * per_host, start + (step + 1) * per_host)
    return source, [int(slot_of(global_position(tf.constant(c, tf.int64)))) for c in counters]

  yield from _iterate(ds, batch_indices if source.kind == "files" else None)


def _records_train(source, transform, seed, start_step, per_host, pi, pc, ldc):
  split = tfds.split_for_jax_process(source.split, process_index=pi, process_count=pc)
  builder = source.builder
  decoders = {"image": tfds.decode.SkipDecoding()}
  n = int(builder.as_dataset(split=split, decoders=decoders).cardinality())
  steps_per_epoch = n // per_host
  if steps_per_epoch == 0:
    raise ValueError(f"Host {pi} has {n} examples, fewer than one batch of {per_host}.")
  first_epoch, skip_steps = divmod(int(start_step), steps_per_epoch)
  for epoch in itertools.count(first_epoch):
    ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    ds = ds.enumerate().shuffle(
      min(n, _RECORDS_SHUFFLE_BUFFER),
      seed=(seed * 1_000_003 + epoch) & ((1 << 31) - 1),
      reshuffle_each_iteration=False,
    )
    if epoch == first_epoch and skip_steps:
      ds = ds.skip(skip_steps * per_host)  # Before decoding: skipped records are not decoded.

    def example(i, ex, epoch=epoch):
      aug_seed = tf.stack([tf.constant(seed, tf.int64), (epoch * n + i) * pc + pi])
      return {"image": transform(ex["image"], aug_seed), "label": tf.cast(ex["label"], tf.int32)}

    ds = _map_each(ds, example)
    ds = ds.batch(per_host, drop_remainder=True).map(_to_devices(ldc))
    yield from _iterate(_options(ds.prefetch(tf.data.AUTOTUNE)), None)


def _eval_transform(views, spec, source, mean):
  """The transform applying the test-time ``views`` (normalised with ``mean``, :func:`input_mean`),
  and the zero views padding examples get (same shape)."""
  channels = _channels(source)
  transform = augment_lib.views_transform(views, mean=mean, std=spec.std, channels=channels)
  blank = tf.zeros([views.num_views, views.crop, views.crop, channels], tf.float32)
  return transform, blank


def eval_batches(
  dataset: str,
  *,
  global_batch_size: int,
  method: str | None = None,
  scale: int | None = None,
  split: str | None = None,
  image_size: int | None = None,
  resize_size: int | None = None,
  data_dir: str | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  local_device_count: int | None = None,
  skip_corrupt: bool = False,
  crop_ratio: float | None = None,
  train_augment: str | None = None,
  normalization: str = "channel",
  mean_split: str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Finite iterator of {'image': float32 [D, B/D, V, H, W, C], 'label': int32 [D, B/D],
  'mask': bool [D, B/D]} (V = 10 for ten_crop, else 1; padding has mask False, label 0
  and a zero image). Every host yields ceil(ceil(N / P) / B) batches.
  ``crop_ratio`` with no ``resize_size``: the shorter side is resized to
  floor(image_size / crop_ratio) before the crops (eval_image_sizes).
  ``train_augment``: the run's train transform (``config.train_augment``; None: the dataset's),
  which the views follow (``augment.eval_views``: ten_crop's flips and padding).
  ``normalization``, ``mean_split``: the run's (:func:`input_mean`; the training split's mean)."""
  pi, pc, ldc, per_host = _layout(
    global_batch_size, process_index, process_count, local_device_count
  )
  hide_gpus_from_tf()
  spec = dataset_info(dataset)
  method = method or spec.eval_method
  size, resize = _sizes(spec, image_size, resize_size, crop_ratio)
  views = augment_lib.eval_views(
    method,
    train_augment=train_augment_name(dataset, train_augment),
    image_size=size,
    resize_size=resize,
    scale=scale,
  )
  if dataset == synthetic.NAME:
    yield from synthetic.eval_batches(
      num_views=views.num_views,
      per_host=per_host,
      local_device_count=ldc,
      image_size=(scale if method == "full_conv" else None) or image_size,
      process_index=pi,
    )
    return
  source = load_source(dataset, split, data_dir, train=False)
  if skip_corrupt:
    source = _drop_corrupt(source)
  mean = input_mean(dataset, normalization, mean_split, data_dir)
  transform, blank = _eval_transform(views, spec, source, mean)

  if source.kind == "records":
    yield from _records_eval(source, transform, blank, per_host, pi, pc, ldc)
  else:
    yield from _stream_eval(source, transform, blank, per_host, pi, pc, ldc)


def _stream_eval(source, transform, blank, per_host, pi, pc, ldc):
  """In-memory and file datasets: this host's block of the split, padded to whole batches."""
  n = source.num_examples
  block = _host_block(n, pi, pc)
  num_batches = math.ceil(math.ceil(n / pc) / per_host)
  total = num_batches * per_host
  idx = np.zeros(total, np.int64)
  idx[: len(block)] = block
  mask = np.arange(total) < len(block)
  labels_t = tf.constant(source.labels)
  load = _loader(source)

  def example(i, m):
    image = tf.cond(m, lambda: tf.ensure_shape(transform(load(i)), blank.shape), lambda: blank)
    label = tf.where(m, tf.gather(labels_t, i), 0)
    return {"image": image, "label": label, "mask": m}

  ds = tf.data.Dataset.from_tensor_slices((idx, mask))
  ds = _map_each(ds, example)
  ds = _options(ds.batch(per_host).map(_to_devices(ldc)).prefetch(tf.data.AUTOTUNE))

  def batch_indices(step):
    return source, idx[step * per_host : (step + 1) * per_host][
      mask[step * per_host : (step + 1) * per_host]
    ]

  yield from _iterate(ds, batch_indices if source.kind == "files" else None)


def _records_eval(source, transform, blank, per_host, pi, pc, ldc):
  builder = source.builder
  decoders = {"image": tfds.decode.SkipDecoding()}

  def host_ds(h):
    split = tfds.split_for_jax_process(source.split, process_index=h, process_count=pc)
    return builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)

  # even_splits gives host 0 the largest share: ceil(N / P).
  num_batches = math.ceil(int(host_ds(0).cardinality()) / per_host)
  real = _map_each(
    host_ds(pi),
    lambda ex: {
      "image": tf.ensure_shape(transform(ex["image"]), blank.shape),
      "label": tf.cast(ex["label"], tf.int32),
      "mask": tf.constant(True),
    },
  )
  pad = tf.data.Dataset.from_tensors(
    {"image": blank, "label": tf.constant(0, tf.int32), "mask": tf.constant(False)}
  ).repeat()
  ds = real.concatenate(pad).take(num_batches * per_host)
  ds = _options(ds.batch(per_host).map(_to_devices(ldc)).prefetch(tf.data.AUTOTUNE))
  yield from _iterate(ds, None)


def prefetch_to_device(iterator, size: int = 2, devices=None):
  """Puts batches on the local devices `size` steps ahead (leading axis = device)."""
  from flax import jax_utils

  return jax_utils.prefetch_to_device(iterator, size, devices=devices)


augment_lib = augment  # `augment` is also a train_batches argument name.
