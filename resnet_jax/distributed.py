"""JAX distributed runtime: started once, at process start; which process this is.

`initialize()` is called once at process start (``resnet_jax.runtime.start``, which the front door
calls), before anything touches a JAX device. It picks
one of three modes, in this order:

1. **explicit** -- arguments, or these environment variables (arguments win):

   ========================== ===============================================================
   RESNET_JAX_COORDINATOR      ``host:port`` of process 0's coordinator service (every process
                               gives the same value; process 0 listens on that port)
   RESNET_JAX_NUM_PROCESSES    total number of processes
   RESNET_JAX_PROCESS_ID       this process's id, ``0 .. num_processes-1``
   RESNET_JAX_LOCAL_DEVICE_IDS optional, comma separated, e.g. ``0`` or ``0,1``: restrict the
                               devices this process uses (one process per GPU)
   RESNET_JAX_INIT_TIMEOUT     optional, seconds to keep trying to reach the coordinator
   ========================== ===============================================================

   In every multi-process mode (also 2.), these tune how fast a dead process is noticed:

   ============================== ===========================================================
   RESNET_JAX_HEARTBEAT_TIMEOUT    seconds without a heartbeat after which the coordination
                                   service declares a process dead (default 60; JAX's is 100)
   RESNET_JAX_SHUTDOWN_TIMEOUT     seconds a finished process waits at exit for the others to
                                   finish too (default 300, JAX's)
   ============================== ===========================================================

   ``launch/local.sh`` sets these for N processes on one machine. ``num_processes=1`` with no
   coordinator means a plain single-process run.

2. **automatic** -- a cluster JAX detects by itself (`jax._src.clusters`): a SLURM job step with more
   than one task (``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``,
   ``SLURM_LOCALID`` all set: ``srun`` sets them; the coordinator is the step's first node, port
   derived from the job id or ``JAX_COORDINATOR_PORT``; one GPU per task via ``SLURM_LOCALID``),
   Open MPI (``OMPI_MCA_orte_hnp_uri``), or a Cloud TPU VM (detected by ``import jax``; the worker
   list comes from the VM metadata). We then call ``jax.distributed.initialize()`` with no
   addresses and let JAX fill them in.

3. **single** -- nothing set, no cluster: nothing is initialised.

``RESNET_JAX_DISTRIBUTED=off`` disables 2. (e.g. running a single-process job inside an ``srun``
step); ``=auto`` (default) leaves it on.

On CPU, processes exchange collectives with gloo over TCP: we set
``jax_cpu_collectives_implementation=gloo`` before initialising (unless
``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise). A process that cannot reach the coordinator
raises `DistributedInitError` (one line: address, process id, timeout, cause) after ``timeout_s``
seconds instead of hanging; the front door turns that into an exit with that message.

A process that never joins ends every process that waits for it with one line and exit status 2
after ``timeout_s`` (`resnet_jax.failure`). What a peer lost after start-up means is
`resnet_jax.faults`'s.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence

import jax

from resnet_jax import failure

ENV_COORDINATOR = "RESNET_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "RESNET_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RESNET_JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "RESNET_JAX_LOCAL_DEVICE_IDS"
ENV_INIT_TIMEOUT = "RESNET_JAX_INIT_TIMEOUT"
ENV_MODE = "RESNET_JAX_DISTRIBUTED"
ENV_HEARTBEAT_TIMEOUT = "RESNET_JAX_HEARTBEAT_TIMEOUT"
ENV_SHUTDOWN_TIMEOUT = "RESNET_JAX_SHUTDOWN_TIMEOUT"

DEFAULT_TIMEOUT_S = 300
# A dead TPU worker leaves the others blocked in ICI collectives until the coordination service
# misses its heartbeats. Heartbeats come from a C++ thread, so compiles, checkpoint writes and
# Python's GIL never delay them: one minute is ample, and cuts JAX's 100 s wait for a restart.
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
# Processes finish at different times (process 0 alone writes plots and summaries); a short
# shutdown barrier would turn a finished run into a failure. JAX's default.
DEFAULT_SHUTDOWN_TIMEOUT_S = 300
_JOIN_GRACE_S = 30  # JAX's own join deadline comes this much after ours

_SLURM_VARS = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)

log = logging.getLogger(__name__)


class DistributedInitError(RuntimeError):
  """The distributed runtime could not start (bad settings, or coordinator unreachable)."""


@dataclasses.dataclass(frozen=True)
class Runtime:
  """How this process was started. `mode`: 'single', 'explicit', or the detected cluster name."""

  mode: str
  coordinator_address: str | None = None
  num_processes: int = 1
  process_id: int = 0
  local_device_ids: tuple[int, ...] | None = None


_RUNTIME: Runtime | None = None


def _env_int(name: str) -> int | None:
  raw = os.environ.get(name, "").strip()
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError:
    raise DistributedInitError(f"{name}={raw!r} is not an integer") from None


def _parse_ids(raw: str | Sequence[int] | int | None) -> tuple[int, ...] | None:
  if raw is None or raw == "":
    return None
  if isinstance(raw, int):
    return (raw,)
  if isinstance(raw, str):
    try:
      return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
      raise DistributedInitError(
        f"{ENV_LOCAL_DEVICE_IDS}={raw!r}: expected comma separated integers"
      ) from None
  return tuple(int(x) for x in raw)


def detect_cluster() -> str | None:
  """Name of a multi-process cluster environment JAX will detect, or None.

  Mirrors the checks in `jax._src.clusters` (cheap environment reads only); a one-task SLURM step or
  one-process MPI run counts as no cluster, so single-process runs never start a coordinator.
  """
  if os.environ.get(ENV_MODE, "auto").strip().lower() in ("off", "0", "false", "no", "none"):
    return None
  if all(v in os.environ for v in _SLURM_VARS):
    try:
      if int(os.environ["SLURM_NTASKS"]) > 1:
        return "slurm"
    except ValueError:
      pass
  if "OMPI_MCA_orte_hnp_uri" in os.environ:
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "2") or 2) > 1:
      return "ompi"
  try:  # set by `import jax` when libtpu finds TPU chips on a Cloud TPU VM
    from jax._src import cloud_tpu_init

    if getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False):
      return "tpu"
  except ImportError:  # pragma: no cover - private module moved
    pass
  return None


def multi_process_requested() -> bool:
  """Whether this process is one of several (explicit settings or a detected cluster): their
  launcher, not this process, decides how many devices each one has."""
  return (_env_int(ENV_NUM_PROCESSES) or 1) > 1 or detect_cluster() is not None


def _resolve(coordinator_address, num_processes, process_id, local_device_ids) -> Runtime:
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  ids = _parse_ids(
    local_device_ids if local_device_ids is not None else os.environ.get(ENV_LOCAL_DEVICE_IDS)
  )
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if num_processes == 1 and coordinator_address is None:
      return Runtime("single", local_device_ids=ids)
    missing = [
      name
      for name, v in zip((ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID), explicit)
      if v is None
    ]
    if missing:
      raise DistributedInitError(
        "explicit multi-process run needs coordinator, num_processes and process_id; "
        f"missing: {', '.join(missing)}"
      )
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedInitError(
        f"process_id={process_id} must be in [0, num_processes={num_processes})"
      )
    if ":" not in coordinator_address:
      raise DistributedInitError(f"coordinator address {coordinator_address!r} must be host:port")
    return Runtime("explicit", coordinator_address, num_processes, process_id, ids)
  cluster = detect_cluster()
  if cluster is not None:
    return Runtime(cluster, local_device_ids=ids)
  return Runtime("single", local_device_ids=ids)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | str | None = None,
  timeout_s: int | None = None,
) -> Runtime:
  """Starts JAX's distributed runtime if this is a multi-process run; idempotent.

  Call before any JAX computation or device query. Returns the `Runtime` chosen (see module doc).
  Raises `DistributedInitError` with a one-line message when the settings are inconsistent or the
  coordinator cannot be reached within `timeout_s` seconds (default: ``RESNET_JAX_INIT_TIMEOUT`` or
  300).
  """
  global _RUNTIME
  if _RUNTIME is not None:
    return _RUNTIME
  if jax.distributed.is_initialized():  # someone (a notebook, a test) did it already
    _RUNTIME = Runtime(
      "external", num_processes=jax.process_count(), process_id=jax.process_index()
    )
    return _RUNTIME
  rt = _resolve(coordinator_address, num_processes, process_id, local_device_ids)
  if timeout_s is None:
    timeout_s = _env_int(ENV_INIT_TIMEOUT) or DEFAULT_TIMEOUT_S
  liveness = dict(  # read up front: a typo fails every run, not only multi-process ones
    heartbeat_timeout_seconds=_env_int(ENV_HEARTBEAT_TIMEOUT) or DEFAULT_HEARTBEAT_TIMEOUT_S,
    shutdown_timeout_seconds=_env_int(ENV_SHUTDOWN_TIMEOUT) or DEFAULT_SHUTDOWN_TIMEOUT_S,
  )
  if rt.mode == "single":
    if rt.local_device_ids is not None:
      log.warning("%s ignored in a single-process run", ENV_LOCAL_DEVICE_IDS)
    _RUNTIME = rt
    return rt
  if backend_started():
    raise DistributedInitError(
      f"{rt.mode} multi-process run: distributed.initialize() must run before any JAX "
      "computation or device query (call it first thing in main)"
    )
  _join(rt, timeout_s, liveness)
  if rt.mode != "explicit":  # what JAX detected; read without starting the backend
    rt = dataclasses.replace(rt, **_jax_detected())
  _RUNTIME = rt
  log.info("distributed runtime up: %s", rt)
  return rt


def _where(rt: Runtime) -> str:
  """Whom this process joins, as the messages name it."""
  if rt.mode == "explicit":
    return f"coordinator {rt.coordinator_address} as process {rt.process_id}/{rt.num_processes}"
  return f"the {rt.mode} cluster's coordinator"


def _join_arguments(rt: Runtime, liveness: dict) -> dict:
  """``jax.distributed.initialize``'s arguments for `rt`, those this jax version takes."""
  params = inspect.signature(jax.distributed.initialize).parameters
  ids = list(rt.local_device_ids) if rt.local_device_ids else None
  kwargs = dict(local_device_ids=ids)
  if rt.mode == "explicit":
    kwargs.update(
      coordinator_address=rt.coordinator_address,
      num_processes=rt.num_processes,
      process_id=rt.process_id,
    )
    if "cluster_detection_method" in params:  # what we were told, not what SLURM_* says
      kwargs["cluster_detection_method"] = "deactivate"
  kwargs.update({k: v for k, v in liveness.items() if k in params})
  return kwargs


