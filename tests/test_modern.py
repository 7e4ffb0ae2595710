"""The modern-recipe ingredients together: the shipped recipe configs, the input keys' checks, and a
tiny digits run with every ingredient on that stops at step 20 and resumes bit for bit, its moving
average included, which evaluation reports and serving picks."""

import json
import os
import re

import numpy as np
import pytest

from resnet_jax import data, models, runs
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop
from conftest import train_tiny_in_process
from test_configs import CONFIG_DIR, load

# Every ingredient of the timm recipes at once, by dotted config key.
EVERY_INGREDIENT = {
  "mixup_alpha": 0.2,
  "cutmix_alpha": 1.0,
  "randaugment": "rand-m7-mstd0.5-inc1",
  "random_erasing": 0.25,
  "model_overrides.drop_path_rate": 0.05,
  "ema_decay": 0.99,
  "optimizer": "lamb",
  "learning_rate": 0.005,
  "weight_decay": 0.01,
  "loss": "bce",
  "bce_target_threshold": 0.2,
  "label_smoothing": 0.1,
}
RECIPES = {
  "imagenet_resnet50d_tricks": 79.15,
  "imagenet_resnet50_rsb_a1": 80.4,
  "imagenet_resnet50_rsb_a2": 79.8,
  "imagenet_resnet50_rsb_a3": 78.1,
  "imagenet_resnet50_mlperf_lars": 75.9,
}


def _validate(config):
  config_lib.validate(
    config, known_models=models.list_models(), known_datasets=data.list_datasets()
  )


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_states_its_published_top1_and_source_in_one_line(name):
  path = os.path.join(CONFIG_DIR, f"{name}.py")
  with open(path) as f:
    lines = [line for line in f if line.startswith("# Published top-1:")]
  assert len(lines) == 1, lines
  assert f"{RECIPES[name]} %" in lines[0] and re.search(r"\(.+(19|20)\d\d|mlcommons", lines[0])
  _validate(load(path))


def test_recipes_hold_their_papers_numbers():
  tricks = load(os.path.join(CONFIG_DIR, "imagenet_resnet50d_tricks.py"))
  assert (tricks.model, tricks.global_batch_size, tricks.label_smoothing, tricks.mixup_alpha) == (
    "resnet50d",
    1024,
    0.1,
    0.2,
  )
  epoch = 1_281_167 // 1024
  assert tricks.learning_rate * 1024 / tricks.lr_reference_batch == pytest.approx(0.4)
  assert (tricks.warmup_steps, tricks.schedule) == (5 * epoch, "warmup_cosine")
  a1, a2, a3 = (load(os.path.join(CONFIG_DIR, f"imagenet_resnet50_rsb_a{i}.py")) for i in (1, 2, 3))
  epoch = 1_281_167 // 2048
  for c, epochs, lr, mixup, ra in (
    (a1, 600, 5e-3, 0.2, "rand-m7-mstd0.5-inc1"),
    (a2, 300, 5e-3, 0.1, "rand-m7-mstd0.5-inc1"),
    (a3, 100, 8e-3, 0.1, "rand-m6-mstd0.5-inc1"),
  ):
    assert (c.optimizer, c.loss, c.global_batch_size, c.cutmix_alpha) == ("lamb", "bce", 2048, 1.0)
    assert (c.num_train_steps, c.learning_rate, c.mixup_alpha, c.randaugment) == (
      epochs * epoch,
      lr,
      mixup,
      ra,
    )
    assert (c.eval_image_size, c.eval_crop_ratio) == (224, 0.95)
  assert (a1.weight_decay, a2.weight_decay, a3.weight_decay) == (0.01, 0.02, 0.02)
  assert a1.model_overrides.drop_path_rate == a2.model_overrides.drop_path_rate == 0.05
  assert a3.model_overrides.get("drop_path_rate", 0.0) == 0.0
  assert (a1.image_size, a3.image_size) == (224, 160)
  lars = load(os.path.join(CONFIG_DIR, "imagenet_resnet50_mlperf_lars.py"))
  assert (lars.optimizer, lars.global_batch_size, lars.learning_rate, lars.label_smoothing) == (
    "lars",
    3264,
    10.5,
    0.1,
  )


