"""Specification of resnet_jax.data: datasets, augmentation, sharded batches."""

import collections
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_jax import data
from resnet_jax.data import augment, datasets, digits


class _Output:
  """Everything written to file descriptors 1 and 2, and every log record, while it is open."""

  def __enter__(self):
    self.records, self.text = [], ""
    self._handler = logging.Handler()
    self._handler.emit = self.records.append
    self._level = logging.getLogger().level
    logging.getLogger().addHandler(self._handler)
    logging.getLogger().setLevel(logging.INFO)
    self._file = tempfile.TemporaryFile()
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    self._saved = [os.dup(1), os.dup(2)]
    os.dup2(self._file.fileno(), 1)
    os.dup2(self._file.fileno(), 2)
    return self

  def __exit__(self, *exc):
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    for fd, saved in zip((1, 2), self._saved):
      os.dup2(saved, fd)
      os.close(saved)
    logging.getLogger().removeHandler(self._handler)
    logging.getLogger().setLevel(self._level)
    self._file.seek(0)
    self.text = self._file.read().decode(errors="replace")
    self._file.close()


@pytest.fixture(scope="session")
def first_preparation(tmp_path_factory):
  """The digits prepared once into a fresh data dir, as the first run on a machine does, with what
  that printed and logged."""
  directory = str(tmp_path_factory.mktemp("tfds"))
  with _Output() as output:
    datasets.get_builder(datasets.dataset_info("digits"), directory)
  return directory, output


@pytest.fixture(scope="session")
def data_dir(first_preparation):
  return first_preparation[0]


def test_the_first_preparation_of_the_digits_is_one_line_of_ours(first_preparation):
  """Not tfds's "Downloading and preparing dataset Unknown size", its warnings that the dataset
  has no dataset_info.json yet, or its progress bars, for a dataset that downloads nothing."""
  directory, output = first_preparation
  assert output.text.strip() == "", output.text[-2000:]
  # What reaches the run log: warnings from anywhere, and our own INFO (runtime drops the rest).
  ours = os.path.dirname(datasets.__file__)
  lines = [
    r.getMessage()
    for r in output.records
    if r.levelno >= logging.WARNING or r.pathname.startswith(ours)
  ]
  assert lines == [
    f"Preparing the bundled digits dataset in {directory} (once; later runs reuse it)"
  ]
  assert tfds.core.utils.tqdm_utils._active  # the progress bars are back on for everyone else
  with _Output() as again:
    datasets.get_builder(datasets.dataset_info("digits"), directory)
  assert again.text.strip() == "" and not [r for r in again.records if r.levelno >= logging.WARNING]


@pytest.fixture(scope="session")
def digits_train(data_dir):
  return datasets.load_source("digits", "train", data_dir)


@pytest.fixture(scope="session")
def digits_test(data_dir):
  return datasets.load_source("digits", "test", data_dir)


def _photo_crops(rng, n, size=48):
  """Real photographs: random crops of sklearn's china/flower sample images."""
  from sklearn.datasets import load_sample_images

  photos = load_sample_images().images
  out = []
  for _ in range(n):
    p = photos[rng.integers(len(photos))]
    h, w = rng.integers(size, 2 * size, size=2)
    y, x = rng.integers(0, p.shape[0] - h), rng.integers(0, p.shape[1] - w)
    out.append(np.ascontiguousarray(p[y : y + h, x : x + w]))
  return out


def _write_folder(root, per_class=6, splits=("train", "test"), classes=("china", "flower")):
  rng = np.random.default_rng(0)
  for split in splits:
    for c in classes:
      os.makedirs(os.path.join(root, split, c), exist_ok=True)
      for i, img in enumerate(_photo_crops(rng, per_class)):
        jpg = tf.io.encode_jpeg(img).numpy()
        with open(os.path.join(root, split, c, f"{i:03d}.jpg"), "wb") as f:
          f.write(jpg)
  return root


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
  return _write_folder(str(tmp_path_factory.mktemp("folder")))


# ------------------------------------------------------------------ datasets


