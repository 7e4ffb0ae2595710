"""``resnet-jax sweep SWEEP.py --workdir=ROOT [-- member flags]``: its flags and its body.

Imports the sweep package and train's flags, neither of which imports JAX or TensorFlow: ``--help``
is instant, and local members start their own training processes. Every member is checked as
``train`` checks its input (:func:`check_member`) before anything is printed or started; that
check loads JAX (the config validation's owners of the choices), never TensorFlow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from resnet_jax import sweep
from resnet_jax.commands import train
from resnet_jax.commands import usage
from resnet_jax.commands.usage import UsageError
from resnet_jax.train import config as config_lib

PURPOSE = "run a grid of config overrides locally, or print one launch command per member"
EXAMPLE = "resnet-jax sweep launch/sweeps/degradation.py --workdir=runs/sweep --parallel=2"
USAGE = "SWEEP.py --workdir=ROOT [--flag=value ...] [-- --config.key=value ...]"
DETAILS = (
  "Everything after `--` goes to every member's training command (after its overrides) and is part "
  "of what the member is: a member that ran under ROOT with other arguments is refused. Every "
  "member's config and flags are checked as `train` checks them before anything runs or prints."
)


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
      check=check_member,
    )
    return
  status = sweep.run_sweep(
    sweep_file,
    root,
    parallel=flag_values["parallel"].value,
    extra_args=extra,
    python=python,
    check=check_member,
  )
  if status:
    sys.exit(status)


def check_member(member: sweep.Member, train_args: Sequence[str]) -> None:
  """Refuses, in one line naming the member, what ``train`` would refuse at its start: its flags
  and ``--config.key=value`` overrides parsed by train's own flags (an unknown key or flag, a value
  of the wrong type, a config file that does not load), then the config validated as
  ``startup.check_before_start`` validates it (models, optimizers, ranges)."""
  from resnet_jax import models  # pylint: disable=g-import-not-at-top

  args = config_lib.with_config_files(train_args)
  flag_values = flags.FlagValues()
  try:
    train.define_flags(flag_values, args)
    flag_values(["train", *args])
    config = flag_values.config
    config.get("model")  # a config file that failed to load raises here
    config_lib.validate(config, known_models=models.list_models(), known_datasets=None)
  except flags.Error as e:
    problem = str(e)
  except SyntaxError as e:
    problem = f"config file {e.filename}:{e.lineno}: syntax error: {e.msg}"
  except OSError as e:
    problem = f"--config: {str(e).splitlines()[-1].strip()}"
  except (AttributeError, KeyError) as e:  # ml_collections' words for an unknown key
    problem = usage.override_error(e, args)
  except (TypeError, ValueError) as e:
    problem = str(e)
  else:
    return
  raise UsageError(f"sweep member {member.name}: {' '.join(problem.split())}")
