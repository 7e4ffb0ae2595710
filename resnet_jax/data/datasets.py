"""Dataset registry (as data) and loaders that turn a (name, split) into a `Source`.

A `Source` is what the pipeline indexes into. Three storage kinds:
  * ``memory``  small datasets (digits, mnist, cifar10/100): the whole split decoded once
                into uint8 numpy arrays and cached in this process (`clear_cache()`).
  * ``files``   image folders: a list of file paths + labels; files are read and decoded
                lazily, so random access is free and nothing skipped is decoded.
  * ``records`` tfds tfrecords read as a stream (imagenet2012): images stay JPEG bytes
                until the augmentation decodes (and crops) them.

Splits: each entry names its default train and eval split and a table of split aliases
(e.g. cifar ``train45k`` = ``train[:45000]``, ``val5k`` = ``train[45000:]``, paper §4.2).
A split argument may be an alias or any tfds split string.

data_dir: default ``~/tensorflow_datasets`` (or $TFDS_DATA_DIR). For ``image_folder`` the
data_dir is the folder root laid out as ``root/<split>/<class_name>/<image>.jpg|png``
(tfds.folder_dataset.ImageFolder's layout). imagenet2012 needs the two ILSVRC tars in
``<data_dir>/downloads/manual``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import inspect
import logging
import os
import socket
import urllib.parse
import urllib.request
from typing import Any, Mapping

import numpy as np

import tensorflow_datasets as tfds
from etils import epath

from resnet_jax.data import digits as digits_lib
from resnet_jax.data.tf_device import (
  hide_gpus_from_tf,
)  # also re-exported: pipeline imports it here


class DatasetNotFoundError(ValueError):
  """The dataset's files are not where they should be (one line says what to put where)."""


class CorruptImageError(ValueError):
  """An image file could not be decoded; the message names the file."""


IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
MNIST_MEAN = (0.1307 * 255,)
MNIST_STD = (0.3081 * 255,)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything the pipeline needs to know about one dataset.

  image_size: the train/eval crop side. resize_size: the shorter side before the centre
  crop at test time (None for 32/28 px datasets: no resize). mean/std: per channel, in
  0..255 pixel units (images are normalised as (x - mean) / std).
  """

  name: str
  builder: str  # tfds builder name ('' for image_folder)
  storage: str  # 'memory' | 'files' | 'records'
  num_classes: int | None  # None: read from the data (image_folder)
  image_shape: tuple[int, int, int]  # network input shape (H, W, C)
  splits: Mapping[str, str]  # alias -> tfds split string
  train_split: str
  eval_split: str
  train_augment: str  # augment.TRAIN_AUGMENTS key
  eval_method: str  # augment.EVAL_METHODS key
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int
  resize_size: int | None
  download: bool = True  # tfds may download (network) if not prepared


_CIFAR_SPLITS = {
  "train": "train",
  "test": "test",
  "train45k": "train[:45000]",
  "val5k": "train[45000:]",
}

REGISTRY: dict[str, DatasetSpec] = {
  s.name: s
  for s in [
    DatasetSpec(
      "digits",
      "handwritten_digits",
      "memory",
      10,
      (28, 28, 1),
      {"train": "train", "test": "test"},
      "train",
      "test",
      "digits",
      "center",
      MNIST_MEAN,
      MNIST_STD,
      28,
      None,
      download=False,
    ),
    DatasetSpec(
      "mnist",
      "mnist",
      "memory",
      10,
      (28, 28, 1),
      {"train": "train", "test": "test"},
      "train",
      "test",
      "digits",
      "center",
      MNIST_MEAN,
      MNIST_STD,
      28,
      None,
    ),
    DatasetSpec(
      "cifar10",
      "cifar10",
      "memory",
      10,
      (32, 32, 3),
      _CIFAR_SPLITS,
      "train",
      "test",
      "cifar",
      "center",
      (0.4914 * 255, 0.4822 * 255, 0.4465 * 255),
      (0.2470 * 255, 0.2435 * 255, 0.2616 * 255),
      32,
      None,
    ),
    DatasetSpec(
      "cifar100",
      "cifar100",
      "memory",
      100,
      (32, 32, 3),
      _CIFAR_SPLITS,
      "train",
      "test",
      "cifar",
      "center",
      (0.5071 * 255, 0.4865 * 255, 0.4409 * 255),
      (0.2673 * 255, 0.2564 * 255, 0.2762 * 255),
      32,
      None,
    ),
    DatasetSpec(
      "imagenet2012",
      "imagenet2012",
      "records",
      1000,
      (224, 224, 3),
      {"train": "train", "validation": "validation"},
      "train",
      "validation",
      "paper",
      "center",
      IMAGENET_MEAN,
      IMAGENET_STD,
      224,
      256,
      download=False,
    ),
    DatasetSpec(
      "image_folder",
      "",
      "files",
      None,
      (224, 224, 3),
      {"train": "train", "test": "test", "validation": "validation"},
      "train",
      "test",
      "paper",
      "center",
      IMAGENET_MEAN,
      IMAGENET_STD,
      224,
      256,
      download=False,
    ),
    # Random batches made in memory (data/synthetic.py): times the step without input.
    DatasetSpec(
      "synthetic",
      "",
      "synthetic",
      1000,
      (224, 224, 3),
      {"train": "train", "test": "test"},
      "train",
      "test",
      "",
      "center",
      (0.0, 0.0, 0.0),
      (1.0, 1.0, 1.0),
      224,
      None,
      download=False,
    ),
  ]
}


def list_datasets() -> list[str]:
  return sorted(REGISTRY)


def dataset_info(name: str) -> DatasetSpec:
  """The registry entry for `name`; ValueError naming the known datasets otherwise."""
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(
      f"Unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}."
    ) from None


def train_augment_name(dataset: str, train_augment: str | None = None) -> str:
  """The train transform a run of ``dataset`` uses: ``train_augment`` (``config.train_augment``), or
  where that is empty the dataset's default. Training and the test-time views both read it."""
  return train_augment or dataset_info(dataset).train_augment


