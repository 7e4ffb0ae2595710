"""A resumed run logs each step exactly once (README, "Storage"): a run SIGKILLed after its checkpoint
leaves records past it in ``metrics.jsonl``; the run that resumes from the checkpoint drops them
(``metrics.MetricWriter(resume_step=...)``) and logs those steps again, its own records only.

A resumed run that writes a record again for the same step and names replaces the old one in place,
so with an unchanged config the killed run's records would be overwritten even if nobody dropped
them. The resume here changes a key a resumed run may change (how often it evaluates), so the
killed run's evaluation at step 5 is written by nobody again: only the drop removes it.

The kill is real (SIGKILL, no clean-up runs) and lands at a fixed point: the killed process is the
ordinary command with ``MetricWriter.write`` wrapped to kill the process right after it wrote a
chosen record, so the test does not race the training loop. The resume is the loop's, trained in
this process: what it writes is the subject here, not the command around it.
"""

import json
import os
import re
import signal

import pytest

from conftest import run_python, train_command, train_tiny_in_process

pytestmark = pytest.mark.e2e

# The tiny config checkpoints every 3 steps (and at each evaluation): the killed run saved step 3,
# logged steps 4 and 5, evaluated at 5 and died before saving step 5.
KILLED_AFTER = 5
RESUMED_FROM = 3
STEPS = 6

# The command as a user runs it, in a process that kills itself right after writing the chosen
# record (that is the state a SIGKILL between the write and the next checkpoint leaves behind).
_KILLED_RUN = """
import os, runpy, signal, sys
from resnet_jax import metrics

write = metrics.MetricWriter.write

def write_then_die(self, step, values):
  write(self, step, values)
  if step == {step} and any(k.startswith("eval_") for k in values):
    os.kill(os.getpid(), signal.SIGKILL)

metrics.MetricWriter.write = write_then_die
sys.argv = {argv!r}
runpy.run_module("resnet_jax.main", run_name="__main__")
"""


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_a_run_resumed_after_a_sigkill_logs_each_step_exactly_once(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  common = (f"--config.num_train_steps={STEPS}", "--config.eval_every_steps=5")
  argv = train_command(workdir, *common)[2:]  # after "python -m": resnet_jax.main's own argv
  killed = run_python(_KILLED_RUN.format(step=KILLED_AFTER, argv=argv), timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  # What the kill left: a checkpoint at 3, and records of steps 4 and 5 past it.
  assert _checkpoint_steps(workdir) == [RESUMED_FROM]
  left = _records(workdir)
  assert [r["step"] for r in left if "train_loss" in r] == [1, 2, 3, 4, 5]
  assert [r["step"] for r in left if "eval_loss" in r] == [KILLED_AFTER]

  # Resumed evaluating only at its end: the killed run's evaluation at step 5 must not stay.
  caplog.clear()
  # The absl logger's own level: an earlier in-process command may have set it to WARNING.
  with caplog.at_level("INFO", logger="absl"):
    train_tiny_in_process(workdir, {"num_train_steps": STEPS, "eval_every_steps": 1000})
  assert re.search(rf"resumed from \S+ at step {RESUMED_FROM}\b", caplog.text), caplog.text[-3000:]

  records = _records(workdir)
  train = [r["step"] for r in records if "train_loss" in r]
  evals = [r["step"] for r in records if "eval_loss" in r]
  assert train == list(range(1, STEPS + 1))  # every step once, in order
  assert evals == [STEPS]  # the resumed run evaluates at its end only
  assert [r["step"] for r in records] == sorted(r["step"] for r in records)
