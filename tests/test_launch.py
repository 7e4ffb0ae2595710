"""launch/: --dry-run output is well-formed and quotes arguments (parsed back with shlex.split);
the real paths run the same commands (checked against fake gcloud/srun on PATH); local.sh waits for
all processes, stops them all when one fails, and joins a real 2-process JAX run."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
NASTY = ['--config.note=it\'s a "test" $(touch /tmp/pwned-launch) `id`; *', "--workdir=a b"]
SCRIPTS = ["local.sh", "tpu_vm.sh", "slurm.sbatch"]


def _run(args, env=None, timeout=60, **kw):
  return subprocess.run(
    ["bash", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, **kw
  )


def _commands(stdout):
  return [shlex.split(l) for l in stdout.splitlines() if l.strip() and not l.startswith("#")]


@pytest.fixture
def fake_bin(tmp_path):
  """PATH with gcloud/srun/sbatch that only record their argv (one JSON list per line)."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  calls = tmp_path / "calls.jsonl"
  for tool in ("gcloud", "srun", "sbatch"):
    p = bindir / tool
    p.write_text(
      f"#!{sys.executable}\nimport json, sys\n"
      f"open({str(calls)!r}, 'a').write(json.dumps([{tool!r}, *sys.argv[1:]]) + '\\n')\n"
    )
    p.chmod(0o755)
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("SLURM_", "TPU_", "RESNET_JAX_")) and k != "XLA_FLAGS"
  }
  env.update(PATH=f"{bindir}{os.pathsep}{env['PATH']}", TMPDIR=str(tmp_path))

  def recorded():
    return [json.loads(l) for l in calls.read_text().splitlines()] if calls.exists() else []

  return env, recorded


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_bash_with_help(script):
  text = (LAUNCH / script).read_text()
  assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
  assert "eval " not in text.replace("# ", "")
  assert _run(["-n", LAUNCH / script]).returncode == 0
  helped = _run([LAUNCH / script, "--help"])
  assert helped.returncode == 0 and "--dry-run" in helped.stdout


# --- local.sh --------------------------------------------------------------------------------------------


def test_local_dry_run(fake_bin):
  env, _ = fake_bin
  r = _run(
    [
      LAUNCH / "local.sh",
      "--dry-run",
      "-n",
      "3",
      "--port=4567",
      "--devices-per-process=2",
      "--python=/opt/py thon",
      "--config=configs/digits.py",
      *NASTY,
    ],
    env=env,
  )
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  assert len(cmds) == 3
  for i, argv in enumerate(cmds):
    assert argv == [
      "env",
      "RESNET_JAX_COORDINATOR=127.0.0.1:4567",
      "RESNET_JAX_NUM_PROCESSES=3",
      f"RESNET_JAX_PROCESS_ID={i}",
      "RESNET_JAX_INIT_TIMEOUT=60",
      "JAX_PLATFORMS=cpu",
      "XLA_FLAGS=--xla_force_host_platform_device_count=2",
      "/opt/py thon",
      "-m",
      "resnet_jax.main",
      "--config=configs/digits.py",
      *NASTY,
    ]
  assert not Path("/tmp/pwned-launch").exists()
  bad = _run([LAUNCH / "local.sh", "--dry-run", "-n", "two"], env=env)
  assert bad.returncode == 2 and "integer" in bad.stderr


_FAKE_MODULE = textwrap.dedent("""
    import json, os, sys, time
    pid = int(os.environ["RESNET_JAX_PROCESS_ID"])
    with open(os.path.join(os.environ["OUT"], f"p{pid}.json"), "w") as f:
      json.dump({"os_pid": os.getpid(), "argv": sys.argv[1:],
                 "env": {k: v for k, v in os.environ.items() if k.startswith("RESNET_JAX_")}}, f)
    if pid == int(os.environ.get("FAIL_ID", "-1")):
      time.sleep(0.3)
      sys.exit(7)
    time.sleep(float(os.environ.get("SLEEP", "0")))
""")


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # a zombie is dead enough, but local.sh reaps its children
  return True


