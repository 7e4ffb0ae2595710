"""resnet_jax.sweep: grids, stable names, local runs with a fake trainer, resume, emitted commands,
and resnet_jax.commands.sweep, its command.

The fake trainer (written per test) stands in for ``python -m resnet_jax.main``: it logs each
invocation, writes metrics.jsonl and DONE, and fails or blocks on request, so these tests never
start JAX and finish in seconds.
"""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resnet_jax import sweep
from resnet_jax.sweep import product, zipped

REPO = Path(__file__).resolve().parents[1]

FAKE_TRAINER = textwrap.dedent("""
    import json, os, sys, time
    argv = sys.argv[1:]
    assert argv[:2] == ["-m", "resnet_jax.main"], argv
    opts = dict(a[2:].split("=", 1) for a in argv[2:])
    workdir = opts["workdir"]
    name = os.path.basename(workdir)
    root = os.path.dirname(workdir)
    with open(os.path.join(root, "invocations.log"), "a") as f:
      f.write(json.dumps({"name": name, "argv": argv, "cwd": os.getcwd()}) + "\\n")
    steps = int(opts.get("config.num_train_steps", 4))
    seed = int(opts.get("config.seed", 0))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      for step in range(1, steps + 1):
        f.write(json.dumps({"step": step, "train_loss": 1.0 / step,
                            "train_top1_error": 0.5 / step}) + "\\n")
        f.flush()
        if step == 2 and name == os.environ.get("FAKE_FAIL"):
          sys.exit("fake trainer: crashing on request")
        if step == 2 and name == os.environ.get("FAKE_BLOCK"):
          open(os.path.join(root, "blocked"), "w").close()
          time.sleep(120)
      err = 0.1 + 0.01 * seed
      f.write(json.dumps({"step": steps, "eval_top1_error": err, "eval_loss": 2 * err}) + "\\n")
    with open(os.path.join(workdir, "DONE"), "w") as f:
      json.dump({"step": steps, "preempted": False, "eval_top1_error": err,
                 "eval_loss": 2 * err}, f)
""")


