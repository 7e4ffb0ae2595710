"""dataset='synthetic': random batches in the pipeline's layout, with no files, tf.data or tfds."""

import subprocess

import numpy as np
import pytest
from conftest import REPO, command_env, train_command

from resnet_jax import data
from resnet_jax.data import synthetic


def test_batches_have_the_pipelines_layout_and_are_made_once():
  it = data.train_batches(
    "synthetic",
    global_batch_size=8,
    seed=3,
    image_size=32,
    process_index=0,
    process_count=1,
    local_device_count=2,
  )
  first, second = next(it), next(it)
  assert first["image"].shape == (2, 4, 32, 32, 3) and first["image"].dtype == np.float32
  assert first["label"].shape == (2, 4) and first["label"].dtype == np.int32
  assert first is second  # the same batch every step: a trainer puts it on the devices once
  assert 0 <= first["label"].min() and first["label"].max() < synthetic.NUM_CLASSES
  assert abs(float(first["image"].std()) - 1.0) < 0.05


def test_hosts_draw_different_batches_and_the_default_shape_is_imagenets():
  kwargs = dict(global_batch_size=4, seed=0, process_count=2, local_device_count=1)
  a = next(data.train_batches("synthetic", process_index=0, **kwargs))
  b = next(data.train_batches("synthetic", process_index=1, **kwargs))
  assert a["image"].shape == (1, 2, 224, 224, 3)
  assert not np.array_equal(a["image"], b["image"])
  assert data.dataset_info("synthetic").num_classes == 1000


def test_eval_batches_are_masked_and_have_views():
  batches = list(
    data.eval_batches(
      "synthetic",
      global_batch_size=4,
      method="ten_crop",
      image_size=16,
      process_index=0,
      process_count=1,
      local_device_count=1,
    )
  )
  assert len(batches) == synthetic.EVAL_BATCHES
  assert batches[0]["image"].shape == (1, 4, 10, 16, 16, 3)
  assert batches[0]["mask"].all()


@pytest.mark.slow
def test_resnet18_trains_at_64px_with_no_data_on_disk(tmp_path):
  empty = tmp_path / "home"
  empty.mkdir()
  workdir = tmp_path / "run"
  overrides = [
    "--config.dataset=synthetic",
    "--config.model=resnet18",
    "--config.image_size=64",
    # ResNet-18's four stages and 7x7 stem, one block per stage and a few channels wide.
    "--config.model_overrides.stem_width=8",
    "--config.model_overrides.stage_widths=(8,8,16,16)",
    "--config.model_overrides.stage_sizes=(1,1,1,1)",
    "--config.global_batch_size=8",
    "--config.num_train_steps=3",
    "--config.checkpoint_every_steps=1000",
  ]
  # The oneDNN kernel from the machine's cache: with only HOME's (empty) the run builds it with g++
  # first, seconds of CPU that are not this test's subject.
  from resnet_jax.models.onednn import kernel

  env = command_env(
    HOME=empty, TFDS_DATA_DIR=empty / "tfds", RESNET_JAX_KERNEL_CACHE=kernel.cache_dir()
  )
  r = subprocess.run(
    train_command(workdir, *overrides),
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "data synthetic" in r.stderr
  assert (workdir / "DONE").exists()
  # Nothing downloaded or prepared (matplotlib may leave its cache in HOME; tfds nothing).
  assert not (empty / "tfds").exists() and not (empty / "tensorflow_datasets").exists()
  assert "synthetic" in (workdir / "config.json").read_text()