def test_digits_builder_has_4000_train_1000_test_real_digits(digits_train, digits_test):
  assert digits_train.num_examples == 4000 and digits_test.num_examples == 1000
  for s in (digits_train, digits_test):
    assert s.images.shape[1:] == (28, 28, 1) and s.images.dtype == np.uint8
    assert set(np.unique(s.labels)) == set(range(10))
    assert s.images.max() == 255 and s.images.min() == 0
  train_rows = {im.tobytes() for im in digits_train.images}
  assert not any(im.tobytes() in train_rows for im in digits_test.images)


def test_digits_split_is_stratified_and_documented():
  _, labels = digits.load_arrays()
  idx = digits.split_indices(labels)
  assert np.bincount(labels[idx["train"]]).tolist() == [400] * 10
  assert np.bincount(labels[idx["test"]]).tolist() == [100] * 10


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(ValueError, match="cifar10.*digits"):
    data.dataset_info("svhn")


def test_registry_exposes_cifar_45k_5k_split():
  spec = data.dataset_info("cifar10")
  assert spec.splits["train45k"] == "train[:45000]"
  assert spec.splits["val5k"] == "train[45000:]"


def test_imagenet_missing_raises_one_clear_line(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as e:
    next(
      data.train_batches(
        "imagenet2012",
        global_batch_size=8,
        seed=0,
        data_dir=str(tmp_path),
        process_index=0,
        process_count=1,
        local_device_count=1,
      )
    )
  msg = str(e.value)
  assert "\n" not in msg
  for needle in (
    "ILSVRC2012_img_train.tar",
    "ILSVRC2012_img_val.tar",
    os.path.join(str(tmp_path), "downloads", "manual"),
    "--config.data_dir",
  ):
    assert needle in msg


@pytest.fixture
def loopback_only(monkeypatch):
  """Every connection this process opens, which may go to 127.0.0.1 only: tests never reach the
  internet, and a try to is a failure here, not a download."""
  opened, real_connect = [], socket.socket.connect

  def connect(sock, address):
    opened.append(address)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
      raise AssertionError(f"a test tried to reach {address}")
    return real_connect(sock, address)

  monkeypatch.setattr(socket.socket, "connect", connect)
  for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    monkeypatch.delenv(name, raising=False)
  return opened


def _closed_loopback_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_download_on_a_machine_without_internet_fails_at_once_in_one_line(
  tmp_path, monkeypatch, loopback_only
):
  """tfds would retry an unreachable host for minutes; the refusal names the file that could not
  be fetched and where to put it instead, creates nothing, and tries no download."""
  port = _closed_loopback_port()
  url = f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"
  monkeypatch.setitem(datasets.DOWNLOADS, "cifar10", (url,))
  data_dir = tmp_path / "tfds"
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError) as e:
    datasets.get_builder(data.dataset_info("cifar10"), str(data_dir))
  assert time.monotonic() - start < 10
  manual = os.path.join(str(data_dir), "downloads", "manual")
  assert str(e.value) == (
    f"cannot download cifar10: {url} is unreachable (ConnectionRefusedError: Connection refused); "
    f"without internet, put cifar-10-binary.tar.gz in {manual} (tfds' manual_dir), or point "
    "--config.data_dir=... at a data_dir where cifar10 is prepared"
  )
  assert loopback_only == [("127.0.0.1", port)] and not data_dir.exists()
  # A file already in the manual dir needs no connection: tfds takes it from there.
  os.makedirs(manual)
  open(os.path.join(manual, "cifar-10-binary.tar.gz"), "wb").close()
  datasets._check_downloads_reachable(data.dataset_info("cifar10"), str(data_dir))
  assert loopback_only == [("127.0.0.1", port)]


# ------------------------------------------------------------------ augmentation


def test_paper_resize_keeps_shorter_side_in_256_480():
  image = tf.zeros([300, 500, 3], tf.uint8)
  sides = {min(augment.random_resize_shorter_side(image, [0, i]).shape[:2]) for i in range(60)}
  assert min(sides) >= 256 and max(sides) <= 480 and len(sides) > 20


def test_paper_train_crops_224():
  out = augment.paper_train(
    tf.zeros([300, 260, 3], tf.uint8),
    [1, 2],
    mean=datasets.IMAGENET_MEAN,
    std=datasets.IMAGENET_STD,
  )
  assert out.shape == (224, 224, 3) and out.dtype == tf.float32