def _join(rt: Runtime, timeout_s: int, liveness: dict) -> None:
  """Joins the coordinator of `rt` within `timeout_s`, or ends with one line (see module doc)."""
  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    # Only affects the CPU client; GPUs use NCCL and TPUs ICI regardless.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = _where(rt)
  kwargs = _join_arguments(rt, liveness)
  deadline = time.monotonic() + timeout_s
  probe = _coordinator_to_probe(rt)
  if probe is not None:
    # The C++ client aborts the whole process (LOG(FATAL), a stack trace) when it cannot register
    # in time. Waiting for the coordinator's port here first turns the common case -- process 0
    # never came up, wrong host/port, firewall -- into a clean one-line error.
    err = wait_for_port(probe, timeout_s)
    if err is not None:
      raise DistributedInitError(
        f"could not reach {where} within {timeout_s}s ({err}); check the address/port, that "
        "process 0 is running, and the firewall"
      )
  print(
    f"resnet_jax.distributed: joining {where} (mode {rt.mode}, up to {timeout_s}s)",
    file=sys.stderr,
    flush=True,
  )
  # A process that never arrives makes JAX's client abort with a C++ stack trace at its deadline
  # (its fatal-error callback cannot be replaced from Python in this jaxlib: the status argument
  # has no Python type). Our own deadline comes first and ends the process with one line.
  remaining = max(deadline - time.monotonic(), min(10, timeout_s), 1)
  if "initialization_timeout" in inspect.signature(jax.distributed.initialize).parameters:
    kwargs["initialization_timeout"] = int(remaining) + _JOIN_GRACE_S
  _initialize_before(remaining, kwargs, where, timeout_s)


