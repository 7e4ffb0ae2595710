"""``resnet-jax predict --workdir=RUN PATH...``: classifies image files or folders with a trained run
(read back with its own config.json) or with converted weights."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from resnet_jax import runtime
from resnet_jax.commands import run_config
from resnet_jax.commands.usage import require

PURPOSE = "classify image files or folders with a trained run or converted weights"
EXAMPLE = (
  "resnet-jax predict --workdir=runs/digits digit.png photos/ --top_k=3 --output=preds.jsonl"
)
USAGE = "--workdir=DIR PATH... [--flag=value ...]"
DETAILS = ""


def define_serving_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  """The flags of a command that serves a run (predict, export): which run, read how, which views."""
  flags.DEFINE_string(
    "workdir",
    None,
    "A training run's workdir (its config.json and latest checkpoint) or `convert`'s.",
    flag_values=flag_values,
  )
  run_config.define_config_of_a_run(flag_values, args)
  flags.DEFINE_enum(
    "eval_method",
    "center",
    ["center", "ten_crop"],
    "Test-time views: the centre crop, or 10 crops with their softmax averaged (paper §3.4).",
    flag_values=flag_values,
  )


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  define_serving_flags(flag_values, args)
  flags.DEFINE_integer("top_k", 5, "Classes listed per image.", flag_values=flag_values)
  flags.DEFINE_string(
    "output",
    None,
    "JSON lines file, one line per image (default: stdout).",
    flag_values=flag_values,
  )


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  workdir = require(flag_values, "workdir")
  output = flag_values["output"].value  # serving refuses a folder before the model is built
  runtime.start()
  from resnet_jax import serving  # pylint: disable=g-import-not-at-top

  def load():
    config = run_config.of_a_run(flag_values, workdir, required=False)
    return serving.load(workdir, config=config)

  serving.predict_command(
    load,
    positionals,
    top_k=flag_values["top_k"].value,
    method=flag_values["eval_method"].value,
    output=output,
  )


def errors() -> tuple[type[Exception], ...]:
  from resnet_jax import checkpoint  # pylint: disable=g-import-not-at-top

  return (checkpoint.CheckpointError,)
