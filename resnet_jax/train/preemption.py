"""``Preemption``: SIGTERM/SIGINT become one step at which every process saves and exits cleanly."""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging

from resnet_jax import checkpoint as checkpoint_lib


class Preemption:
  """Turns SIGTERM/SIGINT into one step at which every process saves and exits cleanly.

  One process: our handler notes the signal and the next step boundary stops.

  Many processes: the processes of a TPU slice or a SLURM job get the signal at different moments,
  so a local flag cannot decide (a process saving alone waits in a collective forever). JAX's
  distributed runtime has the protocol made for this: ``jax.distributed.initialize`` starts a
  preemption sync manager whose own SIGTERM handler tells the coordination service; the service
  has every process publish the last step it reached and fixes ``max + 1`` as the step at which
  all stop. ``reached(step)`` (Orbax's ``CheckpointManager.reached_preemption``, a lock and a
  comparison in C++) is true on every process at that same step, and costs no host
  synchronisation while nothing happens. We leave the runtime's SIGTERM handler in place and
  forward SIGINT to it as SIGTERM.
  """

  def __init__(self, ckpt: checkpoint_lib.Checkpointer):
    self.requested = False
    self._ckpt = ckpt
    self._previous = {}
    self.coordinated = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    if self.coordinated and not jax.config.jax_enable_preemption_service:
      logging.warning(
        "jax_enable_preemption_service is off: a SIGTERM ends this process without a checkpoint"
      )
      return self
    signals = (signal.SIGINT,) if self.coordinated else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True
    if self.coordinated:
      logging.warning("received signal %d: all processes will agree on a step to save", signum)
      signal.raise_signal(signal.SIGTERM)  # the runtime's handler starts the agreement
    else:
      logging.warning("received signal %d: saving at the next step boundary", signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def reached(self, step: int) -> bool:
    """True at the step where this run stops for a signal (the same step on every process)."""
    if self.coordinated:
      return self._ckpt.reached_preemption(step)
    return self.requested
