"""Sweeps: a Python file of config overrides -> members -> run locally, or emit launch commands.

A sweep file is Python, like a config::

    # launch/sweeps/degradation.py
    from resnet_jax.sweep import product, zipped

    CONFIG = "configs/cifar10_resnet20.py"  # optional; default: the built-in digits recipe
    OVERRIDES = {"num_train_steps": 64000}  # optional; every member, not part of the names

    def get_sweep():
      return product(model=["plain20", "resnet20"], seed=[0, 1])          # 4 members
      # zipped(model=[...], learning_rate=[...])  pairs values up (equal lengths)
      # product(zipped(...), seed=[0, 1]), sweep_a + sweep_b  also work

``get_sweep()`` returns a list of dicts ``{config_key: value}``; a dotted key such as
``"model_overrides.shortcut"`` goes in a positional dict: ``product({"model_overrides.shortcut":
["A", "B"]}, seed=[0])``. The key ``config`` picks a member's config file
(``product(config=["configs/cifar10_plain20.py", ...], seed=[0])``; names start ``config=STEM``).

Each member runs ``python -m resnet_jax.main --config=CONFIG --workdir=ROOT/NAME --config.k=v ...``
(argument lists, never a shell); with no CONFIG it leaves ``--config`` out, so the training program
uses the package's default experiment (``resnet_jax.train.config.digits``), which an installed wheel
has too. NAME comes from the overrides in sorted key order, e.g.
``model=resnet20,seed=0``: stable when the sweep file is reordered, so re-running a sweep finds its
workdirs again. Members whose workdir holds ``DONE`` are skipped; the training program resumes the
others from their checkpoints. ``ROOT/summary.csv`` and ``ROOT/summary.md`` hold one row per member.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import flags

from resnet_jax import storage

DONE_FILE = "DONE"  # written by the training program after its last step
METRICS_FILE = "metrics.jsonl"  # one JSON object per line, written by the training program
LOG_FILE = "sweep.log"  # the member's stdout+stderr, appended on every run
MEMBER_FILE = "sweep_member.json"  # config, overrides and command of the member
# No config file: members train the default experiment the training program has built in.
DEFAULT_CONFIG = None
EMIT_KINDS = ("tpu", "slurm", "local")
# The checkout this package runs from, where a sweep's relative config paths are looked up last;
# an installed wheel has none (its parent folder holds no configs/ nor launch/).
_CHECKOUT = Path(__file__).resolve().parents[1]
_MAX_NAME = 150


# --- building sweeps --------------------------------------------------------------------------------


def _as_sweep(
  parts: Sequence[Any], axes: Mapping[str, Sequence[Any]], how: str
) -> list[list[dict]]:
  """Each positional part (a mapping of axes, or an already built sweep) and each keyword axis as a
  list of single-key dicts (or a sweep: a list of dicts)."""
  out = []
  for part in [*parts, dict(axes)] if axes else parts:
    if isinstance(part, Mapping):
      for key, values in part.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
          raise TypeError(f"{how}: axis {key!r} needs a list of values, got {values!r}")
        out.append([{key: v} for v in values])
    elif isinstance(part, Sequence) and all(isinstance(m, Mapping) for m in part):
      out.append([dict(m) for m in part])
    else:
      raise TypeError(
        f"{how}: expected axes (a dict of lists) or a sweep (a list of dicts), got {part!r}"
      )
  return out


def _merge(members: Iterable[Mapping], how: str) -> dict:
  merged: dict = {}
  for m in members:
    for k, v in m.items():
      if k in merged:
        raise ValueError(f"{how}: key {k!r} is set by two axes")
      merged[k] = v
  return merged


def product(*parts, **axes) -> list[dict]:
  """Every combination; the first axis varies slowest. ``product(a=[1, 2], b=[3])`` ->
  ``[{a: 1, b: 3}, {a: 2, b: 3}]``. Parts may be dicts of axes or sweeps (lists of dicts)."""
  lists = _as_sweep(parts, axes, "product")
  return [_merge(combo, "product") for combo in itertools.product(*lists)]


def zipped(*parts, **axes) -> list[dict]:
  """Values paired position by position (all axes the same length). ``zipped(a=[1, 2], b=[3, 4])``
  -> ``[{a: 1, b: 3}, {a: 2, b: 4}]``."""
  lists = _as_sweep(parts, axes, "zipped")
  lengths = {len(l) for l in lists}
  if len(lengths) > 1:
    raise ValueError(f"zipped: axes have different lengths {sorted(lengths)}")
  return [_merge(combo, "zipped") for combo in zip(*lists)]


zip_ = zipped


# --- members ----------------------------------------------------------------------------------------


def format_value(v: Any) -> str:
  """A value as ``--config.k=`` text that ml_collections parses back to it."""
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))
  if isinstance(v, float):
    return repr(v)
  return str(v)


def _name_value(v: Any) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return "-".join(_name_value(x) for x in v)
  if isinstance(v, float):
    return repr(v)
  return str(v)


def member_name(overrides: Mapping[str, Any], config: str | None = None) -> str:
  """Workdir name: ``k=v`` pairs in sorted key order joined by ',', filesystem-safe; the config
  file's stem first when the member chose its own config; 'default' when there is nothing."""
  pairs = [f"{k}={_name_value(overrides[k])}" for k in sorted(overrides)]
  if config is not None:
    pairs.insert(0, f"config={Path(config.split(':')[0]).stem}")
  name = re.sub(r"[^A-Za-z0-9._+=,-]", "_", ",".join(pairs)) or "default"
  if name.startswith("."):
    name = "_" + name
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f"{name[: _MAX_NAME - 11]}-{digest}"
  return name


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  config: str | None  # None: the training program's built-in default experiment
  overrides: dict

  def train_args(self, workdir: str) -> list[str]:
    """Arguments of ``python -m resnet_jax.main`` (and of the launch scripts)."""
    config = [f"--config={self.config}"] if self.config is not None else []
    return [*config, f"--workdir={workdir}"] + [
      f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()
    ]


