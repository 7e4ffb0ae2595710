"""Data parallelism: the device count and the process count are invisible to the optimisation, and
``config.parallelism`` jit over a mesh trains exactly like pmap, their checkpoints crossing over.

Runs share work: one subprocess per device count trains the tiny net under both paths (1 device:
the pytest worker itself, which has one CPU device and the subprocesses' XLA flags), and one pair
of processes (2 processes x 2 CPU devices, gloo on 127.0.0.1) does the same; the SIGKILLed jit run
and the cross-path resumes reuse those runs as their references. A checkpoint costs about a CPU
second, so a run saves only the checkpoints something reads. Every subprocess is bounded in time.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import REPO, command_env, free_port, tiny_runs_command, train_tiny_in_process
from resnet_jax.checkpoint import Checkpointer
from test_train import losses, tree_equal, wait_for_checkpoint

pytestmark = pytest.mark.multiprocess

STEPS = 6
# Every run evaluates 90 of the 1,000 test digits: 90 is not a multiple of the tiny config's eval
# batch (200), so the batch is padded and masked on every device and process count. It saves only
# its final checkpoint, unless a run says otherwise.
RUN = {"eval_split": "test[:90]", "checkpoint_every_steps": 1000, "num_train_steps": STEPS}
# The 4-device runs' checkpoint at step SOURCE_STEP is what the cross-path resumes start from.
SOURCE_STEP = 3


def run(workdir, parallelism, **overrides):
  """One run of the tiny config: ``[workdir, overrides]`` as conftest.tiny_runs_command and
  train_in_worker read it."""
  return [str(workdir), {**RUN, "parallelism": parallelism, **overrides}]


def start(command, devices, log, **env):
  """A subprocess bounded by ``finish``; its stderr goes to ``log`` (a pipe could fill and block)."""
  log = open(log, "w+")  # noqa: SIM115 - closed by finish
  proc = subprocess.Popen(
    command,
    env=command_env(devices, **env),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=log,
    start_new_session=True,
  )
  proc.log = log
  return proc


def start_runs(devices, log, *runs, **env):
  return start(tiny_runs_command(runs), devices, log, **env)


def train_in_worker(*runs):
  """The runs tiny_runs_command would train on 1 device, trained here: the worker has one CPU
  device and the tests' XLA flags, and has TensorFlow and JAX loaded already (a process start
  costs seconds)."""
  assert jax.device_count() == 1, jax.devices()
  for workdir, overrides in runs:
    train_tiny_in_process(workdir, overrides)


def finish(procs, timeout=600, check=True):
  deadline = time.time() + timeout
  try:
    for p in procs:
      code = p.wait(timeout=max(1, deadline - time.time()))
      assert code == 0 or not check, open(p.log.name).read()[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
      p.log.close()


def final_params(workdir, step=None):
  """``(step, state)`` as host numpy, whichever path and device count wrote it."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    return step, ckpt.read_state(step)
  finally:
    ckpt.close()


def flat_params(workdir, step=None):
  params = final_params(workdir, step)[1]["params"]
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


def assert_same_training(got, want):
  """Losses within 1e-5; parameters within float32 summation-order drift: across processes gloo's
  all-reduce adds in another order, and in this 4-channel net the difference grows about 3x a step
  (loss differences measured 0, 7e-7, 1.4e-6, 5e-6 over 4 steps; parameters ~1e-4 relative L2)."""
  a, b = losses(got), losses(want)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1)), (a, b)
  np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], atol=1e-5)
  x, y = flat_params(got), flat_params(want)
  assert x.shape == y.shape
  assert np.linalg.norm(x - y) / np.linalg.norm(y) < 1e-3
  np.testing.assert_allclose(x, y, atol=2e-3)
  for workdir in (got, want):
    assert json.load(open(os.path.join(workdir, "DONE")))["eval_count"] == 90


def kill_once_checkpointed(workdir, proc):
  """SIGKILLs ``proc`` without warning once its run has committed a checkpoint."""
  try:
    wait_for_checkpoint(workdir, proc, timeout=600)
  except AttributeError:  # it ended early, and wait_for_checkpoint reads a pipe: this is a file
    raise AssertionError(f"run ended early: {open(proc.log.name).read()[-3000:]}") from None
  finally:
    os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """pmap and jit on 1, 2 and 4 devices; pmap and jit on 2 processes x 2 devices; a SIGKILLed jit run."""
  root = tmp_path_factory.mktemp("parallelism")
  d = {"killed": str(root / "killed")}
  for devices in (1, 2, 4, "two_processes"):
    for p in ("pmap", "jit"):
      d[p, devices] = str(root / f"{p}{devices}")
  # 2 processes x 2 devices: the pmap run, then the jit run, in the same two processes.
  port = free_port()
  procs = [
    start_runs(
      2,
      root / f"log_process{pid}",
      *(run(d[p, "two_processes"], p) for p in ("pmap", "jit")),
      RESNET_JAX_COORDINATOR=f"127.0.0.1:{port}",
      RESNET_JAX_NUM_PROCESSES=2,
      RESNET_JAX_PROCESS_ID=pid,
      RESNET_JAX_INIT_TIMEOUT=120,
    )
    for pid in range(2)
  ]
  # On 4 devices, also the checkpoint the cross-path resumes start from.
  procs.append(
    start_runs(
      4,
      root / "log4",
      *(run(d[p, 4], p, checkpoint_every_steps=SOURCE_STEP) for p in ("pmap", "jit")),
    )
  )
  # On 2 devices the same two runs, then a long jit run killed without warning once it has a
  # checkpoint (it reuses the process, and the compiled programs, of the jit run before it).
  killed = start_runs(
    2,
    root / "log2",
    *(run(d[p, 2], p) for p in ("pmap", "jit")),
    run(d["killed"], "jit", num_train_steps=1000, checkpoint_every_steps=2),
  )
  try:
    # A thread watches for the checkpoint (and kills) while this process trains the 1-device runs.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      kill = pool.submit(kill_once_checkpointed, d["killed"], killed)
      try:
        train_in_worker(*(run(d[p, 1], p) for p in ("pmap", "jit")))
      except BaseException:
        os.killpg(killed.pid, signal.SIGKILL)  # the watcher returns at once
        raise
      kill.result()
  finally:
    os.killpg(killed.pid, signal.SIGKILL)
    finish([killed], timeout=60, check=False)
    finish(procs)
  d["killed_at"] = final_params(d["killed"])[0]
  return d


