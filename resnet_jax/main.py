"""The ``resnet-jax`` command: one front door, absl flags in, one function call per subcommand out.

  resnet-jax                      lists the subcommands (as does --help)
  resnet-jax COMMAND --help       that command's flags and their defaults
  python -m resnet_jax.main ...   the same without the console script; flags with no COMMAND train

Every subcommand is a module of :mod:`resnet_jax.commands` holding its flags and its body; here are
the registry of them (``COMMANDS``), the help and the one way to fail. Only the chosen command's
flags are defined, so ``--help`` lists exactly those, and nothing heavy (JAX, TensorFlow) is
imported before a command's body needs it. Bad input ends with one line on stderr naming the
problem and the fix, and exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import textwrap
import types
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging

from resnet_jax import runtime
from resnet_jax.commands import analyze
from resnet_jax.commands import bench
from resnet_jax.commands import convert
from resnet_jax.commands import eval as eval_command
from resnet_jax.commands import export
from resnet_jax.commands import models
from resnet_jax.commands import predict
from resnet_jax.commands import sweep
from resnet_jax.commands import train
from resnet_jax.commands.usage import override_error
from resnet_jax.failure import exit_with_error
from resnet_jax.train import config as config_lib

PROG = "resnet-jax"
HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")

# What every command's user can act on, besides what a command names in its errors().
_BAD_INPUT = (ValueError, KeyError, FileNotFoundError)


@dataclasses.dataclass(frozen=True)
class Command:
  """One subcommand, as its module in :mod:`resnet_jax.commands` defines it."""

  purpose: str
  example: str
  define_flags: Callable[[flags.FlagValues, Sequence[str]], None]
  run: Callable[[flags.FlagValues, list[str]], None]
  usage: str = "[--flag=value ...]"
  details: str = ""
  errors: Callable[[], tuple[type[Exception], ...]] = tuple

  @classmethod
  def of(cls, module: types.ModuleType) -> Command:
    """The command of ``module``: PURPOSE, EXAMPLE, define_flags and run; USAGE, DETAILS and
    errors() where it has them."""
    optional = {
      field: getattr(module, attribute)
      for field, attribute in (("usage", "USAGE"), ("details", "DETAILS"), ("errors", "errors"))
      if hasattr(module, attribute)
    }
    return cls(module.PURPOSE, module.EXAMPLE, module.define_flags, module.run, **optional)


COMMANDS: dict[str, Command] = {
  "train": Command.of(train),
  "eval": Command.of(eval_command),
  "models": Command.of(models),
  "bench": Command.of(bench),
  "convert": Command.of(convert),
  "predict": Command.of(predict),
  "export": Command.of(export),
  "sweep": Command.of(sweep),
  "analyze": Command.of(analyze),
}
DEFAULT_COMMAND = "train"  # `python -m resnet_jax.main --config=... --workdir=...`


# --- help ---------------------------------------------------------------------------------------

_COMMON_FLAGS = textwrap.fill(
  "Every command also takes --verbosity=N (0: our INFO lines, the default; 1: third-party INFO "
  "logs and TensorFlow's C++ notices too; -1: warnings and errors only) and --flagfile=FILE.",
  width=100,
)


def overview() -> str:
  """``resnet-jax --help``: every subcommand with its purpose and an example."""
  width = max(len(n) for n in COMMANDS)
  lines = [
    "resnet-jax: deep residual networks (He et al. 2015) in JAX/Flax.",
    "",
    f"usage: {PROG} COMMAND [--flag=value ...]",
    "       python -m resnet_jax.main [COMMAND] ...   (flags with no COMMAND: train)",
    "",
    "commands:",
  ]
  for name, command in COMMANDS.items():
    lines.append(f"  {name:<{width}}  {command.purpose}")
    lines.append(f"  {'':<{width}}    e.g. {command.example}")
  lines += ["", f"`{PROG} COMMAND --help` lists that command's flags and their defaults.", ""]
  lines.append(_COMMON_FLAGS)
  return "\n".join(lines)


def command_help(name: str, args: Sequence[str]) -> str:
  """``resnet-jax NAME --help``: usage, purpose, example and only this command's flags."""
  command = COMMANDS[name]
  fv = flags.FlagValues()
  command.define_flags(fv, args)
  lines = [
    f"usage: {PROG} {name} {command.usage}".rstrip(),
    "",
    f"{command.purpose[0].upper()}{command.purpose[1:]}.",
    f"e.g. {command.example}",
  ]
  if command.details:
    lines += ["", command.details.strip("\n")]
  listed = fv.get_help(include_special_flags=False)
  # get_help heads each group with its module's name; one command has one group, so drop it.
  listed = "\n".join(l for l in listed.splitlines() if l.startswith(" ")).rstrip()
  if listed:
    lines += ["", "flags:", listed]
  lines += ["", _COMMON_FLAGS]
  return "\n".join(lines)