def test_a3_evaluates_at_224_with_crop_ratio_095_while_training_at_160():
  a3 = load(os.path.join(CONFIG_DIR, "imagenet_resnet50_rsb_a3.py"))
  kwargs = loop._eval_data_kwargs(a3)
  assert (kwargs["image_size"], kwargs["crop_ratio"]) == (224, 0.95)
  assert data.eval_image_sizes(a3.dataset, kwargs["image_size"], kwargs["crop_ratio"]) == (224, 235)
  assert loop._data_kwargs(a3)["image_size"] == 160
  # Unset, evaluation follows the training size and the dataset's rule, as before.
  default = config_lib.base_config()
  assert loop._eval_data_kwargs(default) == {
    "data_dir": None,
    "image_size": None,
    "crop_ratio": None,
    "normalization": "channel",
    "mean_split": None,
  }


@pytest.mark.parametrize(
  "key, value, words",
  [
    ("randaugment", "rand-m7-x3", "bad RandAugment string"),
    ("randaugment", "augmix-m5", "must start with 'rand'"),
    ("random_erasing", 1.5, "probability"),
    ("eval_crop_ratio", 1.2, "crop fraction"),
    ("eval_image_size", -1, "side in pixels"),
  ],
)
def test_bad_input_keys_are_refused_in_one_line_at_validation(key, value, words):
  config = config_lib.load("digits")
  config[key] = value
  with pytest.raises(ValueError, match=words) as e:
    _validate(config)
  assert "\n" not in str(e.value) and str(e.value).startswith(f"config.{key}=")


@pytest.mark.e2e
def test_malformed_randaugment_string_exits_2_in_one_line_and_writes_nothing(tmp_path, run_main):
  workdir = tmp_path / "run"
  proc = run_main(str(workdir), "--config.randaugment=rand-m7-q1")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error: config.randaugment=") and "bad RandAugment" in lines[-1]
  assert not workdir.exists() or not any(workdir.iterdir())


def _run_in_process(workdir, steps, **values):
  """Every ingredient on, ``values`` beside them, trained to ``steps`` in this process (the loop
  is the subject here, not the door)."""
  train_tiny_in_process(workdir, {**EVERY_INGREDIENT, **values, "num_train_steps": steps})


@pytest.mark.e2e
def test_every_ingredient_on_stopped_at_step_20_and_resumed_equals_the_uninterrupted_run(
  tmp_path, caplog
):
  from test_train import final_params, losses, tree_equal

  straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
  # Checkpoints only where the comparison needs them: the stop at 20 and the end.
  _run_in_process(straight, 24, checkpoint_every_steps=1000)
  _run_in_process(stopped, 24, checkpoint_every_steps=1000, stop_after_steps=20)
  assert final_params(stopped)[0] == 20
  caplog.clear()
  # The absl logger's own level: an earlier in-process command may have set it to WARNING.
  with caplog.at_level("INFO", logger="absl"):
    _run_in_process(stopped, 24, checkpoint_every_steps=1000)
  assert re.search(r"resumed from \S+ at step 20\b", caplog.text), caplog.text[-3000:]
  step_a, state_a, _ = final_params(straight)
  step_b, state_b, _ = final_params(stopped)
  assert step_a == step_b == 24
  assert "ema" in state_a  # the average is part of what must survive the stop
  for field in sorted(state_a):
    assert tree_equal(state_a[field], state_b[field]), field
  reference = losses(straight)
  assert {s: losses(stopped)[s] for s in range(21, 25)} == {s: reference[s] for s in range(21, 25)}
  # The ingredients did something: the EMA is not the raw weights.
  ema, params = state_a["ema"], state_a["params"]
  assert not tree_equal(ema["params"], params)
  assert np.isfinite(list(reference.values())).all()

  # Evaluation reports the average beside the weights; serving loads the average unless asked not to.
  with open(os.path.join(straight, "DONE")) as f:
    done = json.load(f)
  assert {"eval_top1_error", "eval_ema_top1_error", "eval_ema_loss"} <= set(done), done
  served, trained = runs.load(straight, use_ema=None), runs.load(straight)
  assert served.ema and not trained.ema
  head = lambda variables: variables["params"]["head"]["kernel"]
  np.testing.assert_array_equal(head(served.variables), head(ema))
  np.testing.assert_array_equal(head(trained.variables), head(state_a))
