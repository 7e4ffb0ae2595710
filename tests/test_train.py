"""The training program end to end: data parallelism, exact resume, preemption, and refusing bad input.

Runs the real command (``python -m resnet_jax.main``) on a net a few channels wide on the bundled
digits; every subprocess is bounded in time. A process start costs seconds of imports, so runs
share them: one straight run is every test's reference, one run is preempted and then killed, and
runs that are only a reference or a first half are trained by the loop, two in one process.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, command_env, tiny_runs_command, train_command
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.metrics import read_metrics

pytestmark = pytest.mark.e2e


def losses(workdir):
  return {r["step"]: r["train_loss"] for r in read_metrics(workdir) if "train_loss" in r}


def final_params(workdir, step=None):
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True, async_save=False)
  step = ckpt.latest_step() if step is None else step
  meta = ckpt.read_meta(step)
  import orbax.checkpoint as ocp

  state = ckpt._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  ckpt.close()
  return step, state["state"], meta


def tree_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def snapshot(workdir):
  """Every file under workdir with its content hash: proof that nothing was touched."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def wait_for_checkpoint(workdir, proc, timeout=240, after=0):
  """Returns once a checkpoint of a step past ``after`` is committed."""
  directory = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
    if os.path.isdir(directory) and any(
      os.path.exists(os.path.join(directory, d, "_CHECKPOINT_METADATA"))
      for d in os.listdir(directory)
      if d.isdigit() and int(d) > after
    ):
      return
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared in time")


# The straight run's length: past where the interrupted run's last checkpoint lands (a preemption
# a few steps in, then a kill a few steps after the resume's next periodic checkpoint), so that run
# is compared with this one and needs no reference of its own.
STRAIGHT_STEPS = 18


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """STRAIGHT_STEPS uninterrupted steps, the reference for the resume tests. Run as `make train`
  runs (no TF_CPP_MIN_LOG_LEVEL of ours); its output goes to WORKDIR.log for the output test."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  env = command_env()
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  proc = subprocess.run(
    train_command(
      workdir, f"--config.num_train_steps={STRAIGHT_STEPS}", "--config.plot_curves=True"
    ),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir + ".log", "w") as f:
    f.write(proc.stdout + proc.stderr)
  return workdir


def test_run_writes_config_metrics_curves_and_counts_every_test_example(straight_run):
  done = json.load(open(os.path.join(straight_run, "DONE")))
  assert done["eval_count"] == 1000 and done["step"] == STRAIGHT_STEPS
  config = json.load(open(os.path.join(straight_run, "config.json")))
  assert config["num_train_steps"] == STRAIGHT_STEPS and config["model"] == "resnet20"
  assert sorted(losses(straight_run)) == list(range(1, STRAIGHT_STEPS + 1))
  assert os.path.getsize(os.path.join(straight_run, "curves.png")) > 10_000
  assert os.listdir(os.path.join(straight_run, "tensorboard"))


def test_run_output_holds_only_our_lines(straight_run):
  """What `make train` prints: the run summary, progress, eval and where results went; no
  third-party INFO (tfds, JAX, Orbax) and no TensorFlow C++ load-time notices."""
  with open(straight_run + ".log") as f:
    output = f.read()
  ours = {n for n in os.listdir(os.path.join(REPO, "resnet_jax")) if n.endswith(".py")}
  ours |= {
    n
    for d in ("train", "data", "models", "analysis")
    for n in os.listdir(os.path.join(REPO, "resnet_jax", d))
    if n.endswith(".py")
  }
  absl_line = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\] ")
  for line in output.splitlines():
    match = absl_line.match(line)
    if match and match.group(1) == "I":
      assert match.group(2) in ours, line
  for noise in (
    "absl::InitializeLog",
    "oneDNN",
    "cpu_feature_guard",
    "Load dataset info",
    "libtpu",
  ):
    assert noise not in output, noise
  for ours_line in (
    "model resnet8 = resnet20 with stage_sizes (1, 1, 1):",  # the tiny config, by its depth
    "workdir " + straight_run,
    f"step {STRAIGHT_STEPS}/{STRAIGHT_STEPS}",
    "img/s",
    "waiting for data",
    f"eval at step {STRAIGHT_STEPS}",
    f"results in {straight_run}: metrics.jsonl, tensorboard/, checkpoints/, curves.png",
  ):
    assert ours_line in output, (ours_line, output)


def test_throughput_is_in_metrics_jsonl_and_tensorboard(straight_run):
  train = [r for r in read_metrics(straight_run) if "train_loss" in r]
  assert len(train) == STRAIGHT_STEPS
  for r in train:
    assert r["images_per_sec"] > 0 and r["step_time_ms"] > 0, r
    assert 0 <= r["data_wait_fraction"] <= 1, r
    # one step of the 16-image batch per log line (tiny_digits logs every step)
    assert r["images_per_sec"] * r["step_time_ms"] / 1000 == pytest.approx(16), r
  import tensorflow as tf

  tags = set()
  for name in os.listdir(os.path.join(straight_run, "tensorboard")):
    for event in tf.compat.v1.train.summary_iterator(
      os.path.join(straight_run, "tensorboard", name)
    ):
      tags |= {v.tag for v in event.summary.value}
  assert {"images_per_sec", "step_time_ms", "data_wait_fraction"} <= tags, tags


def wait_for_logged_step(workdir, proc, timeout=240):
  """Returns once the run has logged a train step: its preemption handler is then installed."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
    if any("train_loss" in r for r in _read_metrics_safely(workdir)):
      return
    time.sleep(0.02)
  raise AssertionError("no step was logged in time")


