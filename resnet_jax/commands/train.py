"""``resnet-jax train --config=FILE --workdir=DIR``: trains, resuming from the workdir's latest
checkpoint; ``--mode=eval`` evaluates instead (the ``eval`` command)."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from resnet_jax.commands import eval as eval_command
from resnet_jax.commands import run_config
from resnet_jax.commands import startup
from resnet_jax.commands.usage import no_positionals, require

PURPOSE = "train a model from a config file, resuming from the latest checkpoint in its workdir"
EXAMPLE = "resnet-jax train --config=configs/digits.py --workdir=runs/digits --config.seed=1"
USAGE = "[--flag=value ...]"
DETAILS = ""


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  run_config.define_experiment_config(flag_values, args)
  flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and plots.", flag_values=flag_values
  )
  flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval"],
    "Train (resuming if possible) or evaluate a checkpoint (the same as `resnet-jax eval`).",
    flag_values=flag_values,
  )
  eval_command.define_eval_flags(flag_values)
  startup.define_run_flags(flag_values)


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  no_positionals(positionals)
  if flag_values["mode"].value == "eval":
    eval_command.evaluate(flag_values)
    return
  config, workdir = flag_values.config, require(flag_values, "workdir")
  startup.start_run(flag_values, config, workdir, training=True)
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  result = loop.train_and_evaluate(config, workdir)
  from resnet_jax import distributed  # pylint: disable=g-import-not-at-top

  if distributed.is_primary():  # one summary for the run, not one per process
    print(eval_command.finished("train", result))
    print(results_line(workdir))


def results_line(workdir: str) -> str:
  """Where the run's results are: only those it wrote (a run stopped during start-up has none)."""
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  where = storage.location(workdir)
  names = ("metrics.jsonl", "tensorboard/", "checkpoints/", "curves.png")
  there = [n for n in names if (where / n.rstrip("/")).exists()]
  if not there:
    return f"nothing written to {workdir}: stopped before the first step"
  return f"results in {workdir}: {', '.join(there)}"


def errors() -> tuple[type[Exception], ...]:
  return startup.run_errors()
