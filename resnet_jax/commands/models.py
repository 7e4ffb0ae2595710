"""``resnet-jax models``: every model with its parameters and multiply-adds, counted analytically
(no JAX)."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from resnet_jax.commands.usage import no_positionals

PURPOSE = "list every model with its parameters and multiply-adds (no JAX, instant)"
EXAMPLE = "resnet-jax models"
USAGE = ""
DETAILS = ""


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  del flag_values, args  # none


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  del flag_values
  no_positionals(positionals)
  from resnet_jax.models import flops  # pylint: disable=g-import-not-at-top

  print(flops.format_model_table())
