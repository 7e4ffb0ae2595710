"""The PyTorch reference, which lives in the checkout's ``benchmarks/`` folder, not in the package.

``--compare=torch`` and ``--inference`` time the same architecture in PyTorch
(``benchmarks/torch_reference.py``).  A developer measurement, so it is not installed with the
wheel: from an installed wheel these say in one line that they need the checkout.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

REFERENCE_FILE = "torch_reference.py"


def reference_path() -> pathlib.Path:
  """``benchmarks/torch_reference.py`` next to the package (a checkout) or in the working directory.

  Raises:
    FileNotFoundError: neither place has it (an installed wheel run outside the checkout).
  """
  checkout = pathlib.Path(__file__).resolve().parents[2]
  for root in (checkout, pathlib.Path.cwd()):
    path = root / "benchmarks" / REFERENCE_FILE
    if path.is_file():
      return path
  raise FileNotFoundError(
    f"the PyTorch reference (benchmarks/{REFERENCE_FILE}) is in the resnet_jax checkout, not the "
    "installed package: run this from the checkout"
  )


@functools.cache
def torch_reference():
  """The reference module, loaded from its file (it is not importable by name)."""
  path = reference_path()
  spec = importlib.util.spec_from_file_location("resnet_jax_torch_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def torch_resnet(model: str, num_classes: int | None = None, overrides: dict | None = None):
  """The registry's architecture in PyTorch (``benchmarks/torch_reference.py``)."""
  return torch_reference().torch_resnet(model, num_classes, overrides)


class TorchApart:
  """PyTorch's training step in a Python process of its own, timed when asked.

  In our process, after the JAX steps, PyTorch ran measurably slower: it shares the process with
  XLA's thread pools, a second OpenMP runtime (the oneDNN kernel's) and the allocator settings the
  front door makes for JAX. Its own process is how PyTorch users run it. It
  stays alive so that its steps can alternate with ours: this machine's speed drifts within
  minutes, and a ratio of two windows taken minutes apart carries that drift.
  """

  def __init__(self, model: str, batch: int, image_size: int, **kwargs):
    args = {"model": model, "batch": batch, "image_size": image_size, **kwargs}
    script = reference_path()
    self._proc = subprocess.Popen(
      [sys.executable, str(script), json.dumps(args)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=_with_package_on_path(os.environ),
    )
    self.info = self._read()

  def _read(self):
    line = self._proc.stdout.readline()
    if line:
      return json.loads(line)
    self._proc.wait()
    last = (self._proc.stderr.read().strip().splitlines() or ["(no output)"])[-1]
    if "ImportError" in last or "ModuleNotFoundError" in last:
      raise ImportError(last.split(": ", 1)[-1])
    raise RuntimeError(f"the PyTorch comparison failed: {last}")

  def time_steps(self, n: int) -> list[float]:
    self._proc.stdin.write(f"{n}\n")
    self._proc.stdin.flush()
    return self._read()

  def close(self):
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._proc.stdout.close()
    self._proc.stderr.close()


def _with_package_on_path(environ) -> dict:
  """The worker's environment: the script's folder is first on its path, so the folder that holds
  this very ``resnet_jax`` goes after it (the worker imports the models from the same code)."""
  root = str(pathlib.Path(__file__).resolve().parents[2])
  env = dict(environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), root) if p)
  return env
