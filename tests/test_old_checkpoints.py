"""Checkpoints written by earlier versions of the project still restore: evaluated, served and
resumed by today's code.

``tests/data/run_before_ema/`` is the tiny digits run (tests/configs/tiny_digits.py, 6 steps) as the
code of commit 0f93a1f wrote it: its train state has no ``ema`` field, and its config.json predates
every key added since. That code's own evaluation of step 6 gave eval_loss 2.29257.

The checkpoint is the subject, not the command: each test reads it in this process, with the code
the commands run (``loop.evaluate``, ``loop.train_and_evaluate`` with its check of the recorded
config, ``runs.load``), and spares a process start of TensorFlow and JAX imports.
"""

import json
import shutil

import pytest

from conftest import REPO, TINY_CONFIG, train_tiny_in_process

pytestmark = pytest.mark.e2e

OLD_RUN = f"{REPO}/tests/data/run_before_ema"
OLD_EVAL_LOSS = 2.29257  # what the code that wrote the checkpoint reported for step 6


@pytest.fixture
def old_run(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(OLD_RUN, workdir)
  return workdir


def test_a_checkpoint_from_before_the_ema_field_evaluates_to_its_old_numbers(old_run):
  from resnet_jax.train import config as config_lib
  from resnet_jax.train import loop

  # What `--mode=eval --config=TINY` runs: the tiny config, the latest checkpoint, its own method.
  result = loop.evaluate(config_lib.load(TINY_CONFIG), str(old_run))
  assert result["step"] == 6 and result["method"] == "center", result
  evaluated = json.loads((old_run / "eval_center_step6.json").read_text())
  assert evaluated["eval_loss"] == pytest.approx(OLD_EVAL_LOSS, abs=2e-5)


def test_a_checkpoint_from_before_the_ema_field_resumes_training(old_run):
  train_tiny_in_process(old_run, {"num_train_steps": 9})
  steps = [json.loads(line).get("step") for line in (old_run / "metrics.jsonl").open()]
  assert 9 in steps


def test_a_checkpoint_from_before_the_ema_field_loads_for_serving(old_run):
  from resnet_jax import runs

  run = runs.load(str(old_run))
  assert run.step == 6
  assert "stem_conv" in run.variables["params"]
