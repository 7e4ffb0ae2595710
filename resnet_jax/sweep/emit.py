"""``resnet-jax sweep --emit``: one launch command per member, printed, nothing run or written.

Imports neither JAX nor TensorFlow, so the commands print at once on any machine.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from resnet_jax.sweep.spec import Member, load_sweep

EMIT_KINDS = ("tpu", "slurm", "local")
# The checkout this package runs from, where a sweep's relative paths are looked up last; an
# installed wheel has none (its parent folder holds no configs/ nor launch/).
CHECKOUT = Path(__file__).resolve().parents[2]


def python_command(python: str | os.PathLike | Sequence[str]) -> list[str]:
  """The interpreter as an argument list (tests stand a fake trainer's list in for it)."""
  return [os.fspath(python)] if isinstance(python, (str, os.PathLike)) else list(python)


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
) -> None:
  """Prints :func:`emit_commands` of a sweep file, one shell-quoted command a line."""
  out = out or sys.stdout
  members = load_sweep(sweep_file)
  for cmd in emit_commands(
    members,
    os.fspath(root),
    emit,
    extra_args=extra_args,
    launcher_args=launcher_args,
    python=python,
  ):
    print(shlex.join(cmd), file=out)
