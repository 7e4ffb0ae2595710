"""The package as users install it: a built wheel in a fresh venv, run from a folder that is not the
checkout. Trains a tiny run from a config file, names a shipped config by its name, and runs
`analyze degradation`, whose recipe is the shipped configs/digits.py; none may read the checkout's
configs/ (the wheel carries it as resnet_jax/configs/, and no top-level `configs` package).

Nothing is downloaded: the wheel is built without build isolation, installed without dependencies,
and the new venv sees the project venv's packages through a .pth file (the project's own editable
install is not among them: a .pth line adds a folder to sys.path, it does not run that folder's
.pth hooks).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, TINY_CONFIG, command_env

pytestmark = pytest.mark.slow


def _run(cmd, *, cwd, env, timeout):
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
  return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(venv bin folder, environment, a working folder outside the checkout) with the wheel in."""
  tmp = tmp_path_factory.mktemp("wheel")
  # Build from a copy: an in-tree build writes build/ and egg-info into the shared checkout.
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "setup.py", "README.md"):
    shutil.copy(os.path.join(REPO, name), src / name)
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
  for folder in ("resnet_jax", "configs"):
    shutil.copytree(os.path.join(REPO, folder), src / folder, ignore=ignore)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
  build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist"]
  _run([*build, src], cwd=tmp, env=os.environ, timeout=300)
  (wheel,) = (tmp / "dist").glob("resnet_jax-*.whl")

  venv = tmp / "venv"
  _run([sys._base_executable, "-m", "venv", "--without-pip", venv], cwd=tmp, env={}, timeout=120)
  python = venv / "bin" / "python"
  install = [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel]
  _run(install, cwd=tmp, env=os.environ, timeout=300)
  site = _run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    cwd=tmp,
    env={},
    timeout=60,
  ).stdout.strip()
  Path(site, "project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

  env = command_env()
  env.pop("PYTHONPATH")  # the installed package, not the checkout
  env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
  work = tmp / "work"
  work.mkdir()
  located = _run(
    [python, "-c", "import resnet_jax; print(resnet_jax.__file__)"], cwd=work, env=env, timeout=60
  )
  assert located.stdout.strip().startswith(site), located.stdout  # not the checkout's package
  return venv / "bin", env, work


def test_an_installed_wheel_trains_from_a_config_file(installed):
  bin_dir, env, work = installed
  shutil.copy(TINY_CONFIG, work / "tiny.py")
  cmd = [bin_dir / "resnet-jax", "train", "--config=tiny.py", "--workdir=run"]
  proc = _run([*cmd, "--config.num_train_steps=2"], cwd=work, env=env, timeout=600)
  assert "train finished" in proc.stdout
  assert (work / "run" / "DONE").exists()


def test_an_installed_wheel_runs_analyze_degradation(installed):
  bin_dir, env, work = installed
  tiny = ["--depths=8", "--families=resnet", "--seeds=0"]
  tiny += ["--steps=2", "--width=0.25", "--batch_size=16"]
  cmd = [bin_dir / "resnet-jax", "analyze", "degradation", "--out=deg", *tiny, "--evals=1"]
  proc = _run(cmd, cwd=work, env=env, timeout=600)
  assert "degradation: figure" in proc.stdout
  assert (work / "deg" / "degradation.png").stat().st_size > 1000


def test_an_installed_wheel_finds_a_shipped_config_by_its_name(installed):
  bin_dir, env, work = installed
  probe = (
    "import importlib.metadata, importlib.util, os, resnet_jax\n"
    "from resnet_jax.train import config\n"
    "files = importlib.metadata.distribution('resnet-jax').files\n"
    "tops = {f.parts[0] for f in files if f.parts[0] != '..'}\n"  # '..': the bin/ scripts
    "print(sorted(t for t in tops if not t.endswith('.dist-info')))\n"
    "print(importlib.util.find_spec('configs'))\n"
    "print(os.path.relpath(config.config_file('cifar10_resnet110'), resnet_jax.__file__ + '/..'))\n"
    "print(os.path.relpath(config.default_config_file(), resnet_jax.__file__ + '/..'))\n"
  )
  out = _run([bin_dir / "python", "-c", probe], cwd=work, env=env, timeout=60).stdout.split("\n")
  assert out[:4] == [
    "['resnet_jax']",  # nothing installed beside the package: no top-level `configs`
    "None",
    os.path.join("configs", "cifar10_resnet110.py"),
    os.path.join("configs", "digits.py"),
  ], out
  # --config=NAME loads the shipped file: the run is refused by validation (before TensorFlow),
  # not for a missing file.
  cmd = [bin_dir / "resnet-jax", "train", "--config=cifar10_resnet110", "--workdir=named"]
  proc = subprocess.run(
    [*cmd, "--config.learning_rate=-1"],
    cwd=work,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and last.startswith("error: config.learning_rate=-1"), proc.stderr
  assert not (work / "named").exists()
