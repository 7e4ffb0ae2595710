"""Checkpoints written by earlier versions of the project still restore: evaluated, served and
resumed by today's code.

``tests/data/run_before_ema/`` is the tiny digits run (tests/configs/tiny_digits.py, 6 steps) as the
code of commit 0f93a1f wrote it: its train state has no ``ema`` field, and its config.json predates
every key added since. That code's own evaluation of step 6 gave eval_loss 2.29257.
"""

import json
import shutil

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e

OLD_RUN = f"{REPO}/tests/data/run_before_ema"
OLD_EVAL_LOSS = 2.29257  # what the code that wrote the checkpoint reported for step 6


@pytest.fixture
def old_run(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(OLD_RUN, workdir)
  return workdir


def test_a_checkpoint_from_before_the_ema_field_evaluates_to_its_old_numbers(old_run, run_main):
  result = run_main(old_run, "--mode=eval")
  assert result.returncode == 0, result.stderr[-2000:]
  evaluated = json.loads((old_run / "eval_center_step6.json").read_text())
  assert evaluated["eval_loss"] == pytest.approx(OLD_EVAL_LOSS, abs=2e-5)


def test_a_checkpoint_from_before_the_ema_field_resumes_training(old_run, run_main):
  result = run_main(old_run, "--config.num_train_steps=9")
  assert result.returncode == 0, result.stderr[-2000:]
  steps = [json.loads(line).get("step") for line in (old_run / "metrics.jsonl").open()]
  assert 9 in steps


def test_a_checkpoint_from_before_the_ema_field_loads_for_serving(old_run):
  from resnet_jax import runs

  run = runs.load(str(old_run))
  assert run.step == 6
  assert "stem_conv" in run.variables["params"]