def test_pca_lighting_is_a_per_channel_constant_shift():
  image = tf.random.uniform([16, 20, 3], 0, 255, seed=1)
  delta = (augment.pca_lighting(image, [3, 4], 0.1) - image).numpy()
  assert np.abs(delta - delta[0, 0]).max() < 1e-3
  assert np.abs(delta[0, 0]).max() > 0.01


def test_ten_crop_has_10_views_whose_flips_match():
  image = tf.random.uniform([40, 52, 3], 0, 255, seed=2)
  views = augment.ten_crop_views(image, 32).numpy()
  assert views.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(views[5:], views[:5, :, ::-1])
  np.testing.assert_array_equal(views[0], image.numpy()[:32, :32])
  np.testing.assert_array_equal(views[3], image.numpy()[-32:, -32:])


def test_full_conv_resizes_shorter_side_to_scale_and_takes_centre_square():
  views = augment.eval_views("full_conv", train_augment="paper", image_size=32, resize_size=None)
  assert (views.crop, views.resize) == (32, 32)  # default scale: the resize side or the crop
  views = augment.eval_views(
    "full_conv", train_augment="paper", image_size=32, resize_size=None, scale=40
  )
  out = augment.views_transform(views, mean=(0,) * 3, std=(1,) * 3, channels=3)(
    tf.zeros([30, 60, 3], tf.uint8)
  )
  assert out.shape == (1, 40, 40, 3)


@pytest.mark.parametrize(
  "train_augment, resize_size, pad, flip",
  [
    ("digits", None, 2, False),
    ("digits4", None, 4, False),  # the run's own padding, not the dataset's default 2
    ("cifar", None, 4, True),
    ("none", None, 0, False),
    ("paper", 256, 0, True),  # resized images: no padding, whatever the training's
    ("inception", 256, 0, True),
    ("cifar", 36, 0, True),
    (None, 256, 0, True),  # not trained here (converted weights): the paper's ten crops
  ],
)
def test_ten_crop_views_follow_the_runs_own_training(train_augment, resize_size, pad, flip):
  views = augment.eval_views(
    "ten_crop", train_augment=train_augment, image_size=32, resize_size=resize_size
  )
  assert views == augment.EvalViews("ten_crop", 32, resize_size, pad=pad, flip=flip)
  assert views.num_views == 10
  center = augment.eval_views(
    "center", train_augment=train_augment, image_size=32, resize_size=resize_size
  )
  assert center == augment.EvalViews("center", 32, resize_size) and center.num_views == 1


@pytest.mark.parametrize(
  "shape, views",
  [
    ((28, 28, 1), augment.EvalViews("center", 28)),
    ((28, 28, 1), augment.EvalViews("ten_crop", 28, pad=2, flip=False)),
    ((32, 30, 1), augment.EvalViews("ten_crop", 28, pad=4, flip=False)),
    ((32, 30, 3), augment.EvalViews("ten_crop", 28, pad=4, flip=True)),
    ((45, 60, 3), augment.EvalViews("center", 32, 37)),
    ((45, 60, 3), augment.EvalViews("ten_crop", 32, 37, flip=True)),
    ((60, 45, 3), augment.EvalViews("ten_crop", 32, 37, flip=False)),
  ],
)
def test_eval_and_export_apply_the_same_views(shape, views):
  """The tf.data views (eval, predict) and the jnp ones (export's serving function) of one decision
  are the same images: exactly without a resize, to bilinear rounding with one."""
  from resnet_jax.serving import export  # pylint: disable=g-import-not-at-top

  image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  want = augment.view_stack(tf.constant(image), views).numpy()
  got = np.asarray(export.view_stack(image[None].astype(np.float32), views))[0]
  assert want.shape == got.shape == (views.num_views, views.crop, views.crop, shape[-1])
  np.testing.assert_allclose(got, want, atol=1e-3 if views.resize else 0, rtol=0)
  if views.method == "ten_crop":
    np.testing.assert_array_equal(want[5:], want[:5, :, ::-1] if views.flip else want[:5])


def test_inception_crop_from_jpeg_bytes():
  jpg = tf.io.encode_jpeg(tf.cast(tf.random.uniform([50, 70, 3], 0, 255), tf.uint8))
  out = augment.inception_train(jpg, [0, 1], image_size=24, mean=(0,) * 3, std=(1,) * 3)
  assert out.shape == (24, 24, 3)


