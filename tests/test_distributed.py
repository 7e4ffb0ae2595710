"""resnet_jax.distributed: mode selection, a clean bounded failure, and a real 2-process gloo run.

Multi-process tests start fresh interpreters (the runtime must be initialised before JAX touches a
device, and only once per process) on 127.0.0.1, bounded by timeouts, and kill what they started.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import free_port

from resnet_jax import distributed

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[1]
_ENV_VARS = (
  distributed.ENV_COORDINATOR,
  distributed.ENV_NUM_PROCESSES,
  distributed.ENV_PROCESS_ID,
  distributed.ENV_LOCAL_DEVICE_IDS,
  distributed.ENV_INIT_TIMEOUT,
  distributed.ENV_MODE,
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
  "OMPI_MCA_orte_hnp_uri",
  "OMPI_COMM_WORLD_SIZE",
  "JAX_COORDINATOR_ADDRESS",
)


@pytest.fixture
def clean_env(monkeypatch):
  for var in _ENV_VARS:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, "_RUNTIME", None)
  return monkeypatch


def _child_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
  env.update(
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    PYTHONUNBUFFERED="1",
  )
  env.update({k: str(v) for k, v in extra.items()})
  return env


# --- mode selection (no runtime started) -------------------------------------------------------


def test_nothing_set_is_single_process(clean_env):
  rt = distributed.initialize()
  assert rt.mode == "single" and rt.num_processes == 1
  assert distributed.initialize() is rt  # idempotent


def test_one_process_is_single(clean_env):
  clean_env.setenv(distributed.ENV_NUM_PROCESSES, "1")
  assert distributed.initialize().mode == "single"


def test_explicit_env_is_parsed(clean_env):
  clean_env.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:1234")
  clean_env.setenv(distributed.ENV_NUM_PROCESSES, "4")
  clean_env.setenv(distributed.ENV_PROCESS_ID, "3")
  clean_env.setenv(distributed.ENV_LOCAL_DEVICE_IDS, "0,1")
  rt = distributed._resolve(None, None, None, None)
  assert rt == distributed.Runtime("explicit", "10.0.0.1:1234", 4, 3, (0, 1))
  # arguments win over the environment
  assert distributed._resolve("h:1", 2, 0, [5]) == distributed.Runtime(
    "explicit", "h:1", 2, 0, (5,)
  )


@pytest.mark.parametrize(
  "args, match",
  [
    (dict(coordinator_address="h:1", num_processes=2), "missing: RESNET_JAX_PROCESS_ID"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "must be in"),
    (dict(coordinator_address="nohostport", num_processes=2, process_id=1), "host:port"),
  ],
)
def test_inconsistent_settings_fail_clearly(clean_env, args, match):
  with pytest.raises(distributed.DistributedInitError, match=match):
    distributed.initialize(**args)


def test_bad_env_integer(clean_env):
  clean_env.setenv(distributed.ENV_PROCESS_ID, "one")
  with pytest.raises(distributed.DistributedInitError, match="not an integer"):
    distributed.initialize()


def test_cluster_detection(clean_env):
  slurm = dict(
    SLURM_JOB_ID="77",
    SLURM_STEP_NODELIST="node[003-004]",
    SLURM_NTASKS="8",
    SLURM_PROCID="5",
    SLURM_LOCALID="1",
  )
  for k, v in slurm.items():
    clean_env.setenv(k, v)
  assert distributed.detect_cluster() == "slurm"
  assert distributed._resolve(None, None, None, None).mode == "slurm"
  rt = distributed.Runtime("slurm")
  # non-zero SLURM tasks wait for JAX's coordinator (first node, port derived from the job id)
  assert distributed._coordinator_to_probe(rt) == f"node003:{77 % 4096 + 65535 - 4096 + 1}"
  clean_env.setenv(distributed.ENV_MODE, "off")
  assert distributed.detect_cluster() is None
  clean_env.setenv(distributed.ENV_MODE, "auto")
  clean_env.setenv("SLURM_NTASKS", "1")  # a one-task step is a single-process run
  assert distributed.detect_cluster() is None
  # explicit settings win over a detected cluster
  assert distributed._resolve("h:1", 2, 1, None).mode == "explicit"


def test_initialize_after_jax_started_fails_clearly(clean_env):
  import jax

  jax.devices()  # the backend is up (as after any computation)
  with pytest.raises(distributed.DistributedInitError, match="must run before any JAX"):
    distributed.initialize(coordinator_address="127.0.0.1:1", num_processes=2, process_id=0)


def test_wait_for_port():
  with socket.socket() as srv:
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    assert distributed.wait_for_port(f"127.0.0.1:{srv.getsockname()[1]}", 2) is None
  t = time.monotonic()
  err = distributed.wait_for_port(f"127.0.0.1:{free_port()}", 0.6, interval_s=0.1)
  assert err and "refused" in err.lower() and time.monotonic() - t < 3


def test_a_single_process_is_the_primary():
  assert distributed.is_primary()


# --- real processes -------------------------------------------------------------------------------

_UNREACHABLE = textwrap.dedent("""
    import sys
    from resnet_jax import distributed
    try:
      distributed.initialize()
    except distributed.DistributedInitError as e:   # what main does
      sys.exit(f"error: {e}")
    print("initialised?!")