def test_local_runs_all_and_stops_all_when_one_fails(tmp_path, fake_bin):
  env, _ = fake_bin
  (tmp_path / "fakemod.py").write_text(_FAKE_MODULE)
  env = dict(env, OUT=str(tmp_path), PYTHONPATH=str(tmp_path))
  ok = _run(
    [
      LAUNCH / "local.sh",
      "-n",
      "3",
      "--module=fakemod",
      f"--python={sys.executable}",
      "--",
      *NASTY,
    ],
    env=env,
  )
  assert ok.returncode == 0, ok.stderr
  seen = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(3)]
  port = seen[0]["env"]["RESNET_JAX_COORDINATOR"].rsplit(":", 1)[1]
  for i, s in enumerate(seen):
    assert s["argv"] == NASTY
    assert s["env"] == {
      "RESNET_JAX_COORDINATOR": f"127.0.0.1:{port}",
      "RESNET_JAX_NUM_PROCESSES": "3",
      "RESNET_JAX_PROCESS_ID": str(i),
      "RESNET_JAX_INIT_TIMEOUT": "60",
    }

  t = time.monotonic()
  env.update(FAIL_ID="1", SLEEP="120")
  failed = _run(
    [
      LAUNCH / "local.sh",
      "-n",
      "3",
      "--module=fakemod",
      f"--python={sys.executable}",
      "--grace=2",
      f"--log-dir={tmp_path / 'logs'}",
    ],
    env=env,
    timeout=60,
  )
  assert failed.returncode == 7, failed.stderr
  assert "process 1" in failed.stderr and "stopping the others" in failed.stderr
  assert time.monotonic() - t < 30
  for i in range(3):
    assert not _alive(json.loads((tmp_path / f"p{i}.json").read_text())["os_pid"])
  assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
    "process_0.log",
    "process_1.log",
    "process_2.log",
  ]


_PSUM = textwrap.dedent("""
    import json, os
    from resnet_jax import distributed
    distributed.initialize()
    import jax, numpy as np
    x = np.ones(jax.local_device_count(), np.float32) * (jax.process_index() + 1)
    total = jax.pmap(lambda v: jax.lax.psum(v, "i"), axis_name="i")(x)
    with open(os.path.join(os.environ["OUT"], f"psum{jax.process_index()}.json"), "w") as f:
      json.dump([jax.process_count(), jax.device_count(), np.asarray(total).tolist()], f)
""")