# ------------------------------------------------------------------ train batches


def _train(data_dir, **kw):
  args = dict(
    global_batch_size=64,
    seed=0,
    data_dir=data_dir,
    process_index=0,
    process_count=1,
    local_device_count=2,
  )
  args.update(kw)
  return data.train_batches("digits", **args)


def test_train_batches_shape_and_contract(data_dir):
  b = next(_train(data_dir))
  assert b["image"].shape == (2, 32, 28, 28, 1) and b["image"].dtype == np.float32
  assert b["label"].shape == (2, 32) and b["label"].dtype == np.int32
  assert abs(b["image"].mean()) < 0.5


def test_indivisible_batch_fails_before_reading(tmp_path):
  with pytest.raises(ValueError, match="multiple of"):
    next(
      data.train_batches(
        "digits",
        global_batch_size=30,
        seed=0,
        data_dir=str(tmp_path),
        process_index=0,
        process_count=2,
        local_device_count=4,
      )
    )
  assert not os.listdir(tmp_path)


def test_same_seed_same_batches_different_seed_different(data_dir):
  a, b, c = (next(_train(data_dir, seed=s)) for s in (7, 7, 8))
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["image"], c["image"])


def test_start_step_equals_kth_batch_of_uninterrupted_run(data_dir):
  # 4000 / 64 = 62.5 steps per epoch: step 70 lies in the second epoch.
  it = _train(data_dir, seed=3)
  for _ in range(70):
    next(it)
  expected = next(it)
  resumed = next(_train(data_dir, seed=3, start_step=70))
  np.testing.assert_array_equal(expected["image"], resumed["image"])
  np.testing.assert_array_equal(expected["label"], resumed["label"])


def _normalised_digits(source):
  return (source.images.astype(np.float32) - datasets.MNIST_MEAN[0]) / datasets.MNIST_STD[0]


def test_epoch_visits_every_example_once_and_reshuffles(data_dir, digits_train):
  # Unaugmented, so each batch row is byte-for-byte one stored example.
  it = _train(data_dir, global_batch_size=100, augment="none", seed=5)
  rows = lambda b: [im.tobytes() for im in b["image"].reshape(-1, 28, 28, 1)]
  # One epoch (40 steps of 100) is the split exactly: every example once, none twice.
  epoch = [r for _ in range(40) for r in rows(next(it))]
  expected = collections.Counter(im.tobytes() for im in _normalised_digits(digits_train))
  assert collections.Counter(epoch) == expected
  second = [r for _ in range(40) for r in rows(next(it))]
  assert collections.Counter(second) == expected and second != epoch


def test_hosts_read_disjoint_examples(data_dir, digits_train):
  # One step of 4000 on 2 hosts = each host's whole 2000-example block, unaugmented.
  raw = {im.tobytes(): i for i, im in enumerate(_normalised_digits(digits_train))}
  seen = []
  for h in range(2):
    b = next(
      _train(
        data_dir,
        process_index=h,
        process_count=2,
        local_device_count=1,
        global_batch_size=4000,
        augment="none",
      )
    )
    seen.append({raw[im.tobytes()] for im in b["image"].reshape(-1, 28, 28, 1)})
    assert len(seen[-1]) == 2000
  assert not seen[0] & seen[1]


# ------------------------------------------------------------------ eval batches


