"""Runs a sweep's members on this machine, a few at a time, each a ``python -m resnet_jax.main``.

Members whose workdir holds ``DONE`` are skipped; the training program resumes the others from
their checkpoints, so re-running the same command after a crash or ^C completes the sweep. Each
member's output is appended to ``ROOT/NAME/sweep.log``; ``ROOT/summary.{csv,md}`` hold one row per
member, rewritten as members end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnet_jax import storage
from resnet_jax.run_files import DONE_FILE
from resnet_jax.sweep import results
from resnet_jax.sweep.emit import MemberCheck, check_members, python_command
from resnet_jax.sweep.spec import Member, format_value, load_sweep

LOG_FILE = "sweep.log"  # the member's stdout+stderr, appended on every run
MEMBER_FILE = "sweep_member.json"  # config, overrides and command of the member


class _Stop(Exception):
  pass


def run_sweep(
  sweep_file: str | os.PathLike,
  root: str | os.PathLike,
  *,
  parallel: int = 1,
  extra_args: Sequence[str] = (),
  python: str | Sequence[str] = sys.executable,
  out=None,
  check: MemberCheck | None = None,
) -> int:
  """Runs every member of a sweep file that is not done yet; returns 0 when all are done, else 1.

  `parallel` members at a time; a member that fails is reported and the others go on. `python` is
  the interpreter (or an argument list standing for it: tests pass a fake trainer). `extra_args` go
  after every member's overrides (they win). Before anything starts or is written: every config
  file is found, every member passes `check` (the command's: train's own validation), and a member
  that ran before under ROOT with other arguments is refused (:func:`_check_same_arguments`).
  """
  out = out or sys.stdout
  sweep_file = Path(sweep_file)
  members = load_sweep(sweep_file, extra_args)
  if parallel < 1:
    raise ValueError(f"parallel must be >= 1, got {parallel}")
  root = storage.check_access(os.fspath(root), "--workdir", write=True)
  configs = check_members(members, sweep_file, check)
  for m in members:
    _check_same_arguments(m, root)
  commands = {
    m.name: [
      *python_command(python),
      "-m",
      "resnet_jax.main",
      *dataclasses.replace(m, config=configs[m.config]).train_args(os.fspath(root / m.name)),
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


def _check_same_arguments(member: Member, root) -> None:
  """Refuses a member whose workdir holds a run started with other arguments (config file,
  overrides, or the arguments after ``--``): they are part of what the member is, so its ``DONE``
  or its checkpoints are not this member's. The user picks another ROOT, or the old arguments."""
  path = root / member.name / MEMBER_FILE
  if not path.exists():
    return
  try:
    record = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return  # unreadable: nothing to compare with; the run itself resumes or refuses
  now = _identity(member.config, member.overrides, member.args)
  before = _identity(record.get("config"), record.get("overrides", {}), _recorded_args(record))
  if now != before:
    raise ValueError(
      f"sweep member {member.name} in {root} ran with {_describe(before)}, not "
      f"{_describe(now)}; give another --workdir, or the arguments it ran with"
    )


def _identity(config, overrides, args) -> tuple:
  """What makes a member the member it is, as JSON records it (tuples become lists)."""
  return (config, json.loads(json.dumps(overrides, sort_keys=True, default=str)), list(args))


def _describe(identity: tuple) -> str:
  config, overrides, args = identity
  parts = [f"--config={config}"] if config is not None else []
  parts += [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
  return shlex.join(parts) + (f" -- {shlex.join(args)}" if args else " and nothing after --")


def _recorded_args(record: dict) -> list[str]:
  """The arguments after ``--`` a member ran with; records written before they were kept hold
  them only at the end of the command, after the workdir and the overrides."""
  if "args" in record:
    return list(record["args"])
  command = list(record.get("command", []))
  workdir = [i for i, a in enumerate(command) if a.startswith("--workdir=")]
  if not workdir:
    return []
  return command[workdir[0] + 1 + len(record.get("overrides", {})) :]


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
    rows = [
      results.summary_row(
        m, os.fspath(self.root / m.name), self.status[m.name], self.seconds.get(m.name)
      )
      for m in self.members
    ]
    results.write_summary(rows, self.root)

  def start(self, m: Member) -> None:
    """Records the member's command in its workdir and starts it, output appended to its log."""
    cmd = self.commands[m.name]
    record = {
      "name": m.name,
      "config": m.config,
      "overrides": m.overrides,
      "args": list(m.args),
      "command": cmd,
    }
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
