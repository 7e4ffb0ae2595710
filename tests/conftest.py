"""Shared test set-up: quiet TensorFlow, and helpers to run the real command in a subprocess."""

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from resnet_jax import runtime

# Every program a test compiles is tiny and runs a few steps, so XLA's compile time is most of
# the suite's: with its backend optimisation (LLVM's passes) off a tiny run takes half the CPU
# time. Results move in their last bits, so the tests' processes and every subprocess they start
# use the same flags and runs that must agree exactly still do. (pytest-xdist's workers inherit
# the controller's environment and import this file again: the flag goes in once.)
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

# The oneDNN kernel's OpenMP threads (and PyTorch's) sleep instead of spinning while they wait, as
# runtime.configure_environment sets for the commands: libgomp reads this when it loads, so it is
# set before any test imports either. Spinning teams stalled a test process for minutes under load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One persistent XLA cache for the test session (not the user's), for the tests' own processes and
# every subprocess: the same tiny programs are compiled once instead of once per run. JAX reads
# these when it loads, so they are set before anything imports it; pytest-xdist's workers inherit
# the controller's environment, so they share its cache, and whoever made it removes it at exit.
if not os.environ.get("RESNET_JAX_TEST_XLA_CACHE"):
  os.environ["RESNET_JAX_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="resnet_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["RESNET_JAX_TEST_XLA_CACHE"], ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["RESNET_JAX_TEST_XLA_CACHE"])
# A size bound makes JAX lock the cache around reads and writes: processes of different test files
# share it, and one must not read an entry another is still writing. It also makes every write scan
# the whole cache, so the ~20 ms compiles of single operations run eagerly are not kept: a step,
# an evaluation or an initialisation takes longer than the threshold.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

# The tests' process set-up is the front door's, with TensorFlow's warnings off too.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
runtime.setup()


def pytest_collection(session):
  """TensorFlow the front door's way, before a test module imports it plainly: without its eager
  Keras import (and Keras's of scikit-learn), seconds of every worker's collection. Here, not at
  import: pytest-xdist's controller loads this file too, and collects nothing."""
  del session
  runtime.pause_collection()  # as the front door does while TensorFlow and JAX load
  runtime.import_tensorflow()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "tests", "configs", "tiny_digits.py")


def free_port() -> int:
  """A TCP port on 127.0.0.1 nobody listens on now (a coordinator's, an emulator's)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def command_env(devices: int = 1, **extra) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"
  env["PYTHONPATH"] = REPO
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_python(code: str, devices: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
  """``python -c CODE`` from the repository with the tests' environment, bounded in time."""
  return subprocess.run(
    [sys.executable, "-c", code],
    env=command_env(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
  )


def train_command(workdir, *overrides, config=TINY_CONFIG):
  return [
    sys.executable,
    "-m",
    "resnet_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *overrides,
  ]


def train_tiny_in_process(workdir, overrides=None) -> dict:
  """The tests' tiny digits run, ``overrides`` (dotted keys) set, trained in this process: for a
  run whose training is not the test's subject (the worker has TensorFlow and JAX loaded, and a
  process start costs seconds of imports). Returns what the loop returns."""
  from resnet_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  config = config_lib.load(TINY_CONFIG)
  config.update_from_flattened_dict(dict(overrides or {}))
  return loop.train_and_evaluate(config, str(workdir))


# The tiny config trained once per ``[workdir, {dotted key: value}]`` in one process, as
# train_tiny_in_process trains it in the worker: for runs that need a device count of their own
# (XLA_FLAGS) but whose process is not the test's subject. It joins the other processes where
# RESNET_JAX_* name them, and logs at INFO (a test may read "resumed from" in its stderr).
_TINY_RUNS_SCRIPT = """
import json, sys
from absl import logging
from resnet_jax import runtime
runtime.pause_collection()  # as the front door does
runtime.start(distributed=True)
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop
logging.set_verbosity(logging.INFO)
for workdir, overrides in json.loads(sys.argv[2]):
  config = config_lib.load(sys.argv[1])
  config.update_from_flattened_dict(overrides)
  loop.train_and_evaluate(config, workdir)
runtime.spare_the_final_collection()  # as the front door ends
"""


def tiny_runs_command(runs) -> list:
  """``python -c`` training each ``[workdir, overrides]`` of ``runs`` in turn, in one process."""
  return [sys.executable, "-c", _TINY_RUNS_SCRIPT, TINY_CONFIG, json.dumps(runs)]


@pytest.fixture
def run_main():
  """Runs ``resnet_jax.main`` to completion (bounded in time); returns the CompletedProcess."""

  def run(workdir, *overrides, devices=1, timeout=300, config=TINY_CONFIG):
    return subprocess.run(
      train_command(workdir, *overrides, config=config),
      env=command_env(devices),
      capture_output=True,
      text=True,
      timeout=timeout,
      cwd=REPO,
    )

  return run


# The test tiers (markers in pyproject.toml; `make test-fast` leaves these out). Whole files mark
# themselves with `pytestmark`; these are single tests of otherwise quick files, by node id prefix.
_MARKED = {
  "test_launch.py::test_local_two_process_jax_job": "multiprocess",
  "test_main.py::test_eval_needs_the_runs_config_where_train_has_a_default": "e2e",
  "test_models.py::test_every_cifar_model_gives_logits_of_the_right_shape": "slow",
  "test_onednn.py::test_under_pmap_on_two_devices": "multiprocess",
  "test_weights.py::test_eval_logits_match_torchvision": "slow",
  "test_weights.py::test_finetune_digits_from_converted_checkpoint": "e2e",
  "test_data.py::test_tensorflow_loads_without_keras_and_tf_keras_still_works": "slow",
  "test_data.py::test_randaugment_and_erasing_are_a_function_of_seed_step_and_example": "slow",
  "test_onednn.py::test_conv_and_both_gradients_equal_lax_conv": "slow",
  "test_profile.py::test_a_tiny_run_leaves_a_trace_of_its_profiled_steps": "e2e",
  "test_steps.py::test_one_step_is_sgd_with_l2_on_the_gradient_of_the_cross_entropy": "slow",
  "test_sweep.py::test_the_front_door_runs_a_sweep_and_a_default_member_names_no_config_file": "e2e",
}


# The files that take longest, longest first (each file's wall time in the suite, from
# benchmarks/pytest_cpu.py's census of 2026-12-07): pytest-xdist hands out whole files in
# collection order, so the long ones start first, and the short ones that come last even out the two
# workers' ends. (`make test` turns off xdist's own order, by number of tests.) Other files follow
# in name order.
_LONGEST_FIRST = (
  "test_bench.py",
  "test_analysis.py",
  "test_train.py",
  "test_faults.py",
  "test_gcs.py",
  "test_models.py",
  "test_weights.py",
  "test_parallelism.py",
  "test_why.py",
  "test_serving.py",
  "test_doors.py",
  "test_data.py",
  "test_modern.py",
  "test_wheel.py",
  "test_lowering.py",
  "test_steps.py",
  "test_configs.py",
  "test_onednn.py",
  "test_synthetic.py",
  "test_mixing.py",
)


def _file_rank(item) -> int:
  name = os.path.basename(str(item.fspath))
  return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
  items.sort(key=_file_rank)  # stable: a file's tests keep their order
  for item in items:
    node = item.nodeid.rpartition("/")[2]
    for prefix, mark in _MARKED.items():
      if node.startswith(prefix):
        item.add_marker(getattr(pytest.mark, mark))