def test_the_device_count_is_invisible_to_the_optimisation(runs):
  """Cross-replica BN and pmean'd gradients: one global batch on 1, 2 or 4 devices trains alike."""
  for devices in (2, 4):
    assert_same_training(runs["pmap", devices], runs["pmap", 1])


def test_jit_trains_like_pmap_on_1_2_4_devices(runs):
  for devices in (1, 2, 4):
    assert_same_training(runs["jit", devices], runs["pmap", devices])


def test_two_processes_train_like_one_process_with_the_same_devices(runs):
  """Only process 0 writes the record; its losses, the parameters both processes checkpointed
  (restored here, in one process) and the count of the evaluated digits, each once across hosts,
  are those of 1 process x 4 devices, under pmap and under jit."""
  assert_same_training(runs["pmap", "two_processes"], runs["pmap", 4])
  assert_same_training(runs["jit", "two_processes"], runs["pmap", 4])


def test_resumes_cross_paths_and_sigkill_under_jit_is_bit_identical(runs, tmp_path):
  """Three resumes on 2 devices in one process: the killed jit run; a pmap checkpoint (4 devices)
  under jit; a jit checkpoint (4 devices) under pmap."""
  crossed = {}
  for source, target in (("pmap", "jit"), ("jit", "pmap")):
    workdir = crossed[source] = str(tmp_path / f"{source}_to_{target}")
    shutil.copytree(runs[source, 4], workdir)
    os.remove(os.path.join(workdir, "DONE"))
    for step in os.listdir(os.path.join(workdir, "checkpoints")):
      if step.isdigit() and int(step) > SOURCE_STEP:  # resume from the other path's checkpoint
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
  assert 2 <= runs["killed_at"] < STEPS, runs["killed_at"]
  proc = start_runs(
    2,
    tmp_path / "log",
    run(runs["killed"], "jit"),
    run(crossed["pmap"], "jit"),
    run(crossed["jit"], "pmap"),
  )
  finish([proc])
  assert open(tmp_path / "log").read().count("resumed from") == 3

  step_a, a = final_params(runs["jit", 2])
  step_b, b = final_params(runs["killed"])
  assert step_a == step_b == STEPS
  for part in ("params", "opt_state", "batch_stats"):
    assert tree_equal(a[part], b[part]), part
  after = {s: l for s, l in losses(runs["killed"]).items() if s > runs["killed_at"]}
  assert after and after == {s: losses(runs["jit", 2])[s] for s in after}

  for source in ("pmap", "jit"):
    assert_same_training(crossed[source], runs[source, 4])


@pytest.mark.parametrize(
  "overrides, words",
  [
    ({"parallelism": "jitt"}, "must be 'pmap' or 'jit'"),
    # Per-replica BN statistics differ between devices: no replicated array can hold them.
    ({"parallelism": "jit", "cross_replica_bn": False}, "use cross_replica_bn=True or parallelism"),
  ],
)
def test_bad_parallelism_is_refused_in_one_line(overrides, words):
  from resnet_jax.train import config as config_lib

  config = config_lib.base_config()
  config.update(overrides)
  with pytest.raises(ValueError, match="config.parallelism=") as raised:
    config_lib.validate(config, known_models=["resnet20"], known_datasets=["digits"])
  assert words in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("parallelism", ["pmap", "jit"])
def test_a_step_fed_its_own_output_does_not_compile_again(parallelism):
  """``replicate`` gives the state the sharding the step returns, so step 2 runs step 1's program.

  flax's ``jax_utils.replicate`` named pmap's mesh axis differently from pmap's outputs: every run
  compiled its train step twice, at step 1 and again at step 2.
  """
  from jax import lax

  from resnet_jax.train import parallel, steps

  par = parallel.create(parallelism)

  def step(state, batch):
    mean = lax.pmean(batch.mean(), steps.AXIS)
    return jax.tree_util.tree_map(lambda x: x + mean, state), mean

  step = par.compile(step, (parallel.REPLICATED, parallel.SHARDED), donate_argnums=(0,))
  batch = par.put_batch(np.ones((jax.local_device_count(), 2, 3), np.float32))
  state = par.replicate({"w": np.zeros((3, 2), np.float32), "b": np.zeros((2,), np.float32)})
  compiles = []

  def on_event(event, duration_secs, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration_secs)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    state, _ = step(state, batch)
    first = len(compiles)
    for _ in range(2):
      state, _ = step(state, batch)
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert first == 1 and len(compiles) == first, compiles
  np.testing.assert_allclose(par.fetch(state)["w"], np.full((3, 2), 3.0))
