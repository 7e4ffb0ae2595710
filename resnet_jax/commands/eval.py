"""``resnet-jax eval --workdir=RUN``: evaluates a checkpoint of a run, as the run was trained.

The run's config.json says how (``--config`` is optional: :mod:`.run_config`); ``train --mode=eval``
is the same command.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from absl import flags

from resnet_jax import run_files
from resnet_jax import runtime
from resnet_jax import storage
from resnet_jax.commands import run_config
from resnet_jax.commands import startup
from resnet_jax.commands.usage import UsageError, no_positionals, require

PURPOSE = "evaluate a checkpoint of a workdir (center, ten-crop or fully-convolutional test)"
EXAMPLE = "resnet-jax eval --workdir=runs/digits --eval_method=ten_crop"
USAGE = "--workdir=DIR [--flag=value ...]"
DETAILS = ""


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  run_config.define_config_of_a_run(flag_values, args)
  flags.DEFINE_string(
    "workdir",
    None,
    "The training run's directory (config.json, checkpoints/).",
    flag_values=flag_values,
  )
  define_eval_flags(flag_values)
  startup.define_run_flags(flag_values)


def define_eval_flags(flag_values: flags.FlagValues) -> None:
  """The flags that choose what is evaluated and how (also ``train``'s, for --mode=eval)."""
  flags.DEFINE_integer(
    "eval_step", None, "Checkpoint step to evaluate (default: latest).", flag_values=flag_values
  )
  flags.DEFINE_enum(
    "eval_method",
    None,
    ["center", "ten_crop", "full_conv"],
    "Test-time method of an evaluation (default: config.eval_method).",
    flag_values=flag_values,
  )


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  no_positionals(positionals)
  evaluate(flag_values)


def errors() -> tuple[type[Exception], ...]:
  return startup.run_errors()


def evaluate(flag_values: flags.FlagValues) -> None:
  """Evaluates the run in --workdir with its own config (or --config=FILE), prints the result and
  writes it to the workdir (``eval_METHOD_stepN.json``)."""
  workdir = require(flag_values, "workdir")
  _check_step(workdir, flag_values["eval_step"].value)
  if not flag_values["config"].present:
    _check_is_a_run(workdir)
    # resnet_jax.runs reads config.json and loads TensorFlow: the runtime loads it first, its own
    # way. The CPU split, which the config chooses, still comes before JAX's backend starts.
    runtime.start()
  config = run_config.of_a_run(flag_values, workdir)
  startup.start_run(flag_values, config, workdir, training=False)
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  result = loop.evaluate(
    config,
    workdir,
    step=flag_values["eval_step"].value,
    method=flag_values["eval_method"].value,
  )
  print(finished("eval", result))
  print(f"result in {workdir}: {loop.eval_result_file(result['method'], result['step'])}")


def _check_is_a_run(workdir: str) -> None:
  """A workdir with no config.json (none at all, or converted weights) is refused before the
  runtime starts, naming --config as the way to evaluate it."""
  if not (storage.check_access(workdir, "--workdir") / run_files.CONFIG_FILE).exists():
    raise UsageError(
      f"no {run_files.CONFIG_FILE} in {workdir}: pass the --workdir of a training run, or give "
      f"--config=FILE, the config to evaluate it with"
    )


def _check_step(workdir: str, step: int | None) -> None:
  """A local run without checkpoint ``step`` is refused before the runtime starts, listing the
  steps it has (the loop checks a bucket's the same way)."""
  checkpoints = os.path.join(workdir, run_files.CHECKPOINT_DIR)
  if step is None or storage.is_object_store(workdir) or not os.path.isdir(checkpoints):
    return
  saved = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  if step not in saved:
    raise UsageError(
      f"no checkpoint at step {step} in {workdir}; its steps: "
      f"{', '.join(map(str, saved)) or 'none'} (--eval_step=N, or leave it out for the latest)"
    )


def finished(mode: str, result: dict[str, Any]) -> str:
  """``MODE finished: {...}``, the result's floats rounded."""
  shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}
  return f"{mode} finished: {shown}"