def _initialize_before(remaining: float, kwargs: dict, where: str, timeout_s: int) -> None:
  """``jax.distributed.initialize(**kwargs)``, ending the process with one line if it has not
  returned after `remaining` seconds."""
  watchdog = threading.Timer(
    remaining,
    failure.exit_with_error,
    [
      f"not every process joined {where} within {timeout_s}s: start all processes with the "
      f"same coordinator and process count, or raise {ENV_INIT_TIMEOUT}"
    ],
  )
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # XlaRuntimeError, ValueError, RuntimeError from the C++ client
    cause = " ".join(str(e).split())
    if len(cause) > 300:
      cause = cause[:300] + "..."
    raise DistributedInitError(
      f"could not join {where} within {timeout_s}s ({type(e).__name__}: {cause}); "
      "check the address/port, that process 0 is running, and the firewall"
    ) from e
  finally:
    watchdog.cancel()


def backend_started() -> bool:
  """Whether JAX has started its backends (after which devices and this runtime are fixed)."""
  try:
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # pragma: no cover - private API moved: let JAX complain itself
    return False


def _coordinator_to_probe(rt: Runtime) -> str | None:
  """host:port a non-zero process should see listening before it registers, when known."""
  if rt.mode == "explicit":
    return rt.coordinator_address if rt.process_id != 0 else None
  if rt.mode == "slurm" and int(os.environ.get("SLURM_PROCID", "0")) != 0:
    try:
      from jax._src.clusters.slurm_cluster import SlurmCluster

      return SlurmCluster.get_coordinator_address(None, os.environ.get("JAX_COORDINATOR_PORT"))
    except Exception:  # pragma: no cover - private API changed: let JAX find it
      return None
  return None


