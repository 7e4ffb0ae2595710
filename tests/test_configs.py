"""Every shipped experiment config is valid, builds its model without compiling, and its schedule evaluates."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data, models
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop, optim

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_every_experiment_of_the_paper_has_a_config():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  for depth in (20, 32, 44, 56, 110, 1202):
    assert f"cifar10_resnet{depth}" in names and f"cifar10_plain{depth}" in names
  for depth in (18, 34, 50, 101, 152):
    assert f"imagenet_resnet{depth}" in names
  for depth in (18, 34):  # Table 2 / Fig. 4: plain nets against option-A ResNets
    assert f"imagenet_plain{depth}" in names and f"imagenet_resnet{depth}_optionA" in names
    plain, option_a = (
      load(os.path.join(CONFIG_DIR, f"imagenet_{n}.py"))
      for n in (f"plain{depth}", f"resnet{depth}_optionA")
    )
    assert (plain.model, plain.model_overrides.shortcut) == (f"plain{depth}", "none")
    assert (option_a.model, option_a.model_overrides.shortcut) == (f"resnet{depth}", "A")
  assert {"digits", "mnist", "imagenet_resnet50_modern"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_config_builds(path):
  config = load(path)
  config_lib.validate(
    config, known_models=models.list_models(), known_datasets=data.list_datasets()
  )
  info = data.dataset_info(config.dataset)
  model = loop.build_model(config, info.num_classes)
  size = config.image_size or models.model_spec(config.model).image_size
  shape = (1, size, size, 3)
  variables = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros(shape), train=False), jax.random.key(0)
  )
  assert variables["params"]["head"]["kernel"].shape[-1] == info.num_classes
  schedule = optim.create_schedule(config)
  lrs = [float(schedule(s)) for s in (0, config.num_train_steps // 2, config.num_train_steps - 1)]
  assert all(np.isfinite(lrs)) and max(lrs) > 0
  tx = optim.create_optimizer(config, variables["params"])
  jax.eval_shape(tx.init, variables["params"])


def test_the_default_experiment_is_the_digits_config_file():
  # `resnet-jax train` without --config, and sweep members whose file names no CONFIG, run it.
  default = config_lib.default_config_file()
  assert os.path.samefile(default, os.path.join(CONFIG_DIR, "digits.py"))
  c = config_lib.load(default)
  assert c.dataset == "digits" and c.model == "resnet20"


def test_a_config_is_named_by_path_or_by_its_shipped_name(tmp_path, monkeypatch):
  shipped = os.path.join(CONFIG_DIR, "cifar10_resnet110.py")
  for name in ("cifar10_resnet110", "cifar10_resnet110.py"):
    assert os.path.samefile(config_lib.config_file(name), shipped)
  assert config_lib.config_file("cifar10_resnet110:arg").endswith("cifar10_resnet110.py:arg")
  assert config_lib.config_file("configs/digits.py") == "configs/digits.py"  # a path as given
  assert config_lib.config_file("no_such_experiment") == "no_such_experiment"  # loader says so
  monkeypatch.chdir(tmp_path)
  (tmp_path / "digits.py").write_text("def get_config():\n  return {}\n")
  assert config_lib.config_file("digits.py") == "digits.py"  # a file here wins over a name
  argv = ["prog", "--config=mnist", "--config", "digits", "--config.seed=1", "--", "--config=x"]
  assert config_lib.with_config_files(argv) == [
    "prog",
    "--config=" + config_lib.config_file("mnist"),
    "--config",
    config_lib.config_file("digits"),  # a name: digits.py here is only found as "digits.py"
    "--config.seed=1",
    "--",
    "--config=x",
  ]
  assert config_lib.config_file("mnist").endswith(os.path.join("configs", "mnist.py"))


def test_validate_takes_its_choices_from_their_owners(monkeypatch):
  from resnet_jax.models import conv_impl
  from resnet_jax.train import parallel

  known = dict(known_models=models.list_models(), known_datasets=data.list_datasets())
  c = config_lib.load("digits")
  c.parallelism, c.model_overrides.conv_impl = "gspmd", "cudnn"
  with pytest.raises(ValueError, match=r"must be 'pmap' or 'jit'$"):
    config_lib.validate(c, **known)
  monkeypatch.setattr(parallel, "PARALLELISMS", (*parallel.PARALLELISMS, "gspmd"))
  with pytest.raises(ValueError, match=r"conv_impl='cudnn': must be 'auto', 'xla' or 'onednn' "):
    config_lib.validate(c, **known)
  monkeypatch.setattr(conv_impl, "CONV_IMPLS", (*conv_impl.CONV_IMPLS, "cudnn"))
  config_lib.validate(c, **known)


def test_table6_recipe_matches_the_paper():
  path = os.path.join(CONFIG_DIR, "cifar10_resnet110.py")
  with open(path) as f:  # the file is the record: batch, schedule, warm-up and augmentation in it
    text = f.read()
  for key in ("global_batch_size", "lr_boundaries", "warmup_lr_scale", "train_augment"):
    assert f"  c.{key} = " in text, key
  c = load(path)
  assert (c.global_batch_size, c.learning_rate, tuple(c.lr_boundaries), c.num_train_steps) == (
    128,
    0.1,
    (32_000, 48_000),
    64_000,
  )
  # Table 6 is test error of nets trained on all 50k; ':holdout' is the 45k/5k split.
  assert (c.weight_decay, c.momentum, c.train_split, c.eval_split) == (1e-4, 0.9, "train", "test")
  holdout = config_lib.load(path + ":holdout")
  assert (holdout.train_split, holdout.eval_split) == ("train[:45000]", "train[45000:]")
  with pytest.raises(ValueError, match="takes test or holdout"):
    config_lib.load(path + ":validation")
  # 0.01 until the first step whose training error is below 80 %, no cap (§4.2)
  assert (c.warmup_lr_scale, c.warmup_until_train_error, c.warmup_max_steps) == (0.1, 0.8, 0)
  schedule = optim.create_schedule(c)
  assert [float(schedule(s)) for s in (0, 31_999, 32_000, 48_000)] == pytest.approx(
    [0.1, 0.1, 0.01, 0.001]
  )
  assert load(os.path.join(CONFIG_DIR, "cifar10_resnet56.py")).warmup_lr_scale == 0


def test_bad_values_are_rejected_with_the_key_named():
  known = dict(known_models=models.list_models(), known_datasets=data.list_datasets())
  for key, value, words in (
    ("learning_rate", -0.1, "must be positive"),
    ("optimizer", "adamax", "unknown optimizer"),
    ("model", "resnet51", "resnet50"),
    ("dataset", "cifar11", "cifar10"),
    ("schedule", "cosine", "unknown schedule"),
  ):
    c = config_lib.base_config()
    c[key] = value
    with pytest.raises(ValueError, match=f"config.{key}=") as e:
      config_lib.validate(c, **known)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_drop_path_rate_is_a_documented_key_refused_outside_unit_interval_in_one_line(rate):
  base = config_lib.base_config()
  assert base.model_overrides.drop_path_rate == 0.0  # off by default
  with open(config_lib.__file__) as f:
    assert sum('"drop_path_rate": 0.0,' in line for line in f) == 1
  c = config_lib.load("digits")
  c.model_overrides.drop_path_rate = rate
  with pytest.raises(ValueError, match=r"^config\.model_overrides\.drop_path_rate=") as e:
    config_lib.validate(c, known_models=models.list_models(), known_datasets=data.list_datasets())
  assert "[0, 1)" in str(e.value) and "\n" not in str(e.value)


def test_drop_path_rate_leaves_the_checkpointed_architecture_as_before():
  # Runs written before the key existed must still restore: the rate is training-time only.
  from resnet_jax import runs

  c = config_lib.load("digits")
  plain = runs.architecture(c)
  c.model_overrides.drop_path_rate = 0.1
  assert "drop_path_rate" not in plain and runs.architecture(c) == plain


def test_an_eval_batch_the_devices_cannot_share_is_refused_in_one_line(monkeypatch):
  config = config_lib.load("digits")
  config.eval_batch_size = 6
  monkeypatch.setattr(loop.jax, "device_count", lambda: 4)
  with pytest.raises(ValueError, match=r"^config.eval_batch_size=6 is not divisible by the 4 "):
    loop.check_config(config)
  config.eval_batch_size = -8
  with pytest.raises(ValueError, match=r"^config.eval_batch_size=-8.*must not be negative"):
    loop.check_config(config)
  config.eval_batch_size = 0  # evaluation in batches of the training batch
  loop.check_config(config)
  assert config_lib.eval_batch_size(config) == config.global_batch_size == 128
