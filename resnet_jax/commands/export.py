"""``resnet-jax export --workdir=RUN --format=F --out=DIR``: the run (read back with its own
config.json) as a function of uint8 images -> probabilities, as StableHLO or a TF SavedModel."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from resnet_jax import runtime
from resnet_jax.commands import predict
from resnet_jax.commands import run_config
from resnet_jax.commands.usage import UsageError, no_positionals, require

PURPOSE = "export uint8 images -> probabilities as StableHLO (jax.export) or a TF SavedModel"
EXAMPLE = "resnet-jax export --workdir=runs/digits --format=savedmodel --out=runs/digits_serving"
USAGE = "[--flag=value ...]"
DETAILS = ""


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  fv = flag_values
  predict.define_serving_flags(fv, args)
  flags.DEFINE_enum(
    "format",
    None,
    ["stablehlo", "savedmodel"],
    "stablehlo: jax.export artifact + JSON sidecar; savedmodel: TensorFlow (jax2tf), TF Serving "
    "layout OUT/<version>/.",
    flag_values=fv,
  )
  flags.DEFINE_string("out", None, "Where the exported model goes.", flag_values=fv)
  flags.DEFINE_list(
    "input_size",
    None,
    "H,W of the uint8 images the function takes (default: the run's resize side squared, e.g. "
    "256,256 for ImageNet; the crop side for 28/32 px datasets).",
    flag_values=fv,
  )


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  no_positionals(positionals)
  workdir = require(flag_values, "workdir")
  fmt, out = require(flag_values, "format"), require(flag_values, "out")
  input_size = _input_size(flag_values["input_size"].value)
  runtime.import_tensorflow()  # quietly, before serving loads it
  from resnet_jax import serving  # pylint: disable=g-import-not-at-top

  print(
    serving.export_command(
      workdir,
      fmt,
      out,
      method=flag_values["eval_method"].value,
      config=run_config.of_a_run(flag_values, workdir, required=False),
      input_size=input_size,
    )
  )


def _input_size(values: list[str] | None) -> tuple[int, int] | None:
  if not values:
    return None
  if len(values) != 2 or not all(v.strip().isdigit() for v in values):
    raise UsageError(f"--input_size={','.join(values)}: give H,W, e.g. 256,256")
  return int(values[0]), int(values[1])


def errors() -> tuple[type[Exception], ...]:
  return predict.errors()
