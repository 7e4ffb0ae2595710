"""imagenet2012 through the real tfds builder, prepared from ImageNet-layout manual tars.

The test writes what a user downloads: ``ILSVRC2012_img_train.tar`` (one tar per synset, images
named ``<synset>_<n>.JPEG``) and ``ILSVRC2012_img_val.tar`` (``ILSVRC2012_val_%08d.JPEG``, labelled
by tfds' own ``validation_labels.txt`` in sorted file-name order), a few dozen 16 px JPEGs. Each
image is one flat colour that encodes its number, so a batch tells which examples it holds.
On that build: resume position, per-host split, exact evaluation and ten-crop.
"""

import collections
import io
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_jax import data
from resnet_jax.data import datasets

pytestmark = pytest.mark.slow

SIZE = 16
SYNSETS = 4
PER_SYNSET = 8  # 32 train images
NUM_VAL = 20  # not a multiple of the eval batch: padding is exercised


def _colour(code):
  """A flat RGB colour for example ``code``; 20 apart per level survives JPEG and resizing."""
  return (10 + 20 * (code % 12), 10 + 20 * (code // 12), 128)


def _jpeg(code):
  image = np.broadcast_to(np.asarray(_colour(code), np.uint8), (SIZE, SIZE, 3))
  return tf.io.encode_jpeg(np.ascontiguousarray(image), quality=95).numpy()


def _codes(images):
  """Example codes of normalised images [N, (V,) H, W, 3]."""
  pixels = np.asarray(images, np.float64) * datasets.IMAGENET_STD + datasets.IMAGENET_MEAN
  rgb = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
  levels = np.rint((rgb[:, :2] - 10) / 20).astype(int)
  assert np.abs(rgb[:, :2] - (10 + 20 * levels)).max() < 5, "an image is not one flat colour"
  return levels[:, 0] + 12 * levels[:, 1]


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _tar_bytes(members):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, payload in members:
      _add(tar, name, payload)
  return buf.getvalue()


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  """(data_dir, {train code: label}, {val code: label}) of a prepared imagenet2012."""
  data_dir = tmp_path_factory.mktemp("imagenet_tfds")
  manual = data_dir / "downloads" / "manual"
  manual.mkdir(parents=True)
  label_names = tfds.features.ClassLabel(
    names_file=tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
  )
  synsets = label_names.names[:SYNSETS]
  train_labels, members = {}, []
  for s, synset in enumerate(synsets):
    images = []
    for i in range(PER_SYNSET):
      code = s * PER_SYNSET + i
      train_labels[code] = label_names.str2int(synset)
      images.append((f"{synset}_{i + 1}.JPEG", _jpeg(code)))
    members.append((f"{synset}.tar", _tar_bytes(images)))
  (manual / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes(members))
  # tfds labels the validation images by sorted file name: line k of its validation_labels.txt.
  val_synsets = (
    tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt").read_text().split()
  )
  names = [f"ILSVRC2012_val_{k + 1:08d}.JPEG" for k in range(NUM_VAL)]
  val_labels = {k: label_names.str2int(val_synsets[k]) for k in range(NUM_VAL)}
  codes = {name: len(train_labels) + k for k, name in enumerate(names)}
  # Written out of order, as in the real tar; the labels follow the names, not the tar order.
  shuffled = [names[k] for k in np.random.default_rng(0).permutation(NUM_VAL)]
  (manual / "ILSVRC2012_img_val.tar").write_bytes(
    _tar_bytes([(name, _jpeg(codes[name])) for name in shuffled])
  )
  datasets.clear_cache()
  # The user's path: the first read prepares the dataset from the manual dir.
  source = datasets.load_source("imagenet2012", "train", str(data_dir))
  assert source.kind == "records" and source.num_examples == SYNSETS * PER_SYNSET
  val = {codes[n]: val_labels[k] for k, n in enumerate(names)}
  yield str(data_dir), train_labels, val
  datasets.clear_cache()


def _train(data_dir, **kw):
  args = dict(
    global_batch_size=8,
    seed=3,
    data_dir=data_dir,
    image_size=SIZE,
    augment="none",
    process_index=0,
    process_count=1,
    local_device_count=2,
  )
  args.update(kw)
  return data.train_batches("imagenet2012", **args)


def _examples(batch):
  """[(code, label)] of a batch, in order (masked padding left out)."""
  images, labels = batch["image"], batch["label"]
  keep = batch["mask"].reshape(-1) if "mask" in batch else np.ones(labels.size, bool)
  images = images.reshape((labels.size,) + images.shape[2:])[keep]
  return list(zip(_codes(images).tolist(), labels.reshape(-1)[keep].tolist()))


def test_labels_and_epochs_of_the_prepared_train_split(imagenet):
  data_dir, train_labels, _ = imagenet
  it = _train(data_dir)
  # 32 examples, batch 8: an epoch is 4 steps and holds every example once, correctly labelled.
  for _ in range(2):
    epoch = [e for _ in range(4) for e in _examples(next(it))]
    assert sorted(epoch) == sorted(train_labels.items())


def test_start_step_k_yields_the_kth_batch(imagenet):
  data_dir, _, _ = imagenet
  it = _train(data_dir)
  uninterrupted = [next(it) for _ in range(7)]
  for k in (2, 5):  # inside the first epoch, and inside the second
    resumed = next(_train(data_dir, start_step=k))
    for key in ("image", "label"):
      np.testing.assert_array_equal(resumed[key], uninterrupted[k][key])


def test_two_hosts_read_disjoint_train_examples(imagenet):
  data_dir, train_labels, _ = imagenet
  seen = []
  for host in range(2):
    it = _train(data_dir, process_index=host, process_count=2, local_device_count=1)
    # Per host: 16 examples, 4 per step: one epoch is 4 steps.
    codes = [c for _ in range(4) for c, _ in _examples(next(it))]
    assert len(codes) == len(set(codes)) == 16
    seen.append(set(codes))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(train_labels)


@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_counts_every_validation_image_once(imagenet, hosts):
  data_dir, _, val = imagenet
  examples, counts = [], []
  for host in range(hosts):
    batches = list(
      data.eval_batches(
        "imagenet2012",
        global_batch_size=8,
        data_dir=data_dir,
        image_size=SIZE,
        process_index=host,
        process_count=hosts,
        local_device_count=2,
      )
    )
    counts.append(len(batches))
    examples += [e for b in batches for e in _examples(b)]
  assert len(set(counts)) == 1  # every host steps the same number of times
  assert collections.Counter(examples) == collections.Counter(val.items())


def test_ten_crop_eval_runs_on_the_prepared_validation_split(imagenet):
  import jax
  from flax import jax_utils

  from resnet_jax.train import loop
  from resnet_jax.train import optim
  from resnet_jax.train import state as state_lib
  from resnet_jax.train.config import base_config

  data_dir, _, val = imagenet
  batches = list(
    data.eval_batches(
      "imagenet2012",
      global_batch_size=8,
      method="ten_crop",
      data_dir=data_dir,
      image_size=SIZE,
      process_index=0,
      process_count=1,
      local_device_count=1,
    )
  )
  views = np.concatenate([b["image"][0][b["mask"][0]] for b in batches])
  assert views.shape == (NUM_VAL, 10, SIZE, SIZE, 3)
  np.testing.assert_array_equal(views[:, 5:], views[:, :5, :, ::-1])  # the flips of the 5 crops
  assert sorted(_codes(views[:, 0])) == sorted(val)
  # The evaluator behind `resnet-jax eval --eval_method=ten_crop`, on a net a few channels wide.
  config = base_config()
  config.update(dataset="imagenet2012", data_dir=data_dir, image_size=SIZE, global_batch_size=8)
  config.model, config.cross_replica_bn = "resnet18", False
  config.model_overrides.update(stage_sizes=(1, 1, 1, 1), width_multiplier=1 / 16)
  model = loop.build_model(config, num_classes=1000)
  # Variables of init's shapes filled from numpy: compiling a random init costs far more here.
  shapes = state_lib.abstract_variables(model, (SIZE, SIZE, 3))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
    lambda a: (0.1 * rng.standard_normal(a.shape) + 0.5).astype(np.float32), shapes
  )
  tx = optim.create_optimizer(config, variables["params"])
  state = state_lib.train_state_from_variables(variables, tx)
  result = loop.Evaluator(config, model)(jax_utils.replicate(state), "ten_crop")
  assert result["eval_count"] == NUM_VAL
  assert 0 <= result["eval_top1_error"] <= 1 and np.isfinite(result["eval_loss"])