def _read_metrics_safely(workdir):
  try:
    return read_metrics(workdir)
  except (ValueError, OSError):  # a line being written
    return []


def start_long_run(workdir, *overrides):
  """A 1,000-step run with async checkpoints (the default), to be interrupted."""
  return subprocess.Popen(
    train_command(
      workdir, "--config.num_train_steps=1000", "--config.async_checkpoints=true", *overrides
    ),
    env=command_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    cwd=REPO,
  )


def checkpoint_steps(workdir):
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True, async_save=False)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def run_to(workdir, steps, *overrides):
  proc = subprocess.run(
    train_command(workdir, f"--config.num_train_steps={steps}", *overrides),
    env=command_env(),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def resume_and_compare(workdir, saved_at, straight_run, tmp_path):
  """Reruns the interrupted workdir to the end and holds the README's resume promise.

  The rerun announces it resumed at ``saved_at``, logs only the steps after it, and ends in a
  state bit-identical (every leaf: params, opt_state, batch_stats, lr_scale, step) to an
  uninterrupted run's. Usually that is ``straight_run`` (STRAIGHT_STEPS); a run interrupted later is
  compared with a fresh uninterrupted run of its own length, so every assert always runs.
  """
  finish, reference = STRAIGHT_STEPS, straight_run
  if saved_at + 1 >= finish:
    finish = saved_at + 2
    reference = str(tmp_path / "reference")
    run_to(reference, finish)
  resumed = run_to(workdir, finish, "--config.async_checkpoints=true")
  assert re.search(rf"resumed from \S+ at step {saved_at}\b", resumed.stderr), resumed.stderr[
    -3000:
  ]
  # The tests' config turns config.plot_curves off: the run ends without curves.png, and says so.
  assert resumed.stdout.strip().splitlines()[-1] == (
    f"results in {workdir}: metrics.jsonl, tensorboard/, checkpoints/"
  )
  assert not os.path.exists(os.path.join(workdir, "curves.png"))
  # Across the interruption every step is logged exactly once: the rerun dropped what the killed
  # run logged after its checkpoint and logged those steps again itself.
  records = [r for r in read_metrics(workdir) if "train_loss" in r]
  assert [r["step"] for r in records] == list(range(1, finish + 1))
  new_lines = [r for r in records if r["step"] > saved_at]
  assert not re.search(rf"step ({'|'.join(map(str, range(1, saved_at + 1)))})/", resumed.stderr)
  reference_losses = losses(reference)
  assert {r["step"]: r["train_loss"] for r in new_lines if "train_loss" in r} == {
    s: reference_losses[s] for s in range(saved_at + 1, finish + 1)
  }
  step_a, state_a, _ = final_params(reference, finish)
  step_b, state_b, _ = final_params(workdir)
  assert step_a == step_b == finish
  for field in ("params", "opt_state", "batch_stats", "lr_scale", "step"):
    assert tree_equal(state_a[field], state_b[field]), field
  assert tree_equal(state_a, state_b)


@pytest.fixture(scope="module")
def preempted_then_killed(tmp_path_factory):
  """One run interrupted both ways, each a real signal to the real command: preempted with SIGTERM
  (it saves and exits), resumed, and that resume SIGKILLed once an (async) periodic checkpoint
  after the preemption's has been committed. One chain instead of two runs and two resumes: the
  resume the kill interrupts is the preempted run's resume, and the final resume (the SIGKILL
  test's) ends bit-identical only if both saves were. Returns what each test reads."""
  workdir = str(tmp_path_factory.mktemp("interrupted") / "run")
  # No periodic checkpoints: the only one on disk can come from the preemption save.
  proc = start_long_run(workdir, "--config.checkpoint_every_steps=1000")
  try:
    wait_for_logged_step(workdir, proc)
    proc.send_signal(signal.SIGTERM)
    preempted = {"returncode": proc.wait(timeout=120), "stderr": proc.stderr.read()}
  finally:
    proc.kill()
  announced = re.findall(r"preempted: saved step (\d+)", preempted["stderr"])
  assert preempted["returncode"] == 0 and len(announced) == 1, preempted["stderr"][-3000:]
  saved_at = int(announced[0])
  preempted.update(
    saved_at=saved_at,
    checkpoints=checkpoint_steps(workdir),
    last_logged=max(r["step"] for r in read_metrics(workdir)),
    done=os.path.exists(os.path.join(workdir, "DONE")),
  )
  # Resumed with the tiny config's periodic checkpoints (every 3 steps), killed without warning.
  proc = start_long_run(workdir)
  try:
    wait_for_checkpoint(workdir, proc, after=saved_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed_stderr = proc.stderr.read()
  finally:
    proc.kill()
  return workdir, preempted, resumed_stderr, max(checkpoint_steps(workdir))


def test_sigterm_saves_the_step_it_announces_exits_zero_and_resumes(preempted_then_killed):
  _, preempted, resumed, _ = preempted_then_killed
  assert preempted["returncode"] == 0, preempted["stderr"][-3000:]
  saved_at = preempted["saved_at"]
  assert preempted["checkpoints"] == [saved_at]
  assert preempted["last_logged"] == saved_at  # it stopped where it saved
  assert not preempted["done"]
  # The rerun resumed at the step announced and logged only the steps after it. That it went on
  # bit-identically is the SIGKILL test's end state, which it leads to.
  assert re.search(rf"resumed from \S+ at step {saved_at}\b", resumed), resumed[-3000:]
  assert re.search(rf"step {saved_at + 1}/", resumed), resumed[-3000:]
  assert not re.search(rf"step ({'|'.join(map(str, range(1, saved_at + 1)))})/", resumed)


def test_resume_after_sigkill_is_bit_identical(preempted_then_killed, straight_run, tmp_path):
  workdir, preempted, _, killed_at = preempted_then_killed
  assert killed_at > preempted["saved_at"], killed_at  # the resume's own checkpoint
  assert killed_at % 3 == 0, killed_at  # a periodic checkpoint (checkpoint_every_steps=3)
  resume_and_compare(workdir, killed_at, straight_run, tmp_path)


def test_corrupt_checkpoint_is_named_and_nothing_is_touched(straight_run, tmp_path, run_main):
  import shutil

  workdir = str(tmp_path / "corrupt")
  shutil.copytree(straight_run, workdir)
  state_dir = os.path.join(workdir, "checkpoints", str(STRAIGHT_STEPS), "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != "_METADATA" and not name.endswith(".txt"):
        with open(os.path.join(root, name), "r+b") as f:
          f.write(b"\0garbage" * 64)
  before = snapshot(workdir)
  proc = run_main(workdir, f"--config.num_train_steps={STRAIGHT_STEPS + 3}")
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  named = last.startswith("error: checkpoint") and f"step {STRAIGHT_STEPS}" in last
  assert named, proc.stderr[-3000:]
  # Reads Orbax abandoned when the first one failed must not print anything, however late they end.
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr
  assert snapshot(workdir) == before


def test_checkpoint_of_another_architecture_is_refused_and_nothing_is_touched(
  straight_run, tmp_path, run_main
):
  import shutil

  workdir = str(tmp_path / "mismatch")
  shutil.copytree(straight_run, workdir)
  before = snapshot(workdir)
  proc = run_main(
    workdir, f"--config.num_train_steps={STRAIGHT_STEPS + 3}", "--config.model_overrides.shortcut=B"
  )
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert "architecture" in last and "'shortcut': 'B'" in last and "fresh workdir" in last, last
  assert snapshot(workdir) == before


def test_diverging_run_stops_naming_the_step_and_saves_no_bad_state(tmp_path, run_main):
  """A checkpoint is due at every step: the good ones are kept, the first bad one is refused."""
  workdir = str(tmp_path / "nan")
  proc = run_main(
    workdir,
    "--config.learning_rate=1e12",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=1",
  )
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  match = re.search(r"at step (\d+)|by step (\d+)", last)
  assert match and "stopped without saving" in last, last
  bad_step = int(match.group(1) or match.group(2))
  ckpts = os.path.join(workdir, "checkpoints")
  saved = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
  # Every step before the bad one was saved (all good), and nothing from the bad one on.
  assert saved == list(range(1, bad_step)), (saved, last)
  if saved:
    assert f"Last good checkpoint: step {saved[-1]}" in last, last
  for step in saved:
    state = final_params(workdir, step)[1]
    for field in ("params", "opt_state", "batch_stats"):
      assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state[field])), step


@pytest.mark.parametrize(
  "override, words",
  [
    # A bad value of a known key or an unknown model is test_main's: refused before TensorFlow. A
    # key's typo is test_doors' row train-config-key-typo (one line, nothing touched).
    ("--config.global_batch_size=6", "not divisible by the 4 devices"),
  ],
)
def test_bad_input_is_one_line_before_anything_compiles(tmp_path, override, words):
  workdir = str(tmp_path / "bad")
  proc = subprocess.run(
    train_command(workdir, override),
    env=command_env(4),
    capture_output=True,
    text=True,
    timeout=120,
    cwd=REPO,
  )
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and words in last, last
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def eval_command(workdir, *flags):
  """``resnet-jax eval --workdir=WORKDIR FLAGS``: no --config, the run's config.json says how."""
  return subprocess.run(
    [sys.executable, "-m", "resnet_jax.main", "eval", f"--workdir={workdir}", *flags],
    env=command_env(),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )


TEN_CROP_RESULT = f"eval_ten_crop_step{STRAIGHT_STEPS}.json"


@pytest.fixture(scope="module")
def evaluated(straight_run):
  """One ``resnet-jax eval`` of the straight run for the tests below: no --config, another
  test-time method (the paper's 10-crop) and an override on top. The eval command is their subject,
  the run only what it reads."""
  return eval_command(straight_run, "--eval_method=ten_crop", "--config.eval_split=test[:32]")


def test_eval_mode_reads_the_checkpoint_with_another_test_time_method(straight_run, evaluated):
  """--eval_method picks the method. That eval mode's centre crop gives the training run's own final
  numbers is test_gcs's, on a bucket."""
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"result in {straight_run}: {TEN_CROP_RESULT}" in evaluated.stdout
  notices = ("read only", "read_only=True")  # Orbax's, of a read-only checkpoint
  assert not any(n in evaluated.stderr for n in notices), evaluated.stderr[-3000:]
  result = json.load(open(os.path.join(straight_run, TEN_CROP_RESULT)))
  assert result["eval_count"] == 32 and result["method"] == "ten_crop"  # every example of the split
  done = json.load(open(os.path.join(straight_run, "DONE")))
  assert result["step"] == done["step"] == STRAIGHT_STEPS


def test_eval_reads_the_runs_own_config_and_overrides_apply_on_top(straight_run, evaluated):
  """Evaluated with no --config: the run's config.json is the record of its architecture (the tiny
  net, a few channels wide, no default's) and of its eval split (the dataset's default, 1,000
  digits), and --config.key=value overrides apply on top of it."""
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  result = json.load(open(os.path.join(straight_run, TEN_CROP_RESULT)))
  assert result["eval_count"] == 32 and result["step"] == STRAIGHT_STEPS
  recorded = json.load(open(os.path.join(straight_run, "config.json")))
  assert recorded["model_overrides"]["stage_widths"] == [4, 8, 8]
  assert recorded["eval_split"] == ""  # the override was the eval's, not the record's


@pytest.mark.parametrize(
  "dataset, image_size, scales",
  [
    ("digits", 0, (28, 32, 40)),  # stored at 28 px: at most 1.5x, not ImageNet's 224-640
    ("cifar10", 0, (32, 40, 48)),
    ("imagenet2012", 0, (224, 256, 384, 480, 640)),  # the paper's (§3.4)
    ("imagenet2012", 112, (112, 128, 192, 240, 320)),
  ],
)
def test_full_conv_eval_picks_scales_relative_to_the_image_size(dataset, image_size, scales):
  from resnet_jax.train import loop
  from resnet_jax.train.config import base_config

  config = base_config()
  config.dataset, config.image_size = dataset, image_size
  assert loop.full_conv_scales(config) == scales
  # The evaluator behind `resnet-jax eval --eval_method=full_conv` (and analyze test_time) uses it.
  evaluator = loop.Evaluator(config, loop.build_model(config, num_classes=10))
  assert evaluator.scales == scales
  config.eval_scales = (30, 36)  # an explicit choice is kept as given
  assert loop.Evaluator(config, loop.build_model(config, num_classes=10)).scales == (30, 36)


# ResNet-110's warm-up (§4.2: lr/10 until training error < 80%, here at most 3 steps) and the
# ImageNet plateau rule (§3.4: ÷10 when validation error stalls; patience 1 and an unreachable
# min_delta make every eval after the first an event: steps 4, 6, 8), on 2 devices with
# per-replica BN statistics synchronised at every eval and checkpoint. Evals read 64 test images.
# Label smoothing and Nesterov momentum ride along: their state must survive the resume too.
LR_EVENTS = {
  "label_smoothing": 0.1,
  "nesterov": True,
  "cross_replica_bn": False,
  "warmup_lr_scale": 0.1,
  "warmup_max_steps": 3,
  "schedule": "plateau",
  "plateau_patience": 1,
  "plateau_min_delta": 1.0,
  "eval_every_steps": 2,
  "eval_split": "test[:64]",
  "num_train_steps": 10,
}


def test_resume_across_learning_rate_events_on_2_devices_with_per_replica_bn(tmp_path, run_main):
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  # The uninterrupted reference and the first half of the interrupted run, one process for both
  # (neither is the subject); the resume is the command's own.
  runs = [[straight, LR_EVENTS], [interrupted, {**LR_EVENTS, "stop_after_steps": 6}]]
  first = subprocess.run(
    tiny_runs_command(runs),
    env=command_env(2),
    capture_output=True,
    text=True,
    timeout=400,
    cwd=REPO,
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert checkpoint_steps(interrupted)[-1] == 6
  overrides = (f"--config.{k}={v}" for k, v in LR_EVENTS.items())
  resumed = run_main(interrupted, *overrides, devices=2, timeout=400)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(r"resumed from \S+ at step 6\b", resumed.stderr), resumed.stderr[-3000:]

  def learning_rates(workdir):
    return {r["step"]: r["learning_rate"] for r in read_metrics(workdir) if "learning_rate" in r}

  want = learning_rates(straight)
  # The events happened: warm-up at 0.1x, its end (x10), then ÷10 at the evals of steps 4 and 6
  # (before the interruption) and 8 (after it).
  rates = [want[s] for s in range(1, 11)]
  assert rates[0] == pytest.approx(0.005) and max(rates[:4]) == pytest.approx(0.05)
  assert rates[6] == pytest.approx(0.0005) and rates[8] == pytest.approx(0.00005)
  assert learning_rates(interrupted) == want
  assert [r["step"] for r in read_metrics(interrupted) if "learning_rate" in r] == list(
    range(1, 11)
  )
  _, state_a, meta_a = final_params(straight, 10)
  _, state_b, meta_b = final_params(interrupted, 10)
  for path_and_leaf, leaf_b in zip(
    jax.tree_util.tree_flatten_with_path(state_a)[0], jax.tree_util.tree_leaves(state_b)
  ):
    path, leaf_a = path_and_leaf
    np.testing.assert_array_equal(leaf_a, leaf_b, err_msg=jax.tree_util.keystr(path))
  assert tree_equal(state_a, state_b)
  assert meta_a["lr_controller"] == meta_b["lr_controller"]
