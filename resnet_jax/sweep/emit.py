"""``resnet-jax sweep --emit``: one launch command per member, printed, nothing run or written.

Every member is checked first (``check``: the command passes train's own flag parsing and config
validation), so a typo'd key or model fails here, in one line, not on the cluster. Importing this
module loads neither JAX nor TensorFlow; the check loads JAX (the config validation's owners of
optimizers, losses, schedules) but never TensorFlow, and reads nothing under ROOT.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from resnet_jax.sweep.spec import Member, load_sweep

EMIT_KINDS = ("tpu", "slurm", "local")
# Refuses a member (ValueError, one line naming it) given its training arguments, configs resolved.
MemberCheck = Callable[[Member, Sequence[str]], None]
# The checkout this package runs from, where a sweep's relative paths are looked up last; an
# installed wheel has none (its parent folder holds no configs/ nor launch/).
CHECKOUT = Path(__file__).resolve().parents[2]


def python_command(python: str | os.PathLike | Sequence[str]) -> list[str]:
  """The interpreter as an argument list (tests stand a fake trainer's list in for it)."""
  return [os.fspath(python)] if isinstance(python, (str, os.PathLike)) else list(python)


def resolve_config(config: str | None, sweep_file: Path) -> str | None:
  """An existing config path for a local run: as given (from the cwd), else next to the sweep
  file, else in the checkout the package runs from. None (the built-in default) stays None."""
  if config is None:
    return None
  path, sep, arg = config.partition(":")
  bases = [Path.cwd(), Path(sweep_file).parent]
  if (CHECKOUT / "configs").is_dir():
    bases.append(CHECKOUT)
  for base in bases:
    cand = base / path
    if cand.is_file():
      return (path if base == Path.cwd() else str(cand)) + sep + arg
  raise FileNotFoundError(
    f"config file {path!r} not found (from {', '.join(str(b) for b in dict.fromkeys(bases))})"
  )


def check_members(
  members: Sequence[Member], sweep_file: str | os.PathLike, check: MemberCheck | None
) -> dict[str | None, str | None]:
  """Each member's config file found (a config path as the sweep file gives it -> one that exists
  here) and, with ``check``, each member checked, before anything is printed or run."""
  configs = {m.config: resolve_config(m.config, Path(sweep_file)) for m in members}
  for m in members if check is not None else ():
    check(m, dataclasses.replace(m, config=configs[m.config]).train_args(m.name))
  return configs


def _launch_script(name: str) -> str:
  """launch/NAME from the cwd, else from the checkout; as a relative path when neither has it (an
  installed wheel: the command is run where the launch scripts are)."""
  rel = Path("launch") / name
  for base in (Path.cwd(), CHECKOUT):
    if (base / rel).is_file():
      return str(rel) if base == Path.cwd() else str(base / rel)
  return str(rel)


def emit_commands(
  members: Sequence[Member],
  root: str,
  emit: str,
  *,
  extra_args: Sequence[str] = (),
  launcher_args: Sequence[str] = (),
  python: str | Sequence[str] = "python",
) -> list[list[str]]:
  """One launch command (argument list) per member.

  ``tpu``: ``launch/tpu_vm.sh LAUNCHER_ARGS --config=.. --workdir=ROOT/NAME --config.k=v ..``
  (TPU name/zone from LAUNCHER_ARGS or $TPU_NAME/$TPU_ZONE); ``slurm``: ``sbatch --job-name=NAME
  LAUNCHER_ARGS launch/slurm.sbatch --config=.. ..``; ``local``: ``python -m resnet_jax.main ..``.
  ROOT may be a ``gs://`` URL: it is joined as text, never touched.
  """
  if emit not in EMIT_KINDS:
    raise ValueError(f"emit must be one of {', '.join(EMIT_KINDS)}, got {emit!r}")
  cmds = []
  for m in members:
    args = m.train_args(posixpath.join(root.rstrip("/") or "/", m.name)) + list(extra_args)
    if emit == "tpu":
      cmds.append([_launch_script("tpu_vm.sh"), *launcher_args, *args])
    elif emit == "slurm":
      cmds.append(
        [
          "sbatch",
          f"--job-name=resnet-{m.name}"[:128],
          *launcher_args,
          _launch_script("slurm.sbatch"),
          *args,
        ]
      )
    else:
      cmds.append([*python_command(python), *launcher_args, "-m", "resnet_jax.main", *args])
  return cmds


def print_commands(
  sweep_file: str | os.PathLike,
  root: str | os.PathLike,
  emit: str,
  *,
  extra_args: Sequence[str] = (),
  launcher_args: Sequence[str] = (),
  python: str | Sequence[str] = "python",
  out=None,
  check: MemberCheck | None = None,
) -> None:
  """Prints :func:`emit_commands` of a sweep file, one shell-quoted command a line, once every
  member's config is found and passes ``check`` (see :func:`check_members`)."""
  out = out or sys.stdout
  if emit not in EMIT_KINDS:
    raise ValueError(f"emit must be one of {', '.join(EMIT_KINDS)}, got {emit!r}")
  members = load_sweep(sweep_file, extra_args)
  if check is not None:  # (config files are looked up here only to be checked)
    check_members(members, sweep_file, check)
  cmds = emit_commands(members, os.fspath(root), emit, launcher_args=launcher_args, python=python)
  for cmd in cmds:
    print(shlex.join(cmd), file=out)