def load_sweep(sweep_file: str | os.PathLike) -> list[Member]:
  """Members of a sweep file, in the file's order; names checked unique."""
  path = Path(sweep_file)
  if not path.is_file():
    raise FileNotFoundError(f"sweep file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"_resnet_jax_sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path}: a sweep file defines get_sweep() -> list of override dicts")
  default_config = getattr(module, "CONFIG", DEFAULT_CONFIG)
  common = dict(getattr(module, "OVERRIDES", {}))
  raw = module.get_sweep()
  if isinstance(raw, Mapping) or not isinstance(raw, Sequence):
    raise ValueError(f"{path}: get_sweep() must return a list of dicts, got {type(raw).__name__}")
  members, seen = [], {}
  for i, m in enumerate(raw):
    if not isinstance(m, Mapping):
      raise ValueError(f"{path}: member {i} is {m!r}, not a dict")
    overrides = {str(k): v for k, v in m.items() if k != "config"}
    for k in [*overrides, *common]:
      if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", k):
        raise ValueError(f"{path}: member {i}: {k!r} is not a config key")
    own_config = m.get("config")
    name = member_name(overrides, own_config)
    if name in seen:
      raise ValueError(f"{path}: members {seen[name]} and {i} share the workdir name {name!r}")
    seen[name] = i
    config = own_config or default_config
    members.append(Member(name, None if config is None else str(config), {**common, **overrides}))
  return members


# --- results ----------------------------------------------------------------------------------------


def read_results(workdir: str | os.PathLike) -> dict:
  """Final metrics of a member's workdir: step, train/eval error and loss, done flag.

  Reads ``metrics.jsonl`` (the last value of each key; a torn last line is ignored) and lets
  ``DONE``'s final metrics win where it has them.
  """
  workdir = storage.location(workdir)
  last: dict = {}
  step = None
  try:
    with (workdir / METRICS_FILE).open() as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if not isinstance(rec, dict):
          continue
        if isinstance(rec.get("step"), (int, float)):
          step = rec["step"] if step is None else max(step, rec["step"])
        last.update({k: v for k, v in rec.items() if k != "step"})
  except FileNotFoundError:
    pass
  done_path = workdir / DONE_FILE
  done = done_path.exists()
  if done:
    try:
      final = json.loads(done_path.read_text() or "{}")
    except (json.JSONDecodeError, OSError):
      final = {}
    if isinstance(final, dict):
      if isinstance(final.get("step"), (int, float)):
        step = final["step"]
      last.update({k: v for k, v in final.items() if k != "step" and _is_number(v)})
  return {
    "done": done,
    "step": step,
    "train_top1_error": last.get("train_top1_error"),
    "test_top1_error": last.get("eval_top1_error"),
    "train_loss": last.get("train_loss"),
    "test_loss": last.get("eval_loss"),
  }


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


SUMMARY_COLUMNS = (
  "name",
  "status",
  "final_step",
  "train_top1_error",
  "test_top1_error",
  "train_loss",
  "test_loss",
  "seconds",
  "overrides",
  "config",
  "workdir",
)


