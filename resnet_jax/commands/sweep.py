"""``resnet-jax sweep SWEEP.py --workdir=ROOT [-- member flags]``: its flags and its body.

Imports only the sweep package, which imports neither JAX nor TensorFlow: ``--emit`` and ``--help``
are instant, and local members start their own training processes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from resnet_jax import sweep
from resnet_jax.commands.usage import UsageError

PURPOSE = "run a grid of config overrides locally, or print one launch command per member"
EXAMPLE = "resnet-jax sweep launch/sweeps/degradation.py --workdir=runs/sweep --parallel=2"
USAGE = "SWEEP.py --workdir=ROOT [--flag=value ...] [-- --config.key=value ...]"
DETAILS = "Everything after `--` goes to every member's training command (after its overrides)."


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  """The absl flags of ``resnet-jax sweep``; ``args`` (its raw arguments) choose none of them."""
  del args
  flags.DEFINE_string(
    "workdir", None, "Sweep root; each member trains in ROOT/NAME.", flag_values=flag_values
  )
  flags.DEFINE_integer(
    "parallel", 1, "Members trained at a time (local runs).", flag_values=flag_values
  )
  flags.DEFINE_enum(
    "emit",
    None,
    list(sweep.EMIT_KINDS),
    "Print one launch command per member instead of running them.",
    flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
    "launcher_arg",
    [],
    "Argument for the launcher (tpu_vm.sh, sbatch or python), repeatable.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "python", sys.executable, "Interpreter for local runs.", flag_values=flag_values
  )


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  """Runs (or with ``--emit`` prints the launch commands of) the sweep file ``positionals[0]``;
  ``positionals[1:]`` (what followed ``--``) go to every member. Exits 1 when a member did not
  finish; raises ``UsageError`` on bad input."""
  if not positionals:
    raise UsageError("name a sweep file: resnet-jax sweep SWEEP.py --workdir=ROOT")
  sweep_file, extra = positionals[0], list(positionals[1:])
  stray = [a for a in extra if not a.startswith("-")]
  if stray:
    raise UsageError(
      f"unexpected arguments {stray}; member flags go after --, e.g. -- --config.x=1"
    )
  root = flag_values["workdir"].value
  if root is None:
    raise UsageError("--workdir is required (the sweep root)")
  python = flag_values["python"].value
  if flag_values["emit"].value:
    sweep.print_commands(
      sweep_file,
      root,
      flag_values["emit"].value,
      extra_args=extra,
      launcher_args=flag_values["launcher_arg"].value,
      python=python,
    )
    return
  status = sweep.run_sweep(
    sweep_file, root, parallel=flag_values["parallel"].value, extra_args=extra, python=python
  )
  if status:
    sys.exit(status)
