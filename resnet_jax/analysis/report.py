"""What every analysis writes: Markdown tables, JSON rows and PNG figures, to a folder or bucket."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from resnet_jax import storage


def markdown_table(
  header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
  """A Markdown table; by default the first column left-aligned and the others right."""
  align = align or ["---"] + ["---:"] * (len(header) - 1)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
  return "\n".join(lines) + "\n"


def output_path(out, name: str) -> str:
  """``out/name``, where ``out`` (an analysis's ``--out``) may be a folder or a bucket URL."""
  return os.fspath(storage.location(out) / name)


def write_text(path: str, text: str) -> str:
  storage.write_atomically(path, text)
  return path


def write_json(path: str, obj) -> str:
  return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def pct(v) -> str:
  """A fraction as a percentage with two decimals ('' for None)."""
  return "" if v is None else f"{100 * float(v):.2f}%"


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def save_figure(fig, path: str) -> str:
  """Writes ``fig`` as a PNG at ``path`` (a file or bucket object) and closes it."""
  target = storage.location(path)
  if not storage.is_object_store(target):
    target.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  with target.open("wb") as f:
    fig.savefig(f, format="png", dpi=110)
  pyplot().close(fig)
  return path


def write_outputs(out, stem: str, *, figure, table: str, rows) -> dict[str, Any]:
  """``stem.png``, ``stem.md`` and ``stem.json`` in ``out``; returns where the figure and table
  went, the shape of every analysis's result."""
  figure_path = save_figure(figure, output_path(out, f"{stem}.png"))
  table_path = write_text(output_path(out, f"{stem}.md"), table)
  write_json(output_path(out, f"{stem}.json"), rows)
  return {"figure": figure_path, "table": table_path}


# resnet-jax's own version stands in for the commit where the package runs from a wheel.
_PACKAGES = (
  "resnet-jax",
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "tensorflow-datasets",
  "tensorflow",
  "tensorflow-cpu",  # what the install pins; "tensorflow" is the same module from the full wheel
  "numpy",
)


_EITHER_TENSORFLOW = ("tensorflow", "tensorflow-cpu")  # one of them provides the module


def _commit() -> dict[str, Any]:
  """The checkout this package runs from: HEAD and whether files differ from it (None outside a
  git checkout, e.g. an installed wheel)."""
  import subprocess  # pylint: disable=g-import-not-at-top

  here = os.path.dirname(os.path.abspath(__file__))

  def git(*args):
    return subprocess.run(
      ["git", "-C", here, *args], capture_output=True, text=True, timeout=20, check=True
    ).stdout.strip()

  try:
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top

  return platform.processor() or None


def provenance() -> dict[str, Any]:
  """Where an analysis's numbers were computed: the commit (and whether the tree differed from it),
  the versions of the numerical packages, the platform, CPU model and JAX's devices."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  versions = {}
  for package in _PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      if package not in _EITHER_TENSORFLOW:
        versions[package] = None
  return {
    **_commit(),
    "versions": versions,
    "python": platform.python_version(),
    "platform": platform.platform(),
    "cpu_model": _cpu_model(),
    "cpu_count": os.cpu_count(),
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "device_count": jax.device_count(),
    "process_count": jax.process_count(),
  }