def write_summary(rows: list[dict], root: str | os.PathLike):
  """``ROOT/summary.csv`` (raw numbers) and ``ROOT/summary.md`` (errors in %), atomically."""
  root = storage.location(root)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: ("" if r.get(k) is None else r[k]) for k in SUMMARY_COLUMNS})
  md = [
    "| member | status | step | train err | test err | train loss | test loss |",
    "|---|---|---:|---:|---:|---:|---:|",
  ]
  pct = lambda v: "" if not _is_number(v) or math.isnan(v) else f"{100 * v:.2f}%"
  num = lambda v: "" if not _is_number(v) else f"{v:.4g}"
  for r in rows:
    cells = [
      r["name"],
      r["status"],
      "" if r.get("final_step") is None else str(r["final_step"]),
      pct(r.get("train_top1_error")),
      pct(r.get("test_top1_error")),
      num(r.get("train_loss")),
      num(r.get("test_loss")),
    ]
    md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  paths = root / "summary.csv", root / "summary.md"
  for path, text in zip(paths, (buf.getvalue(), "\n".join(md) + "\n")):
    storage.write_atomically(path, text)
  return paths


def _row(member: Member, root, status: str, seconds: float | None) -> dict:
  workdir = os.fspath(root / member.name)
  res = read_results(workdir)
  return {
    "name": member.name,
    "status": status,
    "final_step": res["step"],
    "train_top1_error": res["train_top1_error"],
    "test_top1_error": res["test_top1_error"],
    "train_loss": res["train_loss"],
    "test_loss": res["test_loss"],
    "seconds": None if seconds is None else round(seconds, 1),
    "overrides": json.dumps(member.overrides, sort_keys=True, default=str),
    "config": member.config,
    "workdir": workdir,
  }


# --- running ----------------------------------------------------------------------------------------


def _resolve_config(config: str | None, sweep_file: Path) -> str | None:
  """An existing config path for a local run: as given (from the cwd), else next to the sweep
  file, else in the checkout the package runs from. None (the built-in default) stays None."""
  if config is None:
    return None
  path, sep, arg = config.partition(":")
  bases = [Path.cwd(), sweep_file.parent]
  if (_CHECKOUT / "configs").is_dir():
    bases.append(_CHECKOUT)
  for base in bases:
    cand = base / path
    if cand.is_file():
      return (path if base == Path.cwd() else str(cand)) + sep + arg
  raise FileNotFoundError(
    f"config file {path!r} not found (from {', '.join(str(b) for b in dict.fromkeys(bases))})"
  )


def _launch_script(name: str) -> str:
  """launch/NAME from the cwd, else from the checkout; as a relative path when neither has it (an
  installed wheel: the command is run where the launch scripts are)."""
  rel = Path("launch") / name
  for base in (Path.cwd(), _CHECKOUT):
    if (base / rel).is_file():
      return str(rel) if base == Path.cwd() else str(base / rel)
  return str(rel)


def emit_commands(
  members: Sequence[Member],
  root: str,
  emit: str,
  *,
  extra_args: Sequence[str] = (),
  launcher_args: Sequence[str] = (),
  python: str | Sequence[str] = "python",
) -> list[list[str]]:
  """One launch command (argument list) per member.

  ``tpu``: ``launch/tpu_vm.sh LAUNCHER_ARGS --config=.. --workdir=ROOT/NAME --config.k=v ..``
  (TPU name/zone from LAUNCHER_ARGS or $TPU_NAME/$TPU_ZONE); ``slurm``: ``sbatch --job-name=NAME
  LAUNCHER_ARGS launch/slurm.sbatch --config=.. ..``; ``local``: ``python -m resnet_jax.main ..``.
  ROOT may be a ``gs://`` URL: it is joined as text, never touched.
  """
  if emit not in EMIT_KINDS:
    raise ValueError(f"emit must be one of {', '.join(EMIT_KINDS)}, got {emit!r}")
  cmds = []
  for m in members:
    args = m.train_args(posixpath.join(root.rstrip("/") or "/", m.name)) + list(extra_args)
    if emit == "tpu":
      cmds.append([_launch_script("tpu_vm.sh"), *launcher_args, *args])
    elif emit == "slurm":
      cmds.append(
        [
          "sbatch",
          f"--job-name=resnet-{m.name}"[:128],
          *launcher_args,
          _launch_script("slurm.sbatch"),
          *args,
        ]
      )
    else:
      cmds.append([*_python_cmd(python), *launcher_args, "-m", "resnet_jax.main", *args])
  return cmds


def _python_cmd(python) -> list[str]:
  return [python] if isinstance(python, (str, os.PathLike)) else list(python)


class _Stop(Exception):
  pass


