"""The sweep file format: a Python file whose ``get_sweep()`` lists config overrides, one dict per
member, built with :func:`product` and :func:`zipped`; :func:`load_sweep` reads it as members.

Each member trains in ``ROOT/NAME``, NAME being its overrides in sorted key order (e.g.
``model=resnet20,seed=0``): stable when the sweep file is reordered, so re-running a sweep finds
its workdirs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import os
import re
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# No config file: members train the default experiment the training program has built in.
DEFAULT_CONFIG = None
_MAX_NAME = 150
_CONFIG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


# --- building sweeps --------------------------------------------------------------------------------


def _as_sweep(
  parts: Sequence[Any], axes: Mapping[str, Sequence[Any]], how: str
) -> list[list[dict]]:
  """Each positional part (a mapping of axes, or an already built sweep) and each keyword axis as a
  list of single-key dicts (or a sweep: a list of dicts)."""
  out = []
  for part in [*parts, dict(axes)] if axes else parts:
    if isinstance(part, Mapping):
      for key, values in part.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
          raise TypeError(f"{how}: axis {key!r} needs a list of values, got {values!r}")
        out.append([{key: v} for v in values])
    elif isinstance(part, Sequence) and all(isinstance(m, Mapping) for m in part):
      out.append([dict(m) for m in part])
    else:
      raise TypeError(
        f"{how}: expected axes (a dict of lists) or a sweep (a list of dicts), got {part!r}"
      )
  return out


def _merge(members: Iterable[Mapping], how: str) -> dict:
  merged: dict = {}
  for m in members:
    for k, v in m.items():
      if k in merged:
        raise ValueError(f"{how}: key {k!r} is set by two axes")
      merged[k] = v
  return merged


def product(*parts, **axes) -> list[dict]:
  """Every combination; the first axis varies slowest. ``product(a=[1, 2], b=[3])`` ->
  ``[{a: 1, b: 3}, {a: 2, b: 3}]``. Parts may be dicts of axes or sweeps (lists of dicts)."""
  lists = _as_sweep(parts, axes, "product")
  return [_merge(combo, "product") for combo in itertools.product(*lists)]


def zipped(*parts, **axes) -> list[dict]:
  """Values paired position by position (all axes the same length). ``zipped(a=[1, 2], b=[3, 4])``
  -> ``[{a: 1, b: 3}, {a: 2, b: 4}]``."""
  lists = _as_sweep(parts, axes, "zipped")
  lengths = {len(l) for l in lists}
  if len(lengths) > 1:
    raise ValueError(f"zipped: axes have different lengths {sorted(lengths)}")
  return [_merge(combo, "zipped") for combo in zip(*lists)]


zip_ = zipped


# --- members ----------------------------------------------------------------------------------------


def format_value(v: Any) -> str:
  """A value as ``--config.k=`` text that ml_collections parses back to it."""
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))
  if isinstance(v, float):
    return repr(v)
  return str(v)


def _name_value(v: Any) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return "-".join(_name_value(x) for x in v)
  if isinstance(v, float):
    return repr(v)
  return str(v)


def member_name(overrides: Mapping[str, Any], config: str | None = None) -> str:
  """Workdir name: ``k=v`` pairs in sorted key order joined by ',', filesystem-safe; the config
  file's stem first when the member chose its own config; 'default' when there is nothing."""
  pairs = [f"{k}={_name_value(overrides[k])}" for k in sorted(overrides)]
  if config is not None:
    pairs.insert(0, f"config={Path(config.split(':')[0]).stem}")
  name = re.sub(r"[^A-Za-z0-9._+=,-]", "_", ",".join(pairs)) or "default"
  if name.startswith("."):
    name = "_" + name
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f"{name[: _MAX_NAME - 11]}-{digest}"
  return name


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  config: str | None  # None: the training program's built-in default experiment
  overrides: dict
  args: tuple[str, ...] = ()  # the sweep command's arguments after `--`, the same for every member

  def run_args(self) -> list[str]:
    """What the member runs with besides its config and workdir: overrides, then ``args``."""
    return [f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()] + list(self.args)

  def train_args(self, workdir: str) -> list[str]:
    """Arguments of ``python -m resnet_jax.main`` (and of the launch scripts)."""
    config = [f"--config={self.config}"] if self.config is not None else []
    return [*config, f"--workdir={workdir}", *self.run_args()]


def load_sweep(sweep_file: str | os.PathLike, args: Sequence[str] = ()) -> list[Member]:
  """Members of a sweep file, in the file's order, each with ``args`` (what followed ``--``); names
  checked unique. A file that does not run (a syntax error, a failing ``get_sweep()``) is a
  ``ValueError`` of one line naming the file and line."""
  path = Path(sweep_file)
  if not path.is_file():
    raise FileNotFoundError(f"sweep file not found: {path}")
  try:
    spec = importlib.util.spec_from_file_location(f"_resnet_jax_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
      raise ValueError(f"{path}: a sweep file defines get_sweep() -> list of override dicts")
    default_config = getattr(module, "CONFIG", DEFAULT_CONFIG)
    common = dict(getattr(module, "OVERRIDES", {}))
    raw = module.get_sweep()
  except ValueError as e:
    if str(e).startswith(f"{path}:"):
      raise
    raise ValueError(_file_error(path, e)) from None
  except Exception as e:  # noqa: BLE001 - any error of the user's file is one line naming it
    raise ValueError(_file_error(path, e)) from None
  if isinstance(raw, Mapping) or not isinstance(raw, Sequence):
    raise ValueError(f"{path}: get_sweep() must return a list of dicts, got {type(raw).__name__}")
  members, seen = [], {}
  for i, m in enumerate(raw):
    if not isinstance(m, Mapping):
      raise ValueError(f"{path}: member {i} is {m!r}, not a dict")
    overrides = {str(k): v for k, v in m.items() if k != "config"}
    for k in [*overrides, *common]:
      if not _CONFIG_KEY.fullmatch(k):
        raise ValueError(f"{path}: member {i}: {k!r} is not a config key")
    own_config = m.get("config")
    name = member_name(overrides, own_config)
    if name in seen:
      raise ValueError(f"{path}: members {seen[name]} and {i} share the workdir name {name!r}")
    seen[name] = i
    config = own_config or default_config
    members.append(
      Member(name, None if config is None else str(config), {**common, **overrides}, tuple(args))
    )
  return members


def _file_error(path: Path, error: Exception) -> str:
  """``PATH:LINE: what went wrong`` for an error raised while running sweep file ``path``."""
  if isinstance(error, SyntaxError):
    return f"{path}:{error.lineno}: syntax error: {error.msg}"
  line = None
  for frame in traceback.extract_tb(error.__traceback__):
    if Path(frame.filename).resolve() == path.resolve():
      line = frame.lineno  # the innermost line of the file itself
  where = f"{path}:{line}" if line else str(path)
  text = " ".join(str(error).split()) or "(no message)"
  return f"{where}: {type(error).__name__}: {text}"