def resolve_split(spec: DatasetSpec, split: str | None, *, train: bool) -> str:
  if split is None:
    split = spec.train_split if train else spec.eval_split
  return spec.splits.get(split, split)


def default_data_dir() -> str:
  return os.fspath(
    epath.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
  )


@dataclasses.dataclass
class Source:
  """One split of one dataset, ready to be indexed (memory/files) or streamed (records)."""

  spec: DatasetSpec
  split: str
  kind: str
  num_examples: int
  num_classes: int
  labels: np.ndarray | None = None  # int32 [N] (memory, files)
  images: np.ndarray | None = None  # uint8 [N, H, W, C] (memory)
  paths: np.ndarray | None = None  # object/str [N] (files)
  builder: Any = None  # tfds builder (records)


_CACHE: dict[tuple[str, str, str], Source] = {}


def clear_cache() -> None:
  _CACHE.clear()


_ORIGINAL_DOWNLOAD_AND_PREPARE = inspect.getattr_static(
  tfds.core.DatasetBuilder, "download_and_prepare"
)


def _tfds_is_mocked() -> bool:
  """True inside tfds.testing.mock_data (it replaces download_and_prepare)."""
  current = inspect.getattr_static(tfds.core.DatasetBuilder, "download_and_prepare")
  return current is not _ORIGINAL_DOWNLOAD_AND_PREPARE


def imagenet_missing_message(data_dir) -> str:
  manual = epath.Path(data_dir) / "downloads" / "manual"
  return (
    f"imagenet2012 is not prepared: put ILSVRC2012_img_train.tar and "
    f"ILSVRC2012_img_val.tar in {manual} (the manual dir <data_dir>/downloads/manual; "
    f"point --config.data_dir=... at a different <data_dir>) and run again."
  )