def run_sweep(
  sweep_file: str | os.PathLike,
  root: str | os.PathLike,
  *,
  parallel: int = 1,
  emit: str | None = None,
  extra_args: Sequence[str] = (),
  python: str | Sequence[str] = sys.executable,
  launcher_args: Sequence[str] = (),
  out=None,
) -> int:
  """Runs (or, with `emit`, prints launch commands for) every member of a sweep file.

  Local runs: `parallel` members at a time, each ``python -m resnet_jax.main`` with its stdout and
  stderr appended to ``ROOT/NAME/sweep.log``; members with ``ROOT/NAME/DONE`` are skipped; a member
  that fails is reported and the others go on. `python` is the interpreter (or an argument list
  standing for it: tests pass a fake trainer). `extra_args` go after every member's overrides (they
  win). Writes ``ROOT/summary.{csv,md}`` after every member. Returns 0 when every member is done,
  1 otherwise (emit: 0 after printing).
  """
  out = out or sys.stdout
  sweep_file = Path(sweep_file)
  members = load_sweep(sweep_file)
  if emit:
    for cmd in emit_commands(
      members,
      os.fspath(root),
      emit,
      extra_args=extra_args,
      launcher_args=launcher_args,
      python=python,
    ):
      print(shlex.join(cmd), file=out)
    return 0
  if parallel < 1:
    raise ValueError(f"parallel must be >= 1, got {parallel}")
  root = storage.check_access(os.fspath(root), "--workdir", write=True)
  configs = {m.config: _resolve_config(m.config, sweep_file) for m in members}
  commands = {
    m.name: [
      *_python_cmd(python),
      "-m",
      "resnet_jax.main",
      *dataclasses.replace(m, config=configs[m.config]).train_args(os.fspath(root / m.name)),
      *extra_args,
    ]
    for m in members
  }
  run = _LocalRun(members, root, commands, out)
  run.say(
    f"{len(members)} members, {len(members) - len(run.todo)} already done, {len(run.todo)} to run, "
    f"{parallel} at a time; root {root}"
  )
  _run_locally(run, parallel)
  return run.finish()


def _run_locally(run: _LocalRun, parallel: int) -> None:
  """Starts members until `parallel` run at once, reaps each as it ends; on SIGTERM or ^C stops
  the running ones (their checkpoints resume them next time) and re-raises."""
  previous = None
  if threading.current_thread() is threading.main_thread():

    def on_term(signum, frame):
      raise _Stop(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
  queue = list(run.todo)
  try:
    run.write_summary()
    while queue or run.running:
      while queue and len(run.running) < parallel:
        run.start(queue.pop(0))
      time.sleep(0.05)
      run.reap()
  except (KeyboardInterrupt, _Stop):
    run.say("interrupted: stopping running members (re-run the same command to resume)")
    _stop_all(run.running, run.logs)
    run.write_summary()
    raise
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


class _LocalRun:
  """One local run of a sweep: each member's status, time, process and log, and the summary."""

  def __init__(self, members: Sequence[Member], root, commands: Mapping[str, list[str]], out):
    self.members, self.root, self.commands, self._out = members, root, commands, out
    self.logs = _MemberLogs(root)
    self.status = {
      m.name: "done" if (root / m.name / DONE_FILE).exists() else "pending" for m in members
    }
    self.todo = [m for m in members if self.status[m.name] == "pending"]
    self.seconds: dict[str, float] = {}
    self.running: dict[subprocess.Popen, tuple[Member, float, Any]] = {}
    self._env = dict(os.environ, PYTHONUNBUFFERED="1")

  def say(self, msg: str) -> None:
    print(f"sweep: {msg}", file=self._out, flush=True)

  def write_summary(self) -> None:
    rows = [_row(m, self.root, self.status[m.name], self.seconds.get(m.name)) for m in self.members]
    write_summary(rows, self.root)

  def start(self, m: Member) -> None:
    """Records the member's command in its workdir and starts it, output appended to its log."""
    cmd = self.commands[m.name]
    record = {"name": m.name, "config": m.config, "overrides": m.overrides, "command": cmd}
    storage.write_atomically(
      self.root / m.name / MEMBER_FILE, json.dumps(record, indent=1, default=str)
    )
    log = self.logs.open(m.name)
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
      cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env, stdin=subprocess.DEVNULL
    )
    self.running[proc] = (m, time.monotonic(), log)
    self.status[m.name] = "running"
    self.say(f"start {m.name}")

  def reap(self) -> None:
    """Records every member that has ended: ok, incomplete (no DONE) or failed, with its log."""
    for proc in [p for p in self.running if p.poll() is not None]:
      m, t0, log = self.running.pop(proc)
      self.logs.close(m.name, log)
      self.seconds[m.name] = time.monotonic() - t0
      done = (self.root / m.name / DONE_FILE).exists()
      if proc.returncode == 0:
        self.status[m.name] = "ok" if done else "incomplete"
      else:
        self.status[m.name] = f"failed (exit {proc.returncode})"
      msg = f"{self.status[m.name]}: {m.name} after {self.seconds[m.name]:.1f}s"
      if self.status[m.name] != "ok":
        msg += f"; log {self.root / m.name / LOG_FILE}:\n" + _tail(self.logs.local(m.name))
      self.say(msg)
      self.write_summary()

  def finish(self) -> int:
    """Writes the summary and says how the members ended: 0 if every one is done, else 1."""
    self.write_summary()
    counts: dict[str, int] = {}
    for s in self.status.values():
      counts[s.split(" ")[0]] = counts.get(s.split(" ")[0], 0) + 1
    tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    self.say(f"finished: {tally}; summary in {self.root / 'summary.md'}")
    return 0 if all(s in ("ok", "done") for s in self.status.values()) else 1


