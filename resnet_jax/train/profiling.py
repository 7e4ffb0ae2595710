"""Profiler traces of chosen train steps (``config.profile_steps``), written under ``WORKDIR/profile``.

``Profiler`` starts a ``jax.profiler`` trace before step ``start`` and stops it once step ``stop``
has finished on the devices (both counted like ``run.step``, from 1), on process 0 only. Each step
runs inside ``jax.profiler.StepTraceAnnotation("train", step_num=...)``, so the trace viewer
groups device work by step. The trace is what ``jax.profiler.stop_trace`` writes:
``plugins/profile/<run>/<host>.xplane.pb`` (TensorBoard's profile plugin: ``tensorboard
--logdir WORKDIR/profile``) and ``perfetto_trace.json.gz`` (drop it on ui.perfetto.dev).

The profiler writes to a local folder; for a bucket workdir it traces into a temporary folder and
copies the files up when the trace stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence

import jax
from absl import logging

from resnet_jax import storage

PROFILE_DIR = "profile"


class Profiler:
  """Traces the steps ``[start, stop]`` of a run (see the module docstring)."""

  def __init__(self, steps: Sequence[int], workdir, enabled: bool = True):
    self.steps = tuple(int(s) for s in steps) if enabled else ()  # config.validate checked them
    self.target = storage.location(workdir) / PROFILE_DIR
    self._local: str | None = None  # where the running trace is written

  @property
  def active(self) -> bool:
    return self._local is not None

  def step(self, step: int):
    """A context for running step ``step``: starts the trace first if it is the first traced."""
    if self.steps and step == self.steps[0] and not self.active:
      self._start()
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after_step(self, step: int, outputs) -> None:
    """Stops the trace after the last traced step, once ``outputs`` are computed."""
    if self.active and step >= self.steps[1]:
      jax.block_until_ready(outputs)  # the device work of the traced steps belongs in the trace
      self.stop()

  def _start(self):
    if storage.is_object_store(self.target):
      self._local = tempfile.mkdtemp(prefix="resnet_jax_profile_")
    else:
      self.target.mkdir(parents=True, exist_ok=True)
      self._local = os.fspath(self.target)
    jax.profiler.start_trace(self._local, create_perfetto_trace=True)
    logging.info("profiling steps %d..%d into %s", *self.steps, self.target)

  def stop(self):
    """Ends a running trace (also when the run ends or fails inside the traced steps)."""
    if not self.active:
      return
    local, self._local = self._local, None
    jax.profiler.stop_trace()
    if storage.is_object_store(self.target):
      _copy_tree(local, self.target)
      shutil.rmtree(local, ignore_errors=True)
    logging.info("profile written to %s", self.target)


def _copy_tree(local: str, target) -> None:
  for root, _, files in os.walk(local):
    rel = os.path.relpath(root, local)
    for name in files:
      dest = target / rel / name if rel != "." else target / name
      with open(os.path.join(root, name), "rb") as f:
        storage.write_atomically(dest, f.read())