@pytest.mark.parametrize("devices", [1, 2, 4])
@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_is_exact_across_hosts_and_devices(data_dir, digits_test, devices, hosts):
  seen, counts = [], []
  for h in range(hosts):
    batches = list(
      data.eval_batches(
        "digits",
        global_batch_size=96,
        data_dir=data_dir,
        process_index=h,
        process_count=hosts,
        local_device_count=devices,
      )
    )
    counts.append(len(batches))
    for b in batches:
      assert b["image"].shape == (devices, 96 // hosts // devices, 1, 28, 28, 1)
      m = b["mask"]
      seen.append((b["image"][m][:, 0], b["label"][m]))
  assert len(set(counts)) == 1
  assert counts[0] == int(np.ceil(np.ceil(1000 / hosts) / (96 // hosts)))
  images = np.concatenate([s[0] for s in seen])
  labels = np.concatenate([s[1] for s in seen])
  assert len(images) == 1000
  expected = (digits_test.images.astype(np.float32) - datasets.MNIST_MEAN[0]) / datasets.MNIST_STD[
    0
  ]
  order = np.lexsort(images.reshape(1000, -1).T)
  order_expected = np.lexsort(expected.reshape(1000, -1).T)
  np.testing.assert_allclose(images[order], expected[order_expected], atol=1e-5)
  np.testing.assert_array_equal(labels[order], digits_test.labels[order_expected])


def test_eval_ten_crop_pads_by_the_runs_own_augmentation(data_dir, digits_test):
  """A run trained with digits4 (4 px pad) is tested on crops shifted by 4 px, one trained with the
  dataset's default (digits: 2 px) by 2; neither is mirrored."""
  image = (digits_test.images[0].astype(np.float32) - datasets.MNIST_MEAN[0]) / datasets.MNIST_STD[
    0
  ]
  blank = -datasets.MNIST_MEAN[0] / datasets.MNIST_STD[0]  # a zero pixel, normalised
  for train_augment, pad in ((None, 2), ("digits4", 4)):
    batch = next(
      data.eval_batches(
        "digits",
        global_batch_size=4,
        method="ten_crop",
        train_augment=train_augment,
        data_dir=data_dir,
        process_index=0,
        process_count=1,
        local_device_count=1,
      )
    )
    views = batch["image"][0, 0]  # [10, 28, 28, 1]
    np.testing.assert_allclose(views[0, pad:, pad:], image[:-pad, :-pad], atol=1e-5)
    np.testing.assert_allclose(views[0, :pad], blank, atol=1e-5)
    np.testing.assert_array_equal(views[5:], views[:5])


# ------------------------------------------------------------------ image folders


def test_image_folder_of_real_jpegs_flows_through(folder):
  b = next(
    data.train_batches(
      "image_folder",
      global_batch_size=8,
      seed=0,
      data_dir=folder,
      image_size=32,
      process_index=0,
      process_count=1,
      local_device_count=2,
    )
  )
  assert b["image"].shape == (2, 4, 32, 32, 3) and set(b["label"].ravel()) <= {0, 1}
  for method, views in (("center", 1), ("ten_crop", 10)):
    ev = list(
      data.eval_batches(
        "image_folder",
        global_batch_size=8,
        method=method,
        data_dir=folder,
        image_size=32,
        process_index=0,
        process_count=1,
        local_device_count=2,
      )
    )
    assert ev[0]["image"].shape == (2, 4, views, 32, 32, 3)
    assert sum(int(e["mask"].sum()) for e in ev) == 12
  ev = next(
    data.eval_batches(
      "image_folder",
      global_batch_size=4,
      method="full_conv",
      scale=40,
      data_dir=folder,
      image_size=32,
      process_index=0,
      process_count=1,
      local_device_count=1,
    )
  )
  assert ev["image"].shape == (1, 4, 1, 40, 40, 3)


def test_corrupt_jpeg_names_the_file_or_is_skipped_and_counted(tmp_path, caplog):
  def hang(*_):
    raise TimeoutError("corrupt JPEG made the pipeline hang")

  signal.signal(signal.SIGALRM, hang)
  signal.alarm(60)
  root = _write_folder(str(tmp_path), per_class=3, splits=("train",))
  bad = os.path.join(root, "train", "flower", "001.jpg")
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
  kw = dict(
    global_batch_size=6,
    seed=0,
    data_dir=root,
    image_size=16,
    process_index=0,
    process_count=1,
    local_device_count=1,
  )
  with pytest.raises(data.CorruptImageError, match="001.jpg"):
    for _ in range(3):  # 6 examples, batch 6: the bad file is in every batch.
      next(data.train_batches("image_folder", **kw))
  with caplog.at_level(logging.WARNING):
    b = next(data.train_batches("image_folder", skip_corrupt=True, **kw))
  assert b["image"].shape == (1, 6, 16, 16, 3)
  assert "Skipped 1 corrupt" in caplog.text
  signal.alarm(0)


# ------------------------------------------------------------------ mocked tfds datasets


# cifar10 goes through the in-memory path (host block = half of the 12 examples: 2 batches
# of 4, 6 real); imagenet2012 through the tfrecord stream, where mock_data ignores the
# tfds subsplit of each host and serves all 12 examples (3 batches, all real).
@pytest.mark.parametrize(
  "name,train_shape,eval_shape,num_batches,num_real",
  [
    ("cifar10", (2, 4, 32, 32, 3), (2, 2, 1, 32, 32, 3), 2, 6),
    ("imagenet2012", (2, 4, 24, 24, 3), (2, 2, 1, 24, 24, 3), 3, 12),
  ],
)
def test_mocked_tfds_code_paths(name, train_shape, eval_shape, num_batches, num_real):
  datasets.clear_cache()
  size = 24 if name == "imagenet2012" else None
  with tfds.testing.mock_data(num_examples=12):
    b = next(
      data.train_batches(
        name,
        global_batch_size=8,
        seed=0,
        image_size=size,
        process_index=0,
        process_count=1,
        local_device_count=2,
      )
    )
    assert b["image"].shape == train_shape and b["label"].shape == train_shape[:2]
    ev = list(
      data.eval_batches(
        name,
        global_batch_size=8,
        image_size=size,
        process_index=1,
        process_count=2,
        local_device_count=2,
      )
    )
    assert ev[0]["image"].shape == eval_shape and len(ev) == num_batches
    assert sum(int(e["mask"].sum()) for e in ev) == num_real
  datasets.clear_cache()


def test_only_one_run_at_a_time_prepares_a_local_dataset(tmp_path):
  # Two runs starting together on a fresh machine (sweep --parallel, test workers) both building the
  # digits failed the second at tfds's final rename; the second must wait for the first instead.
  order = []
  first_inside = threading.Event()

  def hold():
    with datasets._one_preparer(str(tmp_path), "digits"):
      order.append("first in")
      first_inside.set()
      time.sleep(0.3)
      order.append("first out")

  holder = threading.Thread(target=hold)
  holder.start()
  first_inside.wait(5)
  with datasets._one_preparer(str(tmp_path), "digits"):
    order.append("second in")
  holder.join()
  assert order == ["first in", "first out", "second in"]


def test_tensorflow_loads_without_keras_and_tf_keras_still_works():
  """TensorFlow's load-time Keras import (~2 s of every process start) is skipped; ``tf.keras``
  still loads Keras when something asks for it."""
  from conftest import run_python

  probe = (
    "import sys\n"
    "from resnet_jax import runtime\n"
    "tf = runtime.import_tensorflow()\n"
    "print('keras' in sys.modules)\n"
    "print(tf.keras.layers.Dense(3).units, 'keras' in sys.modules)\n"
  )
  proc = run_python(probe)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["False", "3", "True"]


# ------------------------------------------------------ modern recipe inputs and eval sizes

RANDAUGMENT = "rand-m7-mstd0.5-inc1"


def test_randaugment_and_erasing_are_a_function_of_seed_step_and_example(data_dir):
  kw = dict(seed=3, randaugment=RANDAUGMENT, random_erasing=0.25)
  it = _train(data_dir, **kw)
  for _ in range(3):
    next(it)
  expected = next(it)
  resumed = next(_train(data_dir, start_step=3, **kw))
  np.testing.assert_array_equal(expected["image"], resumed["image"])
  np.testing.assert_array_equal(expected["label"], resumed["label"])
  other_seed = next(_train(data_dir, start_step=3, **{**kw, "seed": 4}))
  assert not np.array_equal(expected["image"], other_seed["image"])
  # The same image at two stream positions (two epochs) is augmented differently.
  t = augment.train_transform(
    "digits",
    image_size=28,
    mean=datasets.MNIST_MEAN,
    std=datasets.MNIST_STD,
    channels=1,
    randaugment=RANDAUGMENT,
    random_erasing=0.25,
  )
  image = datasets.load_source("digits", "train", data_dir).images[0]
  outs = [t(image, tf.constant([3, p], tf.int64)).numpy() for p in (5, 5, 6, 7, 8)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not all(np.array_equal(outs[0], o) for o in outs[2:])


def test_randaugment_path_adds_only_randaugment_on_pil_like_pixels(data_dir):
  plain = next(_train(data_dir, seed=5))["image"]
  # No layers: the crops (their seeds untouched), the uint8 rounding and normalisation alone.
  np.testing.assert_array_equal(
    plain, next(_train(data_dir, seed=5, randaugment="rand-n0"))["image"]
  )
  ra = next(_train(data_dir, seed=5, randaugment=RANDAUGMENT))["image"].reshape(64, -1)
  changed = np.mean([not np.array_equal(a, b) for a, b in zip(plain.reshape(64, -1), ra)])
  assert 0.5 < changed < 0.95  # two layers, each applied with p 0.5: about 3 in 4 images change
  pixels = ra * datasets.MNIST_STD[0] + datasets.MNIST_MEAN[0]
  np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)  # uint8 levels, as PIL's
  assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3


def test_random_erasing_replaces_one_box_with_noise_and_leaves_the_crop_alone(data_dir):
  plain = next(_train(data_dir, seed=5))["image"].reshape(64, 28, 28)
  erased = next(_train(data_dir, seed=5, random_erasing=1.0))["image"].reshape(64, 28, 28)
  noise, boxes = [], 0
  for p, e in zip(plain, erased):
    rows, cols = np.nonzero(p != e)
    if not len(rows):
      continue  # every one of the 10 attempts drew a box larger than the image
    boxes += 1
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert (p != e)[top:bottom, left:right].all()  # one filled rectangle
    area = (bottom - top) * (right - left)
    assert 0.5 * 0.02 * 784 <= area <= 784 / 3 + 28  # [2 %, 1/3] of the image, up to rounding
    noise.append(e[top:bottom, left:right].ravel())
  assert boxes >= 56
  noise = np.concatenate(noise)
  assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1  # per-pixel N(0, 1)


def test_a_malformed_randaugment_string_is_one_line(data_dir):
  with pytest.raises(ValueError, match="bad RandAugment string 'rand-x7'"):
    next(_train(data_dir, randaugment="rand-x7"))


def test_eval_image_sizes_follow_the_crop_ratio():
  assert data.eval_image_sizes("imagenet2012", 224) == (224, 256)  # unchanged without a ratio
  assert data.eval_image_sizes("imagenet2012", 160) == (160, 183)
  assert data.eval_image_sizes("imagenet2012", 224, 0.95) == (224, 235)  # timm: floor(224 / 0.95)
  assert data.eval_image_sizes("imagenet2012", 224, 0.875) == (224, 256)
  assert data.eval_image_sizes("digits") == (28, None)
  assert data.eval_image_sizes("digits", 24, 0.95) == (24, 25)


def test_eval_at_its_own_size_and_crop_ratio_is_resize_then_centre_crop(folder, data_dir):
  layout = dict(process_index=0, process_count=1, local_device_count=1)
  ev = next(
    data.eval_batches(
      "image_folder",
      global_batch_size=4,
      data_dir=folder,
      image_size=32,
      crop_ratio=0.8,
      **layout,
    )
  )
  assert ev["image"].shape == (1, 4, 1, 32, 32, 3)
  # By hand: the first test image, shorter side to floor(32 / 0.8) = 40, the centre 32 x 32.
  path = sorted(os.listdir(os.path.join(folder, "test", "china")))[0]
  with open(os.path.join(folder, "test", "china", path), "rb") as f:
    image = tf.io.decode_jpeg(f.read()).numpy().astype(np.float32)
  h, w = image.shape[:2]
  new_h, new_w = (40, round(w * 40 / h)) if h <= w else (round(h * 40 / w), 40)
  resized = tf.image.resize(image, [new_h, new_w], "bilinear").numpy()
  top, left = (new_h - 32) // 2, (new_w - 32) // 2
  want = (
    resized[top : top + 32, left : left + 32] - datasets.IMAGENET_MEAN
  ) / datasets.IMAGENET_STD
  np.testing.assert_allclose(ev["image"][0, 0, 0], want, atol=1e-4)
  digits_eval = next(
    data.eval_batches(
      "digits", global_batch_size=4, data_dir=data_dir, image_size=24, crop_ratio=0.95, **layout
    )
  )
  assert digits_eval["image"].shape == (1, 4, 1, 24, 24, 1)
