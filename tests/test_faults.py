"""Faults on many processes and full disks (issue 18), with real processes on 127.0.0.1.

2 processes x 1 CPU device train the tiny digits net. One workdir goes through a chain of faults,
each run resuming where the previous one stopped: SIGTERM to process 1 while an async save is in
flight, SIGTERM to process 1 and a fraction of a second later to launch/local.sh (which forwards it
to both), SIGKILL of process 1, and a last run to the end. Every run's per-step losses must equal
those of an uninterrupted reference run exactly. The reference is one process with 2 CPU devices,
one process start fewer: the pipeline gives every device the same examples whatever the number of
processes, and a sum of two gradients is the same in either order, so it trains bit for bit as 2
processes x 1 device do. A full disk is a single process whose file size limit (RLIMIT_FSIZE) a
checkpoint cannot fit in; the rerun that resumes after it trains in the test's own process.
"""

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import (
  REPO,
  TEST_XLA_FLAGS,
  command_env,
  free_port,
  train_command,
  train_tiny_in_process,
)

pytestmark = pytest.mark.multiprocess

# Long enough that every fault lands mid-run: the chain stops three times, each within about 15
# steps of the last (the ~1 s a SIGTERM takes to reach agreement included), so by step ~60.
STEPS = 90
SETTINGS = dict(
  num_train_steps=STEPS, async_checkpoints=True, checkpoint_every_steps=10, keep_checkpoints=3
)


def _flags(settings):
  return tuple(f"--config.{key}={value}" for key, value in settings.items())


COMMON = _flags(SETTINGS)
RUN_TIMEOUT_S = 300
EXIT_WITHIN_S = 60  # after the signal (issue 18)


def _env(pid, port, init_timeout=120):
  return command_env(
    1,
    RESNET_JAX_COORDINATOR=f"127.0.0.1:{port}",
    RESNET_JAX_NUM_PROCESSES=2,
    RESNET_JAX_PROCESS_ID=pid,
    RESNET_JAX_INIT_TIMEOUT=init_timeout,
    TF_CPP_MIN_LOG_LEVEL=1,  # the runtime's "SIGTERM caught" warning shows who got the signal
  )