def unknown_command(name: str) -> str:
  close = difflib.get_close_matches(name, list(COMMANDS), n=3, cutoff=0.5)
  hint = f"did you mean {' or '.join(close)}? " if close else ""
  return f"unknown command {name!r}; {hint}({PROG} --help lists the commands)"


# --- running a command, and the one way it fails -------------------------------------------------


def _user_can_act_on(error: Exception, command: Command) -> bool:
  """Bad input, or an error the command names. Its ``errors()`` imports their modules, so it is
  asked only about something else than bad input: a refusal made before JAX, Orbax or TensorFlow
  load must not load them to be printed."""
  return isinstance(error, _BAD_INPUT) or isinstance(error, command.errors())


def main(command: Command, argv: list[str]) -> None:
  """Runs ``command`` on the parsed flags; ``argv`` is absl's rest (program name, positionals)."""
  # Before anything heavy loads; --verbosity=1 lets every library's INFO lines through.
  runtime.setup(verbose=logging.get_verbosity() > logging.INFO)
  runtime.pause_collection()  # until TensorFlow and JAX are loaded, at the latest until the end
  try:
    command.run(flags.FLAGS, argv[1:])
  except Exception as e:  # pylint: disable=broad-except
    if not _user_can_act_on(e, command):
      raise
    logging.flush()  # one line, no traceback: the user can act on it
    exit_with_error(e.args[0] if isinstance(e, KeyError) and e.args else e)
  finally:
    runtime.resume_collection()  # a command that loads no TensorFlow (models, sweep) ran paused
  runtime.spare_the_final_collection()


def run(argv: Sequence[str] | None = None) -> None:
  """Console script: ``resnet-jax [COMMAND] --flags``."""
  argv = list(sys.argv if argv is None else argv)
  args = argv[1:]
  if not args or args[0] in HELP_ARGS or args[0] == "help":
    topic = args[1] if len(args) > 1 and args[0] == "help" else None
    _show_help(topic if topic in COMMANDS else None, args[2:])
  name = DEFAULT_COMMAND if args[0].startswith("-") else args.pop(0)
  if name not in COMMANDS:
    exit_with_error(unknown_command(name))
  command = COMMANDS[name]
  own = args[: args.index("--")] if "--" in args else args
  if any(a in HELP_ARGS for a in own):
    _show_help(name, [a for a in own if a not in HELP_ARGS])
  try:
    command.define_flags(flags.FLAGS, args)
  except ValueError as e:  # e.g. an analysis name that is not one
    exit_with_error(e)
  except Exception as e:  # noqa: BLE001 - a bad --flagfile or --config.key, found while defining
    message = _flag_error(name, e, args)
    if message is None:
      raise
    exit_with_error(message)
  app.run(
    lambda rest: main(command, rest),
    argv=[f"{PROG} {name}", *args],
    flags_parser=lambda a: _parse_flags(name, a),
  )


def _show_help(name: str | None, args: Sequence[str]) -> NoReturn:
  """Prints the overview (no ``name``) or command ``name``'s help, and exits."""
  try:
    print(command_help(name, args) if name else overview())
  except ValueError as e:  # `analyze NOSUCH --help`
    exit_with_error(e)
  sys.exit(0)


def _parse_flags(name: str, argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or --config.key (unknown, or a wrong type) is one line, not a
  traceback or a page of usage."""
  try:
    remaining = flags.FLAGS(config_lib.with_config_files(argv))  # --config=NAME: a shipped file
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      flags.FLAGS.config.get("model")  # a config file that failed to load raises here, not mid-run
    return remaining
  except Exception as e:  # noqa: BLE001 - anything but bad input is raised again
    message = _flag_error(name, e, argv)
    if message is None:
      raise
  exit_with_error(message)


def _flag_error(name: str, error: Exception, argv: Sequence[str]) -> str | None:
  """The one line for a flag, --flagfile, --config file or --config.key override the user can fix;
  None for anything else."""
  if isinstance(error, flags.Error):  # an unknown flag, a bad value, a --flagfile not there
    text = str(error).replace("ERROR:: ", "")
    message = f"{text} ({PROG} {name} --help lists its flags)"
  elif isinstance(error, SyntaxError):
    where = f"{error.filename}, line {error.lineno}" if error.filename else "the config file"
    message = f"--config: {where}: {error.msg}; fix the file's Python syntax"
  elif isinstance(error, OSError):
    message = (
      f"--config: {str(error).splitlines()[-1].strip()} (give the path of a configs/NAME.py file)"
    )
  elif isinstance(error, (AttributeError, KeyError, TypeError, ValueError)):
    message = "bad --config override: " + override_error(error, argv)
  else:
    return None
  return " ".join(message.split())


if __name__ == "__main__":
  run()
