"""resnet_jax.runtime: the one process set-up, each step checked in a fresh interpreter (it changes
the process it runs in, once)."""

import os
import subprocess
import sys

from conftest import REPO


def _probe(code: str, **env) -> subprocess.CompletedProcess:
  """``python -c CODE`` with nothing of the test runner's environment but what is given."""
  base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "HOME": "/tmp", "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={**base, **env},
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return result


_SETUP = (
  "import os, sys, logging\n"
  "from absl import logging as absl_logging\n"
  "from resnet_jax import runtime\n"
  "runtime.setup(verbose=VERBOSE); runtime.setup(verbose=VERBOSE)\n"
  "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ['EPATH_USE_TF'],\n"
  "      len(absl_logging.get_absl_handler().filters), len(logging.getLogger('absl').filters),\n"
  "      getattr(sys.unraisablehook, '_drops_abandoned_reads', False),\n"
  "      'jax' in sys.modules or 'tensorflow' in sys.modules)\n"
)


def test_setup_sets_the_environment_and_filters_once_and_loads_nothing_heavy():
  out = _probe(_SETUP.replace("VERBOSE", "False")).stdout.split()
  assert out == ["1", "false", "1", "1", "True", "False"]
  assert _probe(_SETUP.replace("VERBOSE", "True")).stdout.split()[0] == "0"


def test_setup_leaves_the_users_own_settings():
  out = _probe(_SETUP.replace("VERBOSE", "True"), TF_CPP_MIN_LOG_LEVEL="3", EPATH_USE_TF="true")
  assert out.stdout.split()[:2] == ["3", "true"]


def test_only_our_info_reaches_the_run_log():
  code = (
    "import logging\n"
    "from absl import logging as absl_logging\n"
    "from resnet_jax import runtime\n"
    "runtime.setup()\n"
    "(f,) = absl_logging.get_absl_handler().filters\n"
    "def record(path, level):\n"
    "  return logging.LogRecord('x', level, path, 1, 'm', (), None)\n"
    f"ours = {os.path.join(REPO, 'resnet_jax', 'metrics.py')!r}\n"
    "print(bool(f.filter(record(ours, logging.INFO))),\n"
    "      bool(f.filter(record('/site-packages/tensorflow_datasets/x.py', logging.INFO))),\n"
    "      bool(f.filter(record('/site-packages/orbax/x.py', logging.WARNING))))\n"
  )
  assert _probe(code).stdout.split() == ["True", "False", "True"]


def test_start_imports_tensorflow_quietly_and_keeps_the_compile_cache(tmp_path):
  """...and with the collector paused, as the front door pauses it, TensorFlow and JAX load without
  a full collection, and their objects are frozen out of every later one, the collector on again."""
  code = (
    "import gc, sys\n"
    "from resnet_jax import runtime\n"
    "runtime.pause_collection()\n"
    "full = gc.get_stats()[2]['collections']\n"
    f"n = runtime.start(cpu_devices='1', compilation_cache={str(tmp_path)!r})\n"
    "import jax\n"
    "print(n, 'tensorflow' in sys.modules, jax.config.jax_compilation_cache_dir)\n"
    "print(gc.get_stats()[2]['collections'] - full, gc.isenabled(), gc.get_freeze_count())\n"
  )
  result = _probe(code)
  loaded, collector = result.stdout.splitlines()
  assert loaded.split() == ["1", "True", str(tmp_path)]
  full_collections, enabled, frozen = collector.split()
  assert full_collections == "0" and enabled == "True" and int(frozen) > 100_000, collector
  # TensorFlow's load-time INFO notices are dropped (warnings would still show).
  assert "absl::InitializeLog" not in result.stderr and " I0" not in result.stderr, result.stderr


def test_a_command_fails_with_one_line_and_status_2():
  code = (
    "import sys\n"
    "from resnet_jax import failure\n"
    "print(sorted(m for m in sys.modules if m.startswith('resnet_jax')), flush=True)\n"
    "failure.exit_with_error('no such run: /tmp/x')\n"
    "print('still here')\n"
  )
  base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "HOME": "/tmp"}
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, env=base
  )
  assert (result.returncode, result.stderr) == (2, "error: no such run: /tmp/x\n")
  assert "still here" not in result.stdout
  # A leaf: start-up and the distributed runtime both end a process through it.
  assert result.stdout.split("\n")[0] == "['resnet_jax', 'resnet_jax.failure']", result.stdout
