"""resnet_jax.host (what the host is and what suits it) and the runtime calls that apply it: the CPU
split into one device per core, and glibc keeping freed memory for reuse.

What must happen before the JAX backend starts, or before TensorFlow starts its threads, is checked
in fresh interpreters.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resnet_jax import host

REPO = Path(__file__).resolve().parents[1]
_DISTRIBUTED_VARS = (
  "RESNET_JAX_COORDINATOR",
  "RESNET_JAX_NUM_PROCESSES",
  "RESNET_JAX_PROCESS_ID",
  "RESNET_JAX_LOCAL_DEVICE_IDS",
  "SLURM_JOB_ID",
  "OMPI_MCA_orte_hnp_uri",
)


def _child_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_VARS}
  env.update(
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    PYTHONUNBUFFERED="1",
  )
  env.update({k: str(v) for k, v in extra.items()})
  return env


# --- CPU split into one device per core ---------------------------------------------------------


@pytest.mark.parametrize(
  "requested, batches, cores, expected",
  [
    ("auto", [128], 2, 2),  # one device per core
    ("auto", [100], 8, 5),  # lowered until it divides the batch
    ("auto", [128, 96], 16, 16),
    ("auto", [7], 4, 1),  # a prime batch: no split
    ("3", [128], 2, 2),  # an explicit count is lowered the same way
    (1, [128], 2, 1),
  ],
)
def test_cpu_device_count(requested, batches, cores, expected):
  assert host.cpu_device_count(requested, batches, cores=cores) == expected


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_cpu_device_count_rejects_bad_values(bad):
  with pytest.raises(ValueError, match="--cpu_devices must be 'auto' or a positive integer"):
    host.cpu_device_count(bad, [128])


_SPLIT = textwrap.dedent("""
    import json, os, sys
    from resnet_jax import runtime
    n = runtime.split_cpu_into_devices(sys.argv[1], [8])
    import jax
    print("RESULT " + json.dumps(dict(returned=n, local=jax.local_device_count(),
                                      xla_flags=os.environ.get("XLA_FLAGS", ""))), flush=True)
""")


@pytest.mark.parametrize(
  "requested, xla_flags, returned, local",
  [
    ("2", None, 2, 2),  # split, single-threaded
    ("1", None, 1, 1),  # asked for one device
    ("2", "--xla_force_host_platform_device_count=3", 1, 3),  # the user's XLA_FLAGS win
  ],
)
def test_split_cpu_into_devices_before_backend_start(
  tmp_path, requested, xla_flags, returned, local
):
  script = tmp_path / "split.py"
  script.write_text(_SPLIT)
  env = _child_env()
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  proc = subprocess.run(
    [sys.executable, str(script), requested], env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert result["returned"] == returned and result["local"] == local
  assert ("--xla_cpu_multi_thread_eigen=false" in result["xla_flags"]) == (returned > 1)


# A block larger than glibc's largest mmap threshold (32 MiB), freed and allocated again, the way
# XLA:CPU allocates each step's temporaries; prints the page faults of the second round.
_REALLOC_PROBE = """
import resource
from resnet_jax import runtime
applied = runtime.reuse_freed_host_memory()
block = bytearray(256 << 20); del block  # first round: the heap grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = bytearray(256 << 20); del block  # second round: faults only if the block was unmapped
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _realloc_probe(extra_env=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "JAX_PLATFORMS"))}
  env.update(extra_env or {})
  out = subprocess.run(
    [sys.executable, "-c", _REALLOC_PROBE], env=env, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  applied, faults = out.stdout.split()
  return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_host_memory_is_reused_instead_of_faulted_in_again():
  applied, faults = _realloc_probe()
  assert applied
  # 256 MiB is 65,536 pages: without the setting every one of them faults in again.
  assert faults < 1000, faults
  applied, faults = _realloc_probe({"MALLOC_ARENA_MAX": "4"})  # the user's own setting wins
  assert not applied and faults > 60000, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_host_memory_is_left_alone_on_accelerator_hosts():
  applied, faults = _realloc_probe({"JAX_PLATFORMS": "tpu"})
  assert not applied and faults > 60000, faults