def test_local_two_process_jax_job(tmp_path):
  """local.sh wires resnet_jax.distributed: 2 processes x 2 CPU devices, one psum over all 4."""
  (tmp_path / "psum_job.py").write_text(_PSUM)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RESNET_JAX_"))}
  env.update(OUT=str(tmp_path), PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
  r = _run(
    [
      LAUNCH / "local.sh",
      "-n",
      "2",
      "--devices-per-process=2",
      "--module=psum_job",
      f"--python={sys.executable}",
      "--init-timeout=60",
      "--grace=2",
    ],
    env=env,
    timeout=180,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  for i in range(2):
    assert json.loads((tmp_path / f"psum{i}.json").read_text()) == [2, 4, [6.0, 6.0]]


# --- tpu_vm.sh -------------------------------------------------------------------------------------------


def _tpu_args(*extra):
  return [
    "--name=my tpu",
    "--zone=us-central2-b",
    "--project=p",
    "--create",
    "--accelerator-type=v4-32",
    "--config=configs/imagenet.py",
    *extra,
    NASTY[0],
  ]


def test_tpu_vm_dry_run_quotes_through_ssh(fake_bin):
  env, recorded = fake_bin
  r = _run([LAUNCH / "tpu_vm.sh", "--dry-run", *_tpu_args("--workdir=gs://b/r $(x)")], env=env)
  assert r.returncode == 0, r.stderr
  assert recorded() == []  # nothing ran
  create, archive, scp, ssh = _commands(r.stdout)
  where = ["--zone=us-central2-b", "--project=p"]
  assert create == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "my tpu",
    *where,
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
  ]
  assert archive[:3] == ["git", "-C", str(REPO)] and archive[3:6] == [
    "archive",
    "--format=tar.gz",
    "-o",
  ]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[5] == archive[6]
  assert scp[-3:] == [*where, "--worker=all"]
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my tpu"]
  assert ssh[6:9] == [*where, "--worker=all"]
  assert ssh[9].startswith("--command=") and len(ssh) == 10
  remote = shlex.split(ssh[9][len("--command=") :])  # what the workers' shell will see
  i = remote.index("resnet_jax.main")
  assert remote[i - 2 :] == [
    ".venv/bin/python",
    "-m",
    "resnet_jax.main",
    "--config=configs/imagenet.py",
    "--workdir=gs://b/r $(x)",
    NASTY[0],
  ]
  assert "pip" in remote and "--worker=all" not in remote


def test_tpu_vm_real_run_matches_dry_run(fake_bin):
  env, recorded = fake_bin
  env = dict(env, TPU_NAME="env-tpu", TPU_ZONE="europe-west4-a")
  args = ["--config=c.py", "--workdir=gs://b/x y", "--no-setup", "--", "--config.seed=3"]
  dry = _run([LAUNCH / "tpu_vm.sh", "--dry-run", *args], env=env)
  real = _run([LAUNCH / "tpu_vm.sh", *args], env=env)
  assert dry.returncode == real.returncode == 0, real.stderr
  gcloud_dry = [c for c in _commands(dry.stdout) if c[0] == "gcloud"]
  assert recorded() == gcloud_dry and len(gcloud_dry) == 2  # scp + ssh, no create
  assert gcloud_dry[1][5:8] == ["env-tpu", "--zone=europe-west4-a", "--worker=all"]
  remote = shlex.split(gcloud_dry[1][-1][len("--command=") :])
  assert "pip" not in remote and remote[-3:] == [
    "--config=c.py",
    "--workdir=gs://b/x y",
    "--config.seed=3",
  ]
  assert Path(gcloud_dry[0][5]).is_file()  # the archive was really built


def test_tpu_vm_requires_its_arguments(fake_bin):
  env, recorded = fake_bin
  r = _run(
    [LAUNCH / "tpu_vm.sh", "--dry-run", "--zone=z", "--config=c.py", "--workdir=gs://b"], env=env
  )
  assert r.returncode == 2 and "--name" in r.stderr
  r = _run([LAUNCH / "tpu_vm.sh", "--name=n", "--zone=z", "--config=c.py"], env=env)
  assert r.returncode == 2 and "--workdir is required" in r.stderr
  assert recorded() == []


def test_sweep_emitted_tpu_commands_run_as_is(tmp_path, fake_bin):
  """`resnet-jax sweep --emit=tpu` lines are runnable tpu_vm.sh commands (here with --dry-run)."""
  env, _ = fake_bin
  from resnet_jax import sweep

  path = tmp_path / "s.py"
  path.write_text(
    "from resnet_jax.sweep import product\nCONFIG = 'configs/cifar10.py'\n"
    "def get_sweep():\n  return product(model=['plain20', 'resnet20'])\n"
  )
  cmds = sweep.emit_commands(
    sweep.load_sweep(path),
    "gs://b/sweep",
    "tpu",
    launcher_args=["--dry-run", "--name=t", "--zone=z", "--no-copy"],
  )
  for cmd, model in zip(cmds, ["plain20", "resnet20"]):
    r = subprocess.run(["bash", *cmd], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    (ssh,) = _commands(r.stdout)
    remote = shlex.split(ssh[-1][len("--command=") :])
    assert remote[-3:] == [
      "--config=configs/cifar10.py",
      f"--workdir=gs://b/sweep/model={model}",
      f"--config.model={model}",
    ]


# --- slurm.sbatch ----------------------------------------------------------------------------------------


def test_slurm_dry_run_and_real_run_agree(fake_bin):
  env, recorded = fake_bin
  args = ["--python=/venv/bin/py thon", "--config=configs/imagenet.py", *NASTY]
  dry = _run([LAUNCH / "slurm.sbatch", "--dry-run", *args], env=env)
  assert dry.returncode == 0, dry.stderr
  (cmd,) = _commands(dry.stdout)
  j = cmd.index("srun")
  assert cmd[0] == "env" and "RESNET_JAX_DISTRIBUTED=auto" in cmd[1:j]
  assert cmd[j:] == [
    "srun",
    "--kill-on-bad-exit=1",
    "--cpu-bind=none",
    "/venv/bin/py thon",
    "-m",
    "resnet_jax.main",
    "--config=configs/imagenet.py",
    *NASTY,
  ]
  outside = _run([LAUNCH / "slurm.sbatch", *args], env=env)
  assert outside.returncode == 2 and "sbatch" in outside.stderr and recorded() == []
  # inside a job: it runs exactly the srun it printed (fake srun records it)
  inside = _run([LAUNCH / "slurm.sbatch", *args], env=dict(env, SLURM_JOB_ID="42"), cwd=REPO)
  assert inside.returncode == 0, inside.stderr
  assert recorded() == [cmd[j:]]


def test_slurm_per_node(fake_bin):
  env, _ = fake_bin
  r = _run(
    [LAUNCH / "slurm.sbatch", "--dry-run", "--per-node", "--", "--config.seed=1"],
    env=dict(env, SLURM_GPUS_ON_NODE="4", JAX_COORDINATOR_PORT="9999"),
  )
  (cmd,) = _commands(r.stdout)
  assert "RESNET_JAX_LOCAL_DEVICE_IDS=0,1,2,3" in cmd and "JAX_COORDINATOR_PORT=9999" in cmd
  assert "--ntasks-per-node=1" in cmd and cmd[-1] == "--config.seed=1"
