"""resnet_jax.main, the front door: the overview, per-command help, unknown commands."""

import subprocess
import sys

import pytest

from conftest import REPO, TINY_CONFIG, command_env, run_python

from resnet_jax import main
from resnet_jax.commands import bench, run_config

COMMANDS = ("train", "eval", "models", "bench", "convert", "predict", "export", "sweep", "analyze")


def _run(*args, timeout=60, python_options=()):
  return subprocess.run(
    [sys.executable, *python_options, "-m", "resnet_jax.main", *args],
    env=command_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
  )


def test_help_lists_every_command_with_an_example():
  for args in ((), ("--help",)):
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in COMMANDS:
      assert any(l.startswith(f"  {name} ") for l in lines), (name, proc.stdout)
      assert f"e.g. resnet-jax {name}" in proc.stdout, name
    assert "tensorflow" not in proc.stderr.lower() and "absl::InitializeLog" not in proc.stderr
  assert set(main.COMMANDS) >= set(COMMANDS)


def test_command_help_lists_only_its_own_flags_with_defaults():
  proc = _run("sweep", "--help")
  assert proc.returncode == 0, proc.stderr
  assert "--parallel" in proc.stdout and "(default: '1')" in proc.stdout
  assert "--launcher_arg" in proc.stdout
  assert "--config" not in proc.stdout.replace("--config.key", "")  # train's flags are not here
  assert "--logtostderr" not in proc.stdout  # nor absl's own
  listed = main.command_help("analyze", ["layer_responses"]).split("\nflags:\n")[1]
  assert "--num_images" in listed and "(default: '256')" in listed and "--depths" not in listed
  text = main.command_help("train", [])
  assert "--config" in text and "--cpu_devices" in text and "--batch_size" not in text


def test_unknown_command_is_one_line_with_close_matches_and_exit_2():
  proc = _run("trian")
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  assert "'trian'" in proc.stderr and "train" in proc.stderr and proc.stdout == ""
  assert "did you mean analyze" in main.unknown_command("analyse")


def test_a_flag_of_another_command_is_one_line_and_exit_2():
  proc = _run("models", "--config=configs/digits.py")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    "error: Unknown command line flag 'config' (resnet-jax models --help lists its flags)"
  ]


def test_a_wrong_analysis_name_is_named_as_such_in_one_line_and_exit_2(tmp_path):
  names = "degradation, layer_responses, gradient_flow, shortcuts, test_time, lesions, landscape"
  for args in (("nosuch", f"--out={tmp_path}"), ("nosuch", "--help"), ("nosuch",)):
    proc = _run("analyze", *args)
    assert proc.returncode == 2 and proc.stdout == "", (args, proc.stdout)
    assert proc.stderr.strip().splitlines() == [
      f"error: unknown analysis 'nosuch' (one of {names})"
    ], args
  proc = _run("analyze", f"--out={tmp_path}")  # flags but no name: the name is what is missing
  assert proc.returncode == 2
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith("error: name an analysis first: resnet-jax analyze degradation|layer_responses|")
  ), proc.stderr
  assert not any(tmp_path.iterdir())


def test_an_analysis_that_fails_ends_with_one_error_line_and_exit_2(tmp_path):
  proc = _run("analyze", "layer_responses", f"--out={tmp_path}", f"--runs={tmp_path}", timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(tmp_path) in last, last


def test_eval_needs_the_runs_config_where_train_has_a_default(tmp_path):
  """eval reads the run's own config.json (test_train evaluates a run with none given); a workdir
  without one is refused before TensorFlow loads, naming --config as the way to evaluate it."""
  proc = _run("eval", f"--workdir={tmp_path}", python_options=("-X", "importtime"))
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (
    f"error: no config.json in {tmp_path}: pass the --workdir of a training run, or give "
    "--config=FILE, the config to evaluate it with"
  ), last
  imported = {l.rpartition("|")[2].strip() for l in proc.stderr.splitlines() if "|" in l}
  assert "tensorflow" not in imported
  assert "Default: the built-in digits experiment." in main.command_help("train", [])
  assert "(default: the run's config.json)" in main.command_help("eval", [])
  assert run_config.DEFAULT_CONFIG_FILE.endswith("configs/digits.py")


def _modules_after(*args):
  """The heavy libraries a `resnet-jax ARGS` process had imported when it exited."""
  probe = (
    "import atexit, sys\n"
    "atexit.register(lambda: print(sorted(m for m in ('tensorflow', 'jax', 'flax') "
    "if m in sys.modules), file=sys.stderr))\n"
    f"sys.argv = ['resnet-jax', *{list(args)!r}]\n"
    "from resnet_jax import main\n"
    "main.run()\n"
  )
  proc = run_python(probe)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout, proc.stderr.strip().splitlines()[-1]


def test_help_and_models_start_without_tensorflow_or_jax():
  out, loaded = _modules_after("--help")
  assert "commands:" in out and loaded == "[]"  # nor JAX: help is instant
  out, loaded = _modules_after("sweep", "--help")
  assert "--parallel" in out and loaded == "[]"
  out, loaded = _modules_after("models")
  assert "resnet1202" in out and "19,421,274" in out
  assert loaded == "[]", loaded  # analytic counts: neither TensorFlow nor JAX


@pytest.mark.parametrize(
  "override, words",
  [
    ("--config.optimizer=adamax", "unknown optimizer"),
    ("--config.model=resnet21", "close matches: resnet32"),
  ],
)
def test_a_bad_config_is_refused_before_tensorflow_loads(tmp_path, override, words):
  """The refusal comes before seconds of TensorFlow and device start-up (the error's exit leaves
  no atexit hook to ask, so Python's -X importtime log tells what was imported)."""
  workdir = tmp_path / "run"
  command = (f"--config={TINY_CONFIG}", f"--workdir={workdir}", override)
  proc = _run(*command, python_options=("-X", "importtime"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.") and words in last, last
  imported = {l.rpartition("|")[2].strip() for l in proc.stderr.splitlines() if "|" in l}
  assert "jax" in imported and "tensorflow" not in imported and "orbax.checkpoint" not in imported
  assert not workdir.exists()


def test_a_finished_command_leaves_its_objects_to_the_exit_not_the_collector():
  """Python's collections at shutdown would walk every object TensorFlow and JAX made, a pause
  at the end of every command: a command that finished freezes them (gc.freeze) first. One that
  loads no TensorFlow (``models``) ran with the collector paused, and leaves it on."""
  probe = (
    "import gc, sys\n"
    "from resnet_jax import main\n"
    "sys.argv = ['resnet-jax', 'models']\n"
    "try:\n"
    "  main.run()\n"
    "finally:\n"
    "  print('frozen', gc.get_freeze_count(), gc.isenabled(), file=sys.stderr)\n"
  )
  proc = run_python(probe)
  assert proc.returncode == 0, proc.stderr
  _, frozen, enabled = proc.stderr.strip().splitlines()[-1].split()
  assert int(frozen) > 1000 and enabled == "True", proc.stderr[-500:]


def test_bench_override_values_are_python_literals():
  assert bench._override_value("0.25") == 0.25
  assert bench._override_value("(1, 1, 1)") == (1, 1, 1)
  assert bench._override_value("true") is True and bench._override_value("False") is False
  assert bench._override_value("onednn") == "onednn"