""")


def test_unreachable_coordinator_fails_clearly_within_bound(tmp_path):
  script = tmp_path / "join.py"
  script.write_text(_UNREACHABLE)
  port = free_port()  # nobody listens here
  env = _child_env(
    RESNET_JAX_COORDINATOR=f"127.0.0.1:{port}",
    RESNET_JAX_NUM_PROCESSES=2,
    RESNET_JAX_PROCESS_ID=1,
    RESNET_JAX_INIT_TIMEOUT=5,
  )
  t = time.monotonic()
  proc = subprocess.run(
    [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
  )
  elapsed = time.monotonic() - t
  assert proc.returncode == 1, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr
  assert f"127.0.0.1:{port}" in lines[0] and "process 1/2" in lines[0] and "within 5s" in lines[0]
  assert "initialised" not in proc.stdout
  assert 5 <= elapsed < 30, elapsed


_PSUM = textwrap.dedent("""
    import json
    from resnet_jax import distributed
    rt = distributed.initialize()
    import jax
    import numpy as np
    x = np.arange(jax.local_device_count(), dtype=np.float32) + 10 * jax.process_index()
    total = jax.pmap(lambda v: jax.lax.psum(v, "i"), axis_name="i")(x)
    index = jax.pmap(lambda v: jax.lax.axis_index("i"), axis_name="i")(x)
    print("RESULT " + json.dumps(dict(
        mode=rt.mode, process=jax.process_index(), count=jax.process_count(),
        local=jax.local_device_count(), devices=jax.device_count(), primary=distributed.is_primary(),
        psum=np.asarray(total).tolist(), index=np.asarray(index).tolist(),
        platform=jax.local_devices()[0].platform)), flush=True)
""")


def test_two_processes_gloo_psum(tmp_path):
  """2 processes x 2 CPU devices on 127.0.0.1: pmap's psum spans all 4 global devices."""
  script = tmp_path / "psum.py"
  script.write_text(_PSUM)
  port = free_port()
  procs = []
  try:
    for pid in range(2):
      env = _child_env(
        RESNET_JAX_COORDINATOR=f"127.0.0.1:{port}",
        RESNET_JAX_NUM_PROCESSES=2,
        RESNET_JAX_PROCESS_ID=pid,
        RESNET_JAX_INIT_TIMEOUT=60,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
      )
      procs.append(
        subprocess.Popen(
          [sys.executable, str(script)],
          env=env,
          text=True,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          start_new_session=True,
        )
      )
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  results = []
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out
    results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:]))
  for pid, r in enumerate(results):
    assert r["mode"] == "explicit"
    assert (r["process"], r["count"], r["local"], r["devices"]) == (pid, 2, 2, 4)
    assert r["primary"] == (pid == 0)
    assert r["psum"] == [0 + 1 + 10 + 11] * 2
    assert r["index"] == [2 * pid, 2 * pid + 1]
    assert r["platform"] == "cpu"


def test_two_processes_found_through_slurm_variables(tmp_path):
  """The automatic path: srun's SLURM_* variables only (faked on 127.0.0.1), no RESNET_JAX_*."""
  script = tmp_path / "psum.py"
  script.write_text(_PSUM)
  port = free_port()
  procs = []
  try:
    for pid in range(2):
      env = _child_env(
        SLURM_JOB_ID=4242,
        SLURM_STEP_NODELIST="127.0.0.1",
        SLURM_NTASKS=2,
        SLURM_PROCID=pid,
        SLURM_LOCALID=pid,
        JAX_COORDINATOR_PORT=port,
        RESNET_JAX_INIT_TIMEOUT=60,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
      )
      procs.append(
        subprocess.Popen(
          [sys.executable, str(script)],
          env=env,
          text=True,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          start_new_session=True,
        )
      )
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  for pid, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, out
    r = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
    assert r["mode"] == "slurm" and (r["process"], r["count"], r["devices"]) == (pid, 2, 4)
    assert r["psum"] == [22.0, 22.0]