def wait_for_port(address: str, timeout_s: float, interval_s: float = 0.5) -> str | None:
  """Retries a TCP connect to ``host:port`` until it succeeds (-> None) or `timeout_s` passes
  (-> the last error, as a short string)."""
  host, _, port = address.rpartition(":")
  host = host.strip("[]")  # [::1]:1234
  try:
    port_n = int(port)
  except ValueError:
    return f"bad port in {address!r}"
  deadline = time.monotonic() + timeout_s
  last = "timed out"
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return last
    try:
      with socket.create_connection((host, port_n), timeout=max(0.1, min(2.0, remaining))):
        return None
    except OSError as e:
      last = f"{type(e).__name__}: {e.strerror or e}"
    time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))


def _jax_detected() -> dict:
  try:
    from jax._src import distributed as _d

    st = _d.global_state
    return dict(
      coordinator_address=st.coordinator_address,
      num_processes=int(st.num_processes),
      process_id=int(st.process_id),
    )
  except Exception:  # pragma: no cover - private API moved
    return {}


def is_primary() -> bool:
  """True on process 0: the one that writes logs, TensorBoard, plots, summaries and results."""
  return jax.process_index() == 0


# A process may finish compiling minutes after another (eight compiles on two cores, or a host whose
# compilation cache missed): the barrier after compiling waits this long for the last one.
COMPILED_BARRIER_TIMEOUT_S = 1800


def meet_after_compiling(what: str) -> None:
  """Waits until every process has compiled ``what``, through the coordination service (no
  collective: the first collective's context set-up has a short deadline of its own, which a
  process that arrives minutes late misses). One process alone returns at once."""
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top

  logging.getLogger(__name__).info(
    "compiled %s; waiting for all %d processes to finish compiling", what, jax.process_count()
  )
  multihost.get_barrier_sync_fn()(
    key=f"resnet_jax_compiled_{what}", timeout_ms=COMPILED_BARRIER_TIMEOUT_S * 1000
  )