class _MemberLogs:
  """Each member's stdout+stderr, appended to ``ROOT/NAME/sweep.log`` on every run.

  A child process writes its output to a local file; on a bucket root (which cannot be appended
  to, nor written by a child's file descriptor) that file is a local staging copy, and the log
  object is rewritten with the previous log plus this run's output when the member ends.
  """

  def __init__(self, root):
    self._root = root
    self._staging = (
      Path(tempfile.mkdtemp(prefix="resnet_jax_sweep_logs_"))
      if storage.is_object_store(root)
      else None
    )

  def local(self, name: str) -> Path:
    if self._staging is None:
      return Path(self._root / name / LOG_FILE)
    return self._staging / f"{name}.log"

  def open(self, name: str):
    path = self.local(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if self._staging is not None:
      remote = self._root / name / LOG_FILE
      path.write_bytes(remote.read_bytes() if remote.exists() else b"")
    return path.open("a")

  def close(self, name: str, log):
    log.close()
    if self._staging is not None:
      storage.write_atomically(self._root / name / LOG_FILE, self.local(name).read_bytes())


def _tail(path, lines: int = 5) -> str:
  try:
    with open(path, errors="replace") as f:
      return "\n".join("    " + l.rstrip() for l in f.readlines()[-lines:])
  except OSError:
    return "    (no log)"


def _stop_all(running: dict, logs: _MemberLogs, grace_s: float = 30.0) -> None:
  for proc in running:
    if proc.poll() is None:
      proc.terminate()
  deadline = time.monotonic() + grace_s
  for proc, (member, _, log) in running.items():
    try:
      proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    logs.close(member.name, log)


# --- `resnet-jax sweep`: resnet_jax.main defines these flags and calls `command` ------------------


def define_flags(flag_values: flags.FlagValues) -> None:
  """The absl flags of ``resnet-jax sweep SWEEP.py --workdir=ROOT [-- member flags]``."""
  flags.DEFINE_string(
    "workdir", None, "Sweep root; each member trains in ROOT/NAME.", flag_values=flag_values
  )
  flags.DEFINE_integer(
    "parallel", 1, "Members trained at a time (local runs).", flag_values=flag_values
  )
  flags.DEFINE_enum(
    "emit",
    None,
    list(EMIT_KINDS),
    "Print one launch command per member instead of running them.",
    flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
    "launcher_arg",
    [],
    "Argument for the launcher (tpu_vm.sh, sbatch or python), repeatable.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "python", sys.executable, "Interpreter for local runs.", flag_values=flag_values
  )


def command(flag_values: flags.FlagValues, args: Sequence[str]) -> int:
  """Runs the sweep named by ``args[0]`` with parsed ``flag_values``; ``args[1:]`` (what followed
  ``--``) go to every member. Raises ``ValueError`` on bad input."""
  if not args:
    raise ValueError("name a sweep file: resnet-jax sweep SWEEP.py --workdir=ROOT")
  sweep_file, extra = args[0], list(args[1:])
  stray = [a for a in extra if not a.startswith("-")]
  if stray:
    raise ValueError(
      f"unexpected arguments {stray}; member flags go after --, e.g. -- --config.x=1"
    )
  if flag_values["workdir"].value is None:
    raise ValueError("--workdir is required (the sweep root)")
  return run_sweep(
    sweep_file,
    flag_values["workdir"].value,
    parallel=flag_values["parallel"].value,
    emit=flag_values["emit"].value,
    extra_args=extra,
    python=flag_values["python"].value,
    launcher_args=flag_values["launcher_arg"].value,
  )