@contextlib.contextmanager
def _one_preparer(data_dir: str, name: str):
  """Holds an exclusive lock while a local dataset is built.

  Runs that start together on a fresh machine (a sweep with --parallel, a test runner's workers)
  would otherwise all build the same dataset, and tfds's final rename fails for every run but the
  first. A bucket has no file locks; there the first run to finish wins, as before.
  """
  if "://" in data_dir:
    yield
    return
  epath.Path(data_dir).mkdir(parents=True, exist_ok=True)
  # flock needs a local file descriptor: this path is local by the check above.
  with open(os.path.join(data_dir, f".{name}.prepare.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _is_prepared(builder) -> bool:
  """``builder.is_prepared()``, less tfds's warning, at every first run, that a dataset not yet
  prepared has no ``dataset_info.json``: that file is what it checks for."""
  return (epath.Path(builder.data_path) / "dataset_info.json").exists()


@contextlib.contextmanager
def _progress_bars(shown: bool):
  """tfds's progress bars on or off while a dataset is prepared, as they were afterwards.

  Off for the bundled digits: a few seconds of writing, nothing downloaded, and four bars of it
  would bury the run's first lines; a download's bars say how long it will take.
  """
  before = getattr(tfds.core.utils.tqdm_utils, "_active", True)
  tfds.display_progress_bar(shown)
  try:
    yield
  finally:
    tfds.display_progress_bar(before)


# What tfds fetches to prepare each dataset it downloads (its url_checksums files): on a machine
# without internet these are the files to fetch elsewhere and put in the manual dir.
DOWNLOADS: dict[str, tuple[str, ...]] = {
  "mnist": tuple(
    f"https://storage.googleapis.com/cvdf-datasets/mnist/{f}-ubyte.gz"
    for f in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
  ),
  "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
  "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
}
_CONNECT_TIMEOUT_S = 5.0


def _check_downloads_reachable(spec: DatasetSpec, data_dir: str) -> None:
  """Refuses at once, in one line, a download that cannot happen: tfds retries an unreachable
  host with back-off and progress bars for minutes. Each file's host (or the proxy the
  environment names for it) must accept a connection within seconds; files already in the manual
  dir (tfds takes them from there) need none."""
  manual = epath.Path(data_dir) / "downloads" / "manual"
  missing = [u for u in DOWNLOADS.get(spec.builder, ()) if not (manual / _file_name(u)).exists()]
  for url in missing:
    reason = _unreachable(url)
    if reason:
      raise DatasetNotFoundError(
        f"cannot download {spec.name}: {url} is unreachable ({reason}); without internet, put "
        f"{', '.join(_file_name(u) for u in missing)} in {manual} (tfds' manual_dir), or point "
        f"--config.data_dir=... at a data_dir where {spec.builder} is prepared"
      )


def _file_name(url: str) -> str:
  return url.rsplit("/", 1)[-1]


def _unreachable(url: str) -> str | None:
  """Why no connection to ``url``'s host (or its proxy) opens within seconds; None if one does."""
  parts = urllib.parse.urlsplit(url)
  host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and not urllib.request.proxy_bypass(host):
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = proxy_parts.hostname, proxy_parts.port or 80
  try:
    socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
  except TimeoutError:
    return f"no answer from {host}:{port} in {_CONNECT_TIMEOUT_S:.0f} s"
  except OSError as e:  # no route, no name resolution (offline DNS), connection refused
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


def get_builder(spec: DatasetSpec, data_dir: str | None = None):
  """The tfds builder for a registry entry, prepared (built/downloaded) if needed."""
  hide_gpus_from_tf()
  # A folder or a bucket URL (tfds reads either; its TFRecords through TensorFlow's file system).
  data_dir = os.fspath(epath.Path(data_dir).expanduser()) if data_dir else default_data_dir()
  if spec.name == "digits":
    builder = digits_lib.HandwrittenDigits(data_dir=data_dir)
  else:
    builder = tfds.builder(spec.builder, data_dir=data_dir)
  if _tfds_is_mocked() or _is_prepared(builder):
    return builder
  if spec.name == "imagenet2012":
    manual = epath.Path(data_dir) / "downloads" / "manual"
    wanted = ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"]
    if not all((manual / f).exists() for f in wanted):
      raise DatasetNotFoundError(imagenet_missing_message(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return builder
  if spec.name == "digits":
    logging.info("Preparing the bundled digits dataset in %s (once; later runs reuse it)", data_dir)
  else:
    _check_downloads_reachable(spec, data_dir)
    logging.info("Preparing %s in %s", spec.builder, data_dir)
  try:
    with _one_preparer(data_dir, spec.name), _progress_bars(spec.name != "digits"):
      if not _is_prepared(builder):  # another run may have built it while this one waited
        builder.download_and_prepare()
  except Exception as e:  # Network down, disk full, ...: say what and where in one line.
    raise DatasetNotFoundError(
      f"Could not download/prepare {spec.name} into {data_dir} ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}); prepare it with network access or "
      f"point --config.data_dir=... at a prepared copy."
    ) from e
  return builder


def _image_folder_source(spec: DatasetSpec, split: str, root: str | None) -> Source:
  if not root or not epath.Path(root).expanduser().is_dir():
    raise DatasetNotFoundError(
      f"image_folder needs --config.data_dir=<root> with root/<split>/<class>/<image> "
      f"files; got {root!r}."
    )
  root = epath.Path(root).expanduser()
  builder = tfds.folder_dataset.ImageFolder(os.fspath(root))
  if split not in builder.info.splits:
    raise ValueError(
      f"Split {split!r} not found in {root}; found: {sorted(builder.info.splits.keys())}."
    )
  label_feature = builder.info.features["label"]
  paths, labels = [], []
  exts = (".jpg", ".jpeg", ".png")  # ImageFolder's supported formats
  for label_dir in sorted((root / split).iterdir()):
    if not label_dir.is_dir():
      continue
    for f in sorted(label_dir.iterdir()):
      if f.name.lower().endswith(exts):
        paths.append(os.fspath(f))
        labels.append(label_feature.str2int(label_dir.name))
  return Source(
    spec,
    split,
    "files",
    len(paths),
    label_feature.num_classes,
    labels=np.asarray(labels, np.int32),
    paths=np.asarray(paths, dtype=object),
  )


def load_source(
  name: str, split: str | None = None, data_dir: str | None = None, *, train: bool = True
) -> Source:
  """The Source for `name`/`split` (split None: the registry's train or eval default)."""
  spec = dataset_info(name)
  split = resolve_split(spec, split, train=train)
  key = (name, split, str(data_dir))
  if key in _CACHE and not _tfds_is_mocked():
    return _CACHE[key]
  hide_gpus_from_tf()
  if spec.storage == "files":
    source = _image_folder_source(spec, split, data_dir)
  elif spec.storage == "memory":
    builder = get_builder(spec, data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False).batch(4096)
    chunks = list(tfds.as_numpy(ds))  # (batch_size=-1 aborts under mock_data)
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in ("image", "label")}
    images = np.asarray(arrays["image"], np.uint8)
    if images.ndim == 3:
      images = images[..., None]
    source = Source(
      spec,
      split,
      "memory",
      len(images),
      spec.num_classes,
      labels=np.asarray(arrays["label"], np.int32),
      images=images,
    )
  else:
    builder = get_builder(spec, data_dir)
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    n = int(ds.cardinality())
    source = Source(spec, split, "records", n, spec.num_classes, builder=builder)
  if not _tfds_is_mocked():
    _CACHE[key] = source
  return source


def num_examples(dataset: str, split: str | None = None, data_dir: str | None = None) -> int:
  """Number of examples in a split (split None: the registry's default eval split)."""
  return load_source(dataset, split, data_dir, train=False).num_examples


def class_names(name: str, data_dir: str | None = None) -> list[str]:
  """The dataset's own label names: its tfds ``ClassLabel`` names, index i = class i.

  ImageNet gives WordNet synsets (``n01440764``), the digits and MNIST ``'0'`` ... ``'9'``, an
  image folder its class folder names. Read from the builder's metadata (the prepared
  ``dataset_info.json`` where there is one, else the builder's code): nothing is downloaded or
  built. A dataset whose names only come with its download (CIFAR before it is prepared) gives
  tfds' placeholder ``'0'`` ... ``'n-1'``.
  """
  spec = dataset_info(name)
  hide_gpus_from_tf()
  data_dir = os.fspath(epath.Path(data_dir).expanduser()) if data_dir else default_data_dir()
  if spec.storage == "files":
    if not epath.Path(data_dir).is_dir():
      raise DatasetNotFoundError(
        f"image_folder class names are its folder names, but {data_dir!r} is not a folder; "
        f"point --config.data_dir=... at root/<split>/<class>/ as in training"
      )
    builder = tfds.folder_dataset.ImageFolder(data_dir)
  elif spec.name == "digits":
    builder = digits_lib.HandwrittenDigits(data_dir=data_dir)
  else:
    builder = tfds.builder(spec.builder, data_dir=data_dir)
  return list(builder.info.features["label"].names)


def readable_class_names(name: str) -> list[str] | None:
  """Human-readable names in class order where tfds ships them (ImageNet: ``'tench, Tinca
  tinca'`` for ``n01440764``), else None (the label names are readable already)."""
  if dataset_info(name).builder != "imagenet2012":
    return None
  # tfds keeps ImageNet's readable names (in synset order) with its SI-Score dataset.
  from tensorflow_datasets.datasets.siscore import labels  # pylint: disable=g-import-not-at-top

  return list(labels.IMAGENET_LABELS_LIST)
