"""How a command that computes starts the process: ``--cpu_devices`` and the split it chooses, made
here for every command (train, eval, bench, analyze), and a run's refusal before that start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import flags
from absl import logging

from resnet_jax import runtime
from resnet_jax.train import config as config_lib


def define_cpu_devices(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "cpu_devices",
    "auto",
    "On a CPU-only machine: split the host into this many single-threaded XLA devices and run data "
    "parallel over them ('auto' = one per core, lowered until it divides the batch; 1 = one "
    "device). Ignored on GPU/TPU, in multi-process runs and when XLA_FLAGS sets it.",
    flag_values=flag_values,
  )


def start(flag_values: flags.FlagValues, *, batch_sizes: Sequence[int], **runtime_options) -> int:
  """``runtime.start`` with the CPU split that ``--cpu_devices`` chooses (a device count dividing
  ``batch_sizes``); ``runtime_options`` go to it unchanged. Returns the split.

  The split is how a CPU run uses its cores, with lax.conv and with oneDNN alike: every oneDNN
  call is single-threaded (``models.onednn.conv``: OpenMP teams inside XLA's threads deadlocked,
  docs/DEVELOPING.md "The stall"), so one device would leave all but one core idle.
  """
  split = runtime.start(
    cpu_devices=flag_values["cpu_devices"].value,
    batch_sizes=batch_sizes,
    **runtime_options,
  )
  if split > 1:
    logging.info("CPU split into %d single-threaded devices (--cpu_devices)", split)
  return split


# --- a training run's start (train, eval) ---------------------------------------------------------


def define_run_flags(flag_values: flags.FlagValues) -> None:
  """The start-up flags of a command that runs the loop on a workdir: the compile cache, the split."""
  flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax", "xla"),
    "Persistent XLA compilation cache: a restarted or resumed run skips recompiling ('' = off; "
    "JAX_COMPILATION_CACHE_DIR takes precedence).",
    flag_values=flag_values,
  )
  define_cpu_devices(flag_values)


def start_run(flag_values: flags.FlagValues, config, workdir: str, *, training: bool) -> None:
  """Refuses what it can before the start (:func:`check_before_start`), then starts the process
  for ``config`` (its batches, its convolutions; ``jax.distributed`` in a multi-process job)."""
  check_before_start(config, workdir)
  if training:
    check_resume(config, workdir)
  start(
    flag_values,
    batch_sizes=[config.global_batch_size, config_lib.eval_batch_size(config)],
    compilation_cache=flag_values["compilation_cache"].value,
    distributed=True,
  )


def check_before_start(config, workdir: str) -> None:
  """Refuses a bad config key, model name or bucket before `runtime.start` spends seconds loading
  TensorFlow and starting the devices. The loop checks again with what needs those (the dataset
  registry, the device count): it also runs inside other commands (sweeps, analyses)."""
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  check_local_directory(workdir, "--workdir")
  config_lib.validate(config, known_models=models.list_models(), known_datasets=None)
  storage.check_access(workdir, "--workdir", write=True)  # eval writes its eval_*.json there too
  if config.init_from:
    storage.check_access(config.init_from, "config.init_from")
    if not storage.is_object_store(config.init_from) and not os.path.isdir(config.init_from):
      raise ValueError(
        f"config.init_from={config.init_from!r}: no such directory; give the --workdir of "
        "`resnet-jax convert` or of a training run"
      )


def check_resume(config, workdir: str) -> None:
  """A local run resumed with another schedule is refused here, before TensorFlow loads; the loop
  checks every workdir (buckets too) again."""
  from resnet_jax import run_files  # pylint: disable=g-import-not-at-top

  trained = os.path.join(workdir, run_files.CONFIG_FILE)
  checkpoints = os.path.join(workdir, run_files.CHECKPOINT_DIR)
  if not os.path.isfile(trained) or not os.path.isdir(checkpoints):
    return
  if any(name.isdigit() for name in os.listdir(checkpoints)):
    with open(trained) as f:
      config_lib.check_resume(config, json.load(f), workdir)


def check_local_directory(path: str, what: str) -> None:
  """Refuses a local ``path`` that is a file, or lies under one: it could never be a directory."""
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  if storage.is_object_store(path):
    return
  here = os.path.abspath(path)
  while here != os.path.dirname(here) and not os.path.exists(here):
    here = os.path.dirname(here)
  if os.path.exists(here) and not os.path.isdir(here):
    where = "is a file" if here == os.path.abspath(path) else f"lies under {here}, a file"
    raise ValueError(f"{what}={path} {where}: give a directory (a new one, or a run's to resume)")


def run_errors() -> tuple[type[Exception], ...]:
  """The errors of a run besides ``ValueError`` that its user can act on: a checkpoint that cannot
  be read or written, a multi-process start or peer that failed, a loss that diverged. Imported
  only once a command has failed with something else than bad input."""
  # pylint: disable=g-import-not-at-top
  from resnet_jax import checkpoint
  from resnet_jax import distributed
  from resnet_jax import faults
  from resnet_jax.train import loop

  return (
    checkpoint.CheckpointError,
    distributed.DistributedInitError,
    faults.PeerLostError,
    faults.RunStoppedError,
    loop.NonFiniteLossError,
  )
