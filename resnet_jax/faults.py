"""Faults after start-up: what a failed collective of a multi-process run means, and its one line.

A peer lost during training (a collective fails: gloo on CPU reports it at once) ends every survivor
with one line and exit status 2, via `PeerLostError`: the line names the lost process, the last good
checkpoint and says to rerun the same command. Where a dead peer makes collectives hang instead
(GPU, TPU), the coordination service notices the missing heartbeats after
``RESNET_JAX_HEARTBEAT_TIMEOUT`` seconds (`resnet_jax.distributed`) and JAX ends the process itself,
with its own message naming the unhealthy task.

The caller says which checkpoint is the last good one (the training loop's checkpointer knows);
nothing here holds state.
"""

from __future__ import annotations

import re

import jax


class PeerLostError(RuntimeError):
  """Another process of the run died, or a collective with it failed; the run cannot go on."""


class RunStoppedError(RuntimeError):
  """A run (or one of several an analysis trains) stopped before its last step, by a signal or a
  failure named in the message; its checkpoints stay, and the same command resumes it."""


def lost_peer_message(what: str, last_good_step: int | None) -> str:
  """``what``, then the last good checkpoint (None: none yet) and what to do: the one line a fault
  ends with."""
  good = f"step {last_good_step}" if last_good_step is not None else "none"
  return f"{what}; last good checkpoint: {good}; rerun the same command to resume"


# Runtime errors that mean a collective could not complete because a peer is gone: gloo (CPU) and
# NCCL (GPU) transport errors, and the coordination service's own verdicts. They carry no type of
# their own (a JaxRuntimeError from a step, anything Orbax's threads re-raise), only their words.
_COLLECTIVE_FAILURE = re.compile(
  r"gloo|nccl|all-?reduce|all-?gather|collective|connection (reset|closed|refused)|broken pipe|"
  r"socket closed|heartbeat|barrier|unavailable|deadline.?exceeded|peer",
  re.IGNORECASE,
)


def _short(text: str, limit: int = 160) -> str:
  text = re.sub(r"\[[^\]]*\.(cc|h|cpp):\d+\]\s*", "", " ".join(text.split()))  # C++ file:line
  return text if len(text) <= limit else text[:limit] + "..."


def peer_lost_error(error: BaseException, last_good_step: int | None) -> PeerLostError | None:
  """The `PeerLostError` an error of a multi-process run amounts to, or None when it is not a
  failed collective (or this run has one process). ``last_good_step``: the last committed
  checkpoint's step, None for none."""
  if jax.process_count() < 2 or not _COLLECTIVE_FAILURE.search(str(error)):
    return None
  me, count = jax.process_index(), jax.process_count()
  # With two processes the lost one is the other; with more, the collective cannot tell which.
  who = f"lost process {1 - me} of 2" if count == 2 else f"lost a peer of process {me}/{count}"
  what = f"{who}: a collective failed ({_short(str(error))})"
  return PeerLostError(lost_peer_message(what, last_good_step))