@pytest.fixture
def fake(tmp_path, monkeypatch):
  """(python argument list for run_sweep, sweep file writer, invocation counter)."""
  trainer = tmp_path / "fake_trainer.py"
  trainer.write_text(FAKE_TRAINER)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text("def get_config(): pass\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv("FAKE_FAIL", raising=False)
  monkeypatch.delenv("FAKE_BLOCK", raising=False)

  def write_sweep(body, name="s.py"):
    path = tmp_path / name
    path.write_text("from resnet_jax.sweep import product, zipped\n" + textwrap.dedent(body))
    return path

  def invocations(root):
    log = Path(root) / "invocations.log"
    counts = {}
    if log.exists():
      for line in log.read_text().splitlines():
        n = json.loads(line)["name"]
        counts[n] = counts.get(n, 0) + 1
    return counts

  return [sys.executable, str(trainer)], write_sweep, invocations


def _summary(root):
  with open(Path(root) / "summary.csv") as f:
    return {r["name"]: r for r in csv.DictReader(f)}


# --- grids and names ---------------------------------------------------------------------------------


def test_product_and_zip_expand_in_order():
  assert product(model=["a", "b"], seed=[0, 1]) == [
    {"model": "a", "seed": 0},
    {"model": "a", "seed": 1},
    {"model": "b", "seed": 0},
    {"model": "b", "seed": 1},
  ]
  assert zipped(model=["a", "b"], lr=[0.1, 0.2]) == [
    {"model": "a", "lr": 0.1},
    {"model": "b", "lr": 0.2},
  ]
  grid = product(
    zipped(model=["plain20", "resnet20"], lr=[0.1, 0.2]),
    {"model_overrides.shortcut": ["A", "B"]},
    seed=[0],
  )
  assert len(grid) == 4
  assert grid[1] == {"model": "plain20", "lr": 0.1, "model_overrides.shortcut": "B", "seed": 0}
  assert product(model=["x"]) + zipped(model=["y"]) == [{"model": "x"}, {"model": "y"}]
  assert sweep.zip_ is zipped
  with pytest.raises(ValueError, match="different lengths"):
    zipped(a=[1, 2], b=[1])
  with pytest.raises(ValueError, match="set by two axes"):
    product(zipped(a=[1]), a=[2])
  with pytest.raises(TypeError, match="list of values"):
    product(model="resnet20")


def test_member_names_are_stable_and_safe():
  assert sweep.member_name({"seed": 0, "model": "resnet20"}) == "model=resnet20,seed=0"
  assert sweep.member_name({"model": "resnet20", "seed": 0}) == "model=resnet20,seed=0"
  assert sweep.member_name({}) == "default"
  assert sweep.member_name({"a": True, "lr": 0.1, "b": (1, 2)}) == "a=true,b=1-2,lr=0.1"
  assert sweep.member_name({"d": "x/y z;$(id)"}) == "d=x_y_z___id_"
  assert sweep.member_name({"m": "r"}, "configs/cifar10.py") == "config=cifar10,m=r"
  long = sweep.member_name({"k": "v" * 400})
  assert len(long) <= 150 and long == sweep.member_name({"k": "v" * 400})
  assert long != sweep.member_name({"k": "v" * 399})


def test_format_value_round_trips_through_the_flag_parser():
  assert [sweep.format_value(v) for v in (True, False, 0.1, 3, "x", (32000, 48000), [1])] == [
    "true",
    "false",
    "0.1",
    "3",
    "x",
    "(32000, 48000)",
    "(1,)",
  ]


def test_load_sweep(fake):
  _, write_sweep, _ = fake
  path = write_sweep("""
      CONFIG = "configs/tiny.py"
      OVERRIDES = {"num_train_steps": 3}
      def get_sweep():
        return product(model=["b", "a"], seed=[1]) + [{"config": "configs/other.py", "seed": 2}]
  """)
  members = sweep.load_sweep(path)
  assert [m.name for m in members] == ["model=b,seed=1", "model=a,seed=1", "config=other,seed=2"]
  assert members[0].config == "configs/tiny.py" and members[2].config == "configs/other.py"
  assert members[0].overrides == {"num_train_steps": 3, "model": "b", "seed": 1}
  assert members[0].train_args("R/x") == [
    "--config=configs/tiny.py",
    "--workdir=R/x",
    "--config.num_train_steps=3",
    "--config.model=b",
    "--config.seed=1",
  ]
  dup = write_sweep("def get_sweep():\n  return [{'seed': 0}, {'seed': 0}]\n", "dup.py")
  with pytest.raises(ValueError, match="share the workdir name"):
    sweep.load_sweep(dup)
  bad = write_sweep("def get_sweep():\n  return [{'bad key': 0}]\n", "bad.py")
  with pytest.raises(ValueError, match="not a config key"):
    sweep.load_sweep(bad)
  # A file that does not run is one line naming the file and the line.
  syntax = write_sweep("def get_sweep(:\n  return []\n", "syntax.py")
  with pytest.raises(ValueError, match=r"^\S*syntax.py:2: syntax error: "):
    sweep.load_sweep(syntax)
  fails = write_sweep("def get_sweep():\n  return zipped(a=[1], b=[1, 2])\n", "fails.py")
  with pytest.raises(ValueError, match=r"fails.py:3: ValueError: zipped: axes have different"):
    sweep.load_sweep(fails)
  assert sweep.load_sweep(path, ["--x=1"])[0].train_args("R")[-1] == "--x=1"


def test_example_sweep_files_load():
  names = {
    f.name: [m.name for m in sweep.load_sweep(f)]
    for f in sorted((REPO / "launch" / "sweeps").glob("*.py"))
  }
  assert names["degradation.py"] == [
    f"config=cifar10_{f}{d},seed=0" for f in ("plain", "resnet") for d in (20, 32, 44, 56)
  ]
  for f in sorted((REPO / "launch" / "sweeps").glob("*.py")):  # every config file exists
    for m in sweep.load_sweep(f):
      assert (REPO / m.config).is_file(), (f.name, m.config)
  assert len(names["digits_tiny.py"]) == 4


# --- local runs ----------------------------------------------------------------------------------------


def test_local_sweep_of_two_members_writes_summary(fake, tmp_path):
  python, write_sweep, invocations = fake
  path = write_sweep("""
      CONFIG = "configs/tiny.py"
      def get_sweep():
        return product(model=["resnet20"], seed=[0, 1])
  """)
  root = tmp_path / "runs"
  assert (
    sweep.run_sweep(
      path, root, python=python, extra_args=["--config.num_train_steps=3"], parallel=2
    )
    == 0
  )
  assert invocations(root) == {"model=resnet20,seed=0": 1, "model=resnet20,seed=1": 1}
  rows = _summary(root)
  assert list(rows) == ["model=resnet20,seed=0", "model=resnet20,seed=1"]
  r = rows["model=resnet20,seed=1"]
  assert r["status"] == "ok" and r["final_step"] == "3"
  assert float(r["test_top1_error"]) == pytest.approx(0.11)
  assert float(r["train_top1_error"]) == pytest.approx(0.5 / 3)
  assert json.loads(r["overrides"]) == {"model": "resnet20", "seed": 1}
  # what the member ran with: its overrides, then the arguments after `--`
  assert shlex.split(r["arguments"]) == [
    "--config.model=resnet20",
    "--config.seed=1",
    "--config.num_train_steps=3",
  ]
  md = (root / "summary.md").read_text().splitlines()
  assert md[0].startswith("| member | status |") and len(md) == 4
  assert "| model=resnet20,seed=1 | ok | 3 | 16.67% | 11.00% |" in md[3]
  # the trainer got exactly the member's arguments, overrides before extra args
  argv = json.loads((root / "invocations.log").read_text().splitlines()[0])["argv"]
  assert argv[2] == "--config=configs/tiny.py"
  assert argv[3] in (
    f"--workdir={root}/model=resnet20,seed=0",
    f"--workdir={root}/model=resnet20,seed=1",
  )
  assert argv[-1] == "--config.num_train_steps=3"
  assert (root / "model=resnet20,seed=0" / "sweep.log").exists()
  # The arguments after `--` are part of each member: other ones are refused, before anything runs.
  with pytest.raises(ValueError, match=r"ran with .* -- --config.num_train_steps=3, not .* -- "):
    sweep.run_sweep(path, root, python=python, extra_args=["--config.num_train_steps=5"])
  with pytest.raises(ValueError, match="and nothing after --; give another --workdir"):
    sweep.run_sweep(path, root, python=python)
  assert sum(invocations(root).values()) == 2
  # A line a running member is half-way through writing hides none of its results.
  with open(root / "model=resnet20,seed=1" / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "train_lo')
  assert sweep.read_results(root / "model=resnet20,seed=1") == {
    "done": True,
    "step": 3,
    "train_top1_error": pytest.approx(0.5 / 3),
    "test_top1_error": pytest.approx(0.11),
    "train_loss": pytest.approx(1 / 3),
    "test_loss": pytest.approx(0.22),
  }


def test_failed_member_is_reported_others_go_on_rerun_completes_it(
  fake, tmp_path, monkeypatch, capsys
):
  python, write_sweep, invocations = fake
  path = write_sweep("""
      CONFIG = "configs/tiny.py"
      def get_sweep():
        return product(seed=[0, 1, 2])
  """)
  root = tmp_path / "runs"
  monkeypatch.setenv("FAKE_FAIL", "seed=1")
  assert sweep.run_sweep(path, root, python=python) == 1
  out = capsys.readouterr().out
  assert "failed (exit 1): seed=1" in out and "crashing on request" in out
  rows = _summary(root)
  assert [rows[n]["status"] for n in ("seed=0", "seed=1", "seed=2")] == [
    "ok",
    "failed (exit 1)",
    "ok",
  ]
  assert rows["seed=1"]["final_step"] == "2" and rows["seed=1"]["test_top1_error"] == ""

  monkeypatch.delenv("FAKE_FAIL")
  assert sweep.run_sweep(path, root, python=python) == 0
  assert invocations(root) == {"seed=0": 1, "seed=1": 2, "seed=2": 1}
  assert [r["status"] for r in _summary(root).values()] == ["done", "ok", "done"]
  assert sweep.run_sweep(path, root, python=python) == 0  # nothing left to do
  assert invocations(root) == {"seed=0": 1, "seed=1": 2, "seed=2": 1}


def test_killed_sweep_rerun_completes_only_what_was_missing(fake, tmp_path):
  python, write_sweep, invocations = fake
  path = write_sweep("""
      CONFIG = "configs/tiny.py"
      def get_sweep():
        return product(model=["a", "b", "c"])
  """)
  root = tmp_path / "runs"
  code = (
    f"import sys; from resnet_jax.sweep import run_sweep; "
    f"sys.exit(run_sweep({str(path)!r}, {str(root)!r}, python={python!r}))"
  )
  env = dict(
    os.environ,
    FAKE_BLOCK="model=b",
    PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", code],
    env=env,
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 60
    while not (root / "blocked").exists():
      assert proc.poll() is None and time.monotonic() < deadline, "sweep never reached member b"
      time.sleep(0.05)
  finally:  # kill the sweep and its trainer (same process group), as a crash or ^\ would
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  assert invocations(root) == {"model=a": 1, "model=b": 1}
  assert (root / "model=a" / "DONE").exists() and not (root / "model=b" / "DONE").exists()

  assert sweep.run_sweep(path, root, python=python) == 0
  assert invocations(root) == {"model=a": 1, "model=b": 2, "model=c": 1}
  assert [r["status"] for r in _summary(root).values()] == ["done", "ok", "ok"]


def test_missing_config_fails_before_running(fake, tmp_path):
  python, write_sweep, invocations = fake
  path = write_sweep("CONFIG = 'configs/nope.py'\ndef get_sweep():\n  return product(seed=[0])\n")
  with pytest.raises(FileNotFoundError, match="nope.py"):
    sweep.run_sweep(path, tmp_path / "runs", python=python)
  assert invocations(tmp_path / "runs") == {}


# --- emitted launch commands ---------------------------------------------------------------------------

NASTY = 'it\'s a "test" $(touch /tmp/pwned) `id`; *'


@pytest.mark.parametrize("emit", ["tpu", "slurm", "local"])
def test_emit_prints_one_quoted_command_per_member(fake, emit, capsys, tmp_path, monkeypatch):
  _, write_sweep, _ = fake
  path = write_sweep(f"""
      CONFIG = "configs/tiny.py"
      def get_sweep():
        return product(model=["resnet20"], note=[{NASTY!r}, "plain"])
  """)

  def no_process(*args, **kwargs):
    raise AssertionError(f"--emit started a process: {args}")

  monkeypatch.setattr(subprocess, "Popen", no_process)
  monkeypatch.setattr(subprocess, "run", no_process)
  files_before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  launcher = ["--zone=us central"] if emit != "local" else []
  sweep.print_commands(
    path,
    "gs://bucket/sw eep",
    emit,
    launcher_args=launcher,
    extra_args=["--config.x=$(y)"],
    python="python3",
  )
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2
  members = sweep.load_sweep(path)
  for line, m in zip(lines, members):
    expected_tail = m.train_args(f"gs://bucket/sw eep/{m.name}") + ["--config.x=$(y)"]
    argv = shlex.split(line)
    assert argv[-len(expected_tail) :] == expected_tail
    if emit == "tpu":
      assert argv[0].endswith("launch/tpu_vm.sh") and argv[1] == "--zone=us central"
    elif emit == "slurm":
      assert argv[:3] == ["sbatch", f"--job-name=resnet-{m.name}", "--zone=us central"]
      assert argv[3].endswith("launch/slurm.sbatch")
    else:
      assert argv[:3] == ["python3", "-m", "resnet_jax.main"]
  assert f"--config.note={NASTY}" in shlex.split(lines[0])
  assert not Path("/tmp/pwned").exists()
  # Printing commands writes nothing: no local "gs:" folder, no member folders, no summary.
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files_before


def test_the_front_door_runs_a_sweep_and_a_default_member_names_no_config_file(fake, tmp_path):
  # A sweep file without CONFIG trains the built-in default experiment: its members leave --config
  # out, so they need no configs/ folder (an installed wheel has none).
  _, write_sweep, _ = fake
  path = write_sweep("def get_sweep():\n  return product(seed=[3])\n")
  argv = [str(path), "--workdir=gs://b/r", "--emit=local", "--python=py", "--"]
  proc = _front_door(
    "sweep", *argv, "--config.num_train_steps=5", cwd=tmp_path, python_options=("-X", "importtime")
  )
  assert proc.returncode == 0, proc.stderr
  imported = [l.rsplit("|", 1)[-1].strip() for l in proc.stderr.splitlines() if "|" in l]
  # --emit prints without TensorFlow. It checks each member as train does before TF loads, which
  # loads JAX (the validation's owners of optimizers, losses, schedules), as `train` does; the
  # modules themselves load JAX only once that check runs.
  assert "resnet_jax.sweep.emit" in imported and "jax" in imported
  assert imported.index("resnet_jax.commands.sweep") < imported.index("jax")
  assert not set(imported) & {"tensorflow", "resnet_jax.runs"}, proc.stderr[-2000:]
  assert shlex.split(proc.stdout) == [
    "py",
    "-m",
    "resnet_jax.main",
    "--workdir=gs://b/r/seed=3",
    "--config.seed=3",
    "--config.num_train_steps=5",
  ]
  proc = _front_door("sweep", *argv[:-1], "stray", cwd=tmp_path)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.strip().splitlines()[-1] == (
    "error: unexpected arguments ['stray']; member flags go after --, e.g. -- --config.x=1"
  )


def test_every_member_is_checked_before_anything_prints_or_runs(fake, tmp_path):
  """A member train would refuse is one line naming it, exit 2, nothing printed, started or
  written, with --emit or run here (one path checks both): a typo'd key, an unknown model, a bad
  flag after `--`, a sweep file that does not run."""
  _, write_sweep, invocations = fake
  write_sweep("def get_sweep():\n  return product(model=['resnet20', 'resnet21'], seed=[0])\n")
  write_sweep("def get_sweep():\n  return product({'learning_rat': [0.1]})\n", "key.py")
  write_sweep("def get_sweep():\n  return product(seed=[0])\n", "ok.py")
  write_sweep("def get_sweep(:\n  return []\n", "syntax.py")
  cases = {
    ("s.py", "--emit=slurm"): "sweep member model=resnet21,seed=0: config.model='resnet21': "
    "unknown model;",
    ("key.py", "--parallel=2"): "sweep member learning_rat=0.1: unknown key config.learning_rat; "
    "did you mean config.learning_rate?",
    ("ok.py", "--emit=tpu", "--", "--bogus=1"): "sweep member seed=0: Unknown command line flag "
    "'bogus'",
    ("ok.py", "--", "--config.model_overrides.shortcu=A"): "sweep member seed=0: unknown key "
    "config.model_overrides.shortcu; did you mean config.model_overrides.shortcut?",
    ("syntax.py",): "syntax.py:2: syntax error: invalid syntax",
  }
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  for (sweep_file, *rest), words in cases.items():
    proc = _front_door("sweep", sweep_file, "--workdir=runs", *rest, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "", (sweep_file, rest, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
  assert invocations(tmp_path / "runs") == {}


def _front_door(*args, cwd, python_options=()):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run(
    [sys.executable, *python_options, "-m", "resnet_jax.main", *args],
    capture_output=True,
    text=True,
    timeout=60,
    cwd=cwd,
    env=env,
  )


def test_a_local_member_without_a_config_file_trains_the_default_experiment(fake, tmp_path):
  python, write_sweep, _ = fake
  path = write_sweep("def get_sweep():\n  return product(seed=[0])\n")
  assert sweep.run_sweep(path, tmp_path / "runs", python=python) == 0
  member = json.loads((tmp_path / "runs" / "seed=0" / sweep.MEMBER_FILE).read_text())
  assert member["config"] is None
  assert not any(a.startswith("--config=") for a in member["command"]), member["command"]
