"""``resnet-jax convert``: torchvision or timm weights (a .pth state dict) as a step-0 checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from resnet_jax import runtime
from resnet_jax.commands.usage import no_positionals, require

PURPOSE = (
  "import torchvision or timm weights (.pth) as a step-0 checkpoint to evaluate or fine-tune"
)
EXAMPLE = "resnet-jax convert --from=timm --model=resnet50d --src=resnet50d.pth --workdir=runs/r50d"
USAGE = "[--flag=value ...]"
DETAILS = ""


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  del args
  fv = flag_values
  flags.DEFINE_enum(
    "from",
    "torchvision",
    ["torchvision", "timm"],
    "Whose state dict --src is, in that library's own key layout (timm: also its resnet*d, "
    "seresnet*, seresnext* names).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "model", None, "Model name, as the source names it (`resnet-jax models`).", flag_values=fv
  )
  flags.DEFINE_string("src", None, "The .pth state dict to import (torch.save).", flag_values=fv)
  flags.DEFINE_string(
    "workdir", None, "Where the step-0 checkpoint goes (a training workdir).", flag_values=fv
  )


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  no_positionals(positionals)
  runtime.import_tensorflow()  # quietly, before the checkpoint code loads it
  from resnet_jax import weights  # pylint: disable=g-import-not-at-top

  print(
    weights.convert_command(
      flag_values["from"].value,
      require(flag_values, "model"),
      require(flag_values, "src"),
      require(flag_values, "workdir"),
    )
  )


def errors() -> tuple[type[Exception], ...]:
  from resnet_jax import checkpoint  # pylint: disable=g-import-not-at-top

  return (checkpoint.CheckpointError,)
