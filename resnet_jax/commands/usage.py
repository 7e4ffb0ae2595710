"""Refusing bad command-line input: ``UsageError`` and the checks every command's body shares.

The front door turns a ``ValueError`` (``UsageError`` is one) into one ``error:`` line on stderr and
exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags


class UsageError(ValueError):
  """Bad command-line input; the message names the problem and the fix."""


def require(flag_values: flags.FlagValues, name: str):
  """The value of flag ``name``; ``UsageError`` if it was not given."""
  value = flag_values[name].value
  if value is None:
    raise UsageError(f"--{name} is required")
  return value


def no_positionals(positionals: Sequence[str]) -> None:
  if positionals:
    raise UsageError(f"unexpected arguments {list(positionals)}")
