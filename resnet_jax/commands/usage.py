"""Refusing bad command-line input: ``UsageError`` and the checks every command's body shares.

The front door turns a ``ValueError`` (``UsageError`` is one) into one ``error:`` line on stderr and
exit status 2.
"""

from __future__ import annotations

import re
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


def override_error(error: Exception, argv: Sequence[str]) -> str:
  """ml_collections' error for a --config.key override in ``argv``, without its nesting and
  quoting: ``unknown key config.a.b; did you mean config.a.c?`` for an unknown key, which arrives
  as AttributeError(KeyError("'b'\\nDid you mean ...")) or its repr naming only the last part.
  The one wording for train's door and for a sweep member's check."""
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  text = text.replace("\\n", "\n").replace("\\'", "'")
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  unknown = re.fullmatch(r"'([\w.]+)'", lines[0]) if lines else None
  if isinstance(error, KeyError) and unknown:
    # The error names the last part of the key: the override given names all of it.
    leaf = unknown.group(1)
    given = [m.group(1) for a in argv if (m := re.match(r"--?config\.([\w.]+)(=|$)", a))]
    key = next((k for k in given if k == leaf or k.endswith("." + leaf)), leaf)
    hint = re.search(r'Did you mean "([\w.]+)"', text)
    close = f"{key[: -len(leaf)]}{hint.group(1)}" if hint else ""
    return f"unknown key config.{key}" + (
      f"; did you mean config.{close}?" if hint else " (the config file lists its keys)"
    )
  return "; ".join(lines).strip("'\"")