class Run:
  """The two processes of one run, their logs in ``LOGDIR/NAME.pI.log``."""

  def __init__(self, workdir, logdir, name, *overrides):
    port = free_port()
    self.logs = [os.path.join(logdir, f"{name}.p{i}.log") for i in range(2)]
    self.procs = [
      subprocess.Popen(
        train_command(workdir, *COMMON, *overrides),
        env=_env(i, port),
        cwd=REPO,
        stdout=open(self.logs[i], "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
      )
      for i in range(2)
    ]

  def wait(self, timeout=RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    try:
      return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in self.procs]
    finally:
      for p in self.procs:
        if p.poll() is None:
          os.killpg(p.pid, signal.SIGKILL)
          p.wait()

  def text(self, i):
    with open(self.logs[i]) as f:
      return f.read()


def _losses(workdir, after_step=0):
  """[(step, train_loss)] logged for steps after ``after_step`` (process 0 writes metrics.jsonl).

  Selected by step, not by line: a resumed run first drops the records its killed predecessor
  logged after the checkpoint it resumes from, so earlier line counts do not stay valid.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f.readlines():
      try:
        record = json.loads(line)
      except ValueError:  # a line being written
        continue
      if "train_loss" in record and record["step"] > after_step:
        out.append((record["step"], record["train_loss"]))
  return out


def _wait_for_step(workdir, step, run, timeout=RUN_TIMEOUT_S):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    seen = _losses(workdir)
    if seen and seen[-1][0] >= step:
      return seen[-1][0]
    assert all(p.poll() is None for p in run.procs), "a process ended before the fault"
    time.sleep(0.02)
  raise AssertionError(f"step {step} not reached in {timeout}s")


def _checkpoints(workdir):
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def _saved_step(text):
  found = re.findall(r"preempted: saved step (\d+)", text)
  return int(found[-1]) if found else None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Per-step losses of an uninterrupted run on 2 devices of one process, and its workdir."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  proc = subprocess.run(
    train_command(workdir, *COMMON),
    env=command_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=RUN_TIMEOUT_S,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = dict(_losses(workdir))
  assert sorted(losses) == list(range(1, STEPS + 1))
  return losses, workdir


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  """One workdir through every fault in turn; what each run did, for the tests to check."""
  root = tmp_path_factory.mktemp("chain")
  workdir, logdir = str(root / "run"), str(root)
  seed = random.randrange(1 << 30)
  rng = random.Random(seed)
  out = {"workdir": workdir, "seed": seed}

  # 1 + 3. SIGTERM to process 1 only, at a random step, at a moment an async save is in flight.
  first = 0  # a fresh workdir
  run = Run(workdir, logdir, "term_one")
  _wait_for_step(workdir, rng.randint(3, 12), run)
  in_flight = None
  deadline = time.monotonic() + RUN_TIMEOUT_S
  while in_flight is None and time.monotonic() < deadline:
    _, tmp = _checkpoints(workdir)
    if tmp:
      run.procs[1].send_signal(signal.SIGTERM)
      in_flight = tmp[0]
    elif any(p.poll() is not None for p in run.procs):
      break
    else:
      time.sleep(0.001)
  sent = time.monotonic()
  rcs = run.wait()
  out["term_one"] = dict(
    rcs=rcs,
    exit_s=time.monotonic() - sent,
    in_flight=in_flight,
    saved=[_saved_step(run.text(i)) for i in range(2)],
    checkpoints=_checkpoints(workdir),
    losses=_losses(workdir, first),
    logs=[run.text(i)[-2000:] for i in range(2)],
  )

  # 2 + 6. SIGTERM to process 1, then a fraction of a second later to local.sh, which forwards it
  # to both; local.sh exits 0 once both saved.
  first = out["term_one"]["saved"][0]  # the step this run resumes from
  port = free_port()
  env = {k: v for k, v in command_env(1).items() if not k.startswith("RESNET_JAX_")}
  env.update(TF_CPP_MIN_LOG_LEVEL="1", PYTHONPATH=REPO)
  # local.sh adds the device count to the test flags (the chain's other runs compile with them).
  env["XLA_FLAGS"] = TEST_XLA_FLAGS
  launcher = subprocess.Popen(
    [
      "bash",
      os.path.join(REPO, "launch", "local.sh"),
      "-n",
      "2",
      "--devices-per-process=1",
      f"--port={port}",
      f"--python={sys.executable}",
      "--init-timeout=120",
      f"--log-dir={os.path.join(logdir, 'local')}",
      "--",
      *train_command(workdir, *COMMON)[3:],
    ],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    target = out["term_one"]["saved"][0] + rng.randint(2, 10)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and launcher.poll() is None:
      seen = _losses(workdir, first)
      if seen and seen[-1][0] >= target:
        break
      time.sleep(0.02)
    by_id = {}
    found_by = time.monotonic() + 30
    while len(by_id) < 2 and time.monotonic() < found_by:
      for pid in subprocess.run(
        ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
      ).stdout.split():
        try:
          with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        except OSError:  # a short-lived child of the launcher (its `sleep 0.2`) is already gone
          continue
        for item in environ.split(b"\0"):
          if item.startswith(b"RESNET_JAX_PROCESS_ID="):
            by_id[int(item.split(b"=")[1])] = int(pid)
    os.kill(by_id[1], signal.SIGTERM)
    time.sleep(0.3)
    launcher.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = launcher.communicate(timeout=RUN_TIMEOUT_S)
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
      launcher.wait()
  logs = [open(os.path.join(logdir, "local", f"process_{i}.log")).read() for i in range(2)]
  out["term_both"] = dict(
    rc=launcher.returncode,
    exit_s=time.monotonic() - sent,
    launcher_err=err,
    caught=[log.count("SIGTERM caught") for log in logs],
    saved=[_saved_step(log) for log in logs],
    checkpoints=_checkpoints(workdir),
    losses=_losses(workdir, first),
    logs=[log[-2000:] for log in logs],
  )

  # 4. SIGKILL to process 1: process 0 ends within a minute with one line; then a rerun finishes.
  first = out["term_both"]["saved"][0]
  run = Run(workdir, logdir, "kill_one")
  _wait_for_step(workdir, out["term_both"]["saved"][0] + rng.randint(6, 12), run)
  run.procs[1].send_signal(signal.SIGKILL)
  sent = time.monotonic()
  rcs = run.wait(timeout=EXIT_WITHIN_S + 30)
  out["kill_one"] = dict(
    rcs=rcs,
    exit_s=time.monotonic() - sent,
    lines=run.text(0).strip().splitlines(),
    checkpoints=_checkpoints(workdir),
    losses=_losses(workdir, first),
  )

  first = max(_checkpoints(workdir)[0])
  run = Run(workdir, logdir, "to_the_end")
  rcs = run.wait()
  out["to_the_end"] = dict(
    rcs=rcs,
    resumed=re.findall(r"resumed from \S+ at step (\d+)", run.text(0)),
    losses=_losses(workdir, first),
    done=os.path.exists(os.path.join(workdir, "DONE")),
    logs=[run.text(i)[-2000:] for i in range(2)],
  )
  return out


def _same_as_reference(losses, reference_losses):
  assert losses, "no steps logged"
  for step, loss in losses:
    assert loss == reference_losses[step], (step, loss, reference_losses[step])


def test_sigterm_to_one_process_saves_the_same_step_everywhere(chain, reference):
  r = chain["term_one"]
  assert r["rcs"] == [0, 0], r["logs"]
  assert r["exit_s"] < EXIT_WITHIN_S
  step = r["saved"][0]
  assert step is not None and r["saved"] == [step, step], r["logs"]
  assert step < STEPS and max(r["checkpoints"][0]) == step
  assert max(s for s, _ in r["losses"]) == step  # nobody trained past the agreed step
  _same_as_reference(r["losses"], reference[0])


def test_sigterm_during_an_async_save_commits_both_saves(chain):
  r = chain["term_one"]
  assert r["in_flight"] is not None, f"no async save seen in flight (seed {chain['seed']})"
  in_flight = int(r["in_flight"].split(".")[0])
  steps, tmp = r["checkpoints"]
  assert tmp == [] and in_flight in steps and r["saved"][0] in steps, r


def test_sigterm_to_both_a_fraction_apart_then_resume_is_exact(chain, reference):
  r = chain["term_both"]
  assert r["rc"] == 0, r["launcher_err"] + "\n".join(r["logs"])
  step = r["saved"][0]
  assert step is not None and r["saved"] == [step, step], r["logs"]
  assert max(r["checkpoints"][0]) == step and r["checkpoints"][1] == []
  # It resumed where the first run stopped, and its steps are the reference's.
  assert r["losses"][0][0] == chain["term_one"]["saved"][0] + 1
  _same_as_reference(r["losses"], reference[0])


def test_local_sh_forwards_sigterm_and_exits_0_when_all_saved(chain):
  r = chain["term_both"]
  assert r["rc"] == 0 and r["exit_s"] < EXIT_WITHIN_S
  # Process 1 got ours and local.sh's. Process 0 got only local.sh's, and JAX's notifier (which
  # polls once a second) may not log it when that process has already saved and left on process
  # 1's notice: local.sh's own lines and exit status are the evidence for it.
  assert r["caught"][1] >= 1, r["logs"]
  assert "forwarding SIGTERM to all 2 processes" in r["launcher_err"]
  assert "all 2 processes saved and exited" in r["launcher_err"]


def test_sigkill_of_a_peer_ends_the_other_with_one_line_then_rerun_finishes(chain, reference):
  r = chain["kill_one"]
  assert r["rcs"][0] not in (0, None) and r["rcs"][1] == -signal.SIGKILL
  assert r["exit_s"] < EXIT_WITHIN_S
  last = r["lines"][-1]
  assert last.startswith("error: lost process 1 of 2"), r["lines"][-20:]
  assert "rerun the same command to resume" in last
  named = int(re.search(r"last good checkpoint: step (\d+)", last).group(1))
  assert named in r["checkpoints"][0]
  assert not any("Traceback" in line for line in r["lines"])
  _same_as_reference(r["losses"], reference[0])

  end = chain["to_the_end"]
  assert end["rcs"] == [0, 0] and end["done"], end["logs"]
  assert int(end["resumed"][0]) >= named
  assert [s for s, _ in end["losses"]] == list(range(int(end["resumed"][0]) + 1, STEPS + 1))
  _same_as_reference(end["losses"], reference[0])
  # Over the whole chain, the last value logged for every step is the reference's.
  final = dict(_losses(chain["workdir"]))
  assert sorted(final) == list(range(1, STEPS + 1))
  _same_as_reference(sorted(final.items()), reference[0])


# The message of the failed collective in a run where the SIGKILL above landed in an async save.
GLOO_LOST = (
  "UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error "
  "[127.0.0.1]:2437: Connection reset by peer"
)


def test_a_failed_collective_is_a_lost_peer_whatever_its_type(monkeypatch):
  """A step raises a failed collective as JaxRuntimeError; Orbax's save threads re-raise it as
  another type. Either is the one lost-peer line, naming the last good checkpoint it is given; the
  run's own errors keep their words."""
  import jax

  from resnet_jax import checkpoint, faults
  from resnet_jax.train import loop

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  for error in (jax.errors.JaxRuntimeError(GLOO_LOST), ValueError(GLOO_LOST)):
    lost = loop._peer_lost(error, 40)
    assert isinstance(lost, faults.PeerLostError), type(error)
    assert str(lost).startswith("lost process 1 of 2: a collective failed (UNKNOWN: Gloo AllGather")
    assert str(lost).endswith("; last good checkpoint: step 40; rerun the same command to resume")
  assert "last good checkpoint: none;" in str(loop._peer_lost(ValueError(GLOO_LOST), None))
  for own in (
    checkpoint.CheckpointError(f"checkpoint step 40 unreadable: {GLOO_LOST}"),
    loop.NonFiniteLossError("loss is nan at step 3 (peer of nothing)"),
    ValueError("config.model='resnet21': unknown model"),
  ):
    assert loop._peer_lost(own, 40) is None, own


# --- a full disk -----------------------------------------------------------------------------------

# The state's largest checkpoint file is ~19 KB: a 16 KB file size limit makes every checkpoint
# write fail (EFBIG, "file too large", as ENOSPC would) while logs and metrics still fit.
FILE_SIZE_LIMIT = 16 * 1024


def _limit_file_size():
  resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_full_disk_is_one_line_and_exit_2_then_resumes(tmp_path, reference):
  # Start from the reference's last checkpoint (restorable by any process count), 3 steps to go.
  _, ref_workdir = reference
  workdir = str(tmp_path / "run")
  last = max(_checkpoints(ref_workdir)[0])
  shutil.copytree(
    os.path.join(ref_workdir, "checkpoints", str(last)),
    os.path.join(workdir, "checkpoints", str(last)),
  )
  settings = {**SETTINGS, "num_train_steps": last + 3}
  # Read the compilation cache, but write nothing to it: the limit would truncate its entries.
  env = command_env(1, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1e9)
  full = subprocess.run(
    train_command(workdir, *_flags(settings)),
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=RUN_TIMEOUT_S,
    preexec_fn=_limit_file_size,
  )
  assert full.returncode == 2, full.stderr[-3000:]
  # No traceback: Orbax's thread errors are one line each, and TensorStore's writes still in flight
  # into Orbax's closed event loop are dropped (runtime.drop_abandoned_read_callbacks).
  assert "Traceback" not in full.stderr, full.stderr[-3000:]
  lines = full.stderr.strip().splitlines()
  # Beyond the routine INFO log, a few lines: Orbax's one-line errors from its threads, and ours.
  others = [l for l in lines if not l.startswith(("I", "W", " "))]
  assert len(others) <= 6, others
  assert lines[-1].startswith("error: could not write checkpoint step"), lines[-5:]
  assert os.path.join(workdir, "checkpoints") in lines[-1]
  assert "file too large" in lines[-1] and f"last good checkpoint: step {last}" in lines[-1]
  assert "rerun the same command to resume" in lines[-1]
  assert _checkpoints(workdir)[0] == [last]  # the previous checkpoint is untouched

  # The rerun is the same run, trained here (a process start saved): it resumes from the checkpoint
  # the full disk left and finishes.
  resumed = train_tiny_in_process(workdir, settings)
  assert resumed["step"] == last + 3 and not resumed["preempted"], resumed
  # Resumed at the last good step: steps after it only (the full run's records of them dropped).
  assert [s for s, _ in _losses(workdir)] == [last + 1, last + 2, last + 3]
  assert json.load(open(os.path.join(workdir, "DONE")))["step"] == last + 3


# --- a process that never joins ----------------------------------------------------------------------

_JOIN = textwrap.dedent("""
    from resnet_jax import distributed
    distributed.initialize()
    print("joined?!")
""")


def test_a_peer_that_never_starts_is_one_line_in_bounded_time(tmp_path):
  script = tmp_path / "join.py"
  script.write_text(_JOIN)
  port = free_port()
  env = _env(0, port, init_timeout=3)
  t = time.monotonic()
  proc = subprocess.run(
    [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
  )
  elapsed = time.monotonic() - t
  assert proc.returncode == 2 and "joined?!" not in proc.stdout, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: not every process joined") and f"127.0.0.1:{port}" in last
  assert "within 3s" in last and "Traceback" not in proc.stderr
  assert elapsed < 40, elapsed
