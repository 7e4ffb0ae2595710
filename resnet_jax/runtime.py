"""Process set-up, done once by the front door (``resnet_jax.main``) and by the tests.

Importing any module of the package changes nothing global. Everything a process needs before it
trains -- environment, log filters, quieting TensorFlow, the compile cache, the CPU device split,
the allocator setting, ``jax.distributed.initialize`` -- is an explicit call made here:

  ``setup(verbose)``  every command, first, before anything heavy loads: the environment the
                      libraries read when they load, log filters, the unraisable-exception hook;
  ``start(...)``      a command that computes, before it imports the pipeline or touches a device:
                      the allocator setting, TensorFlow imported quietly, the compile cache, the CPU
                      device split and ``jax.distributed.initialize``, in the order they must come.

Each step is also a function of its own (``import_tensorflow``, ``split_cpu_into_devices``, ...)
for a process that needs only that step. The one way a command fails is `resnet_jax.failure`'s.
"""

from __future__ import annotations

import gc
import importlib.resources
import importlib.resources.abc  # noqa: F401  (tfds reads importlib_resources.abc)
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence

from resnet_jax import host

_DONE = {"setup": False, "collection_paused": False}

# --- every command: environment, log filters, hooks -------------------------------------------


def setup(verbose: bool = False) -> None:
  """Process-wide set-up for any command; cheap (loads neither TensorFlow nor JAX); idempotent.

  ``verbose`` (``--verbosity=1``) lets TensorFlow's C++ INFO lines and every library's INFO records
  through. Must come before TensorFlow, JAX or etils load: they read the environment it sets then.
  """
  configure_environment(verbose)
  if _DONE["setup"]:
    return
  _DONE["setup"] = True
  show_only_our_info()
  shorten_orbax_errors()
  drop_abandoned_read_callbacks()
  provide_importlib_resources()


def configure_environment(verbose: bool = False) -> None:
  """Environment the libraries read once, when they load; a user's own setting always wins.

  ``TF_CPP_MIN_LOG_LEVEL=1``: TensorFlow (tf.data only) prints start-up banners at INFO; its
  warnings and errors stay (``0`` with ``verbose``). ``EPATH_USE_TF=false``: buckets are reached
  through fsspec's gcsfs, one client configured the fsspec way, not TensorFlow's file system (etils
  caches the choice at the first bucket path and has no other way to make it).
  ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads (PyTorch's in a comparison, oneDNN's where a
  benchmark asks for a team) sleep while they wait instead of spinning on cores XLA's devices use.
  """
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  if "tf_log_level_is_ours" not in _DONE:
    _DONE["tf_log_level_is_ours"] = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
  if _DONE["tf_log_level_is_ours"]:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "1"
  os.environ.setdefault("EPATH_USE_TF", "false")


class _OnlyOurInfo(logging.Filter):
  """Below WARNING, only our own records reach the run log: tfds ("Load dataset info", reader,
  logging_logger), JAX's backend probing and Orbax's per-save chatter log INFO through absl or
  their named Python loggers into the same handler. --verbosity=1 (DEBUG) lets them all through;
  warnings and errors always show."""

  _OURS = tuple(
    {os.path.dirname(f(__file__)) + os.sep for f in (os.path.abspath, os.path.realpath)}
  )

  def filter(self, record):
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

    return (
      record.levelno >= logging.WARNING
      or record.pathname.startswith(self._OURS)
      or absl_logging.get_verbosity() > absl_logging.INFO
    )


# Orbax warns that a read-only manager is read-only; `eval` opens checkpoints that way on purpose.
_EXPECTED_ORBAX_WARNINGS = (
  "CheckpointManagerOptions.read_only=True",
  "Given directory is read only",
)


class _OneLineOrbaxErrors(logging.Filter):
  """Drops the tracebacks Orbax logs when a background save thread fails: the same error is raised
  again in the main thread, where it becomes one `CheckpointWriteError` line; hundreds of traceback
  lines before it only bury that line. Also drops Orbax's notices that a read-only manager is
  read-only."""

  def filter(self, record):
    if "/orbax/" in record.pathname and str(record.msg).startswith(_EXPECTED_ORBAX_WARNINGS):
      return False
    if "/orbax/" in record.pathname and record.exc_info:
      record.exc_info, record.exc_text = None, None
      record.msg, record.args = str(record.getMessage()).splitlines()[0][:300], ()
    return True


def show_only_our_info() -> None:
  """Adds `_OnlyOurInfo` to absl's handler (the run log); idempotent."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OnlyOurInfo) for f in handler.filters):
    handler.addFilter(_OnlyOurInfo())


def shorten_orbax_errors() -> None:
  """Adds `_OneLineOrbaxErrors` to the logger Orbax logs through (absl's); idempotent."""
  orbax_log = logging.getLogger("absl")
  if not any(isinstance(f, _OneLineOrbaxErrors) for f in orbax_log.filters):
    orbax_log.addFilter(_OneLineOrbaxErrors())


def _is_abandoned_read_callback(unraisable) -> bool:
  """A TensorStore completion callback that found its asyncio event loop already closed."""
  if not (
    isinstance(unraisable.exc_value, RuntimeError)
    and str(unraisable.exc_value) == "Event loop is closed"
  ):
    return False
  tb, functions = unraisable.exc_traceback, set()
  while tb is not None:
    functions.add(tb.tb_frame.f_code.co_name)
    tb = tb.tb_next
  return "call_soon_threadsafe" in functions


def drop_abandoned_read_callbacks() -> None:
  """Drops the late results of a checkpoint read that already failed (idempotent).

  Orbax reads a checkpoint's arrays as one ``asyncio.gather`` of TensorStore operations on an event
  loop of its own. When one fails (a corrupt file), the error propagates and Orbax closes that loop
  while the sibling operations are still in flight in TensorStore's threads. As each completes,
  TensorStore hands its result to the closed loop, which raises ``RuntimeError('Event loop is
  closed')``, and reports it through ``sys.unraisablehook``: a traceback on stderr whenever that
  happens -- before, within or after the one error line, depending only on how loaded the machine
  is. Those results belong to a read that has already failed and been reported, so they are
  dropped; every other unraisable exception still reaches the previous hook. Installed before any
  read, not after one fails: a completion can land between Orbax closing its loop and a handler.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_drops_abandoned_reads", False):
    return

  def hook(unraisable):
    if not _is_abandoned_read_callback(unraisable):
      previous(unraisable)

  hook._drops_abandoned_reads = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def provide_importlib_resources() -> None:
  """Lets tfds prepare datasets: tfds 4.9.10 imports ``importlib_resources`` lazily (in
  ``DatasetBuilder.code_path``) but declares it only for Python < 3.9; without it every
  ``download_and_prepare()`` of its own builders fails. The stdlib module has the same API."""
  if "importlib_resources" in sys.modules or importlib.util.find_spec("importlib_resources"):
    return
  sys.modules["importlib_resources"] = importlib.resources


# --- a command that computes: allocator, TensorFlow, compile cache, devices ---------------------


def start(
  *,
  cpu_devices: str | int = "1",
  batch_sizes: Sequence[int] = (),
  compilation_cache: str | None = None,
  distributed: bool = False,
) -> int:
  """Readies this process to compute; returns the number of CPU devices it was split into (1: none).

  In the order the steps must come: the allocator setting (before TensorFlow starts its threads),
  TensorFlow imported quietly, the persistent compile cache (``compilation_cache``, unless
  ``JAX_COMPILATION_CACHE_DIR`` is set), the CPU split into ``cpu_devices`` devices (``"auto"``: one
  per core, see `host.cpu_split`; before the JAX backend starts) and, with ``distributed``,
  ``jax.distributed.initialize`` (`resnet_jax.distributed.initialize`; raises its
  `DistributedInitError`).
  """
  setup()
  reuse_freed_host_memory()
  import_tensorflow()
  if distributed:
    from resnet_jax import distributed as distributed_lib  # pylint: disable=g-import-not-at-top

    if not compilation_cache and distributed_lib.multi_process_requested():
      # The loop compiles the train step ahead of its first call, then all processes meet: the
      # call finds the executable in this cache instead of compiling again (train.loop).
      compilation_cache = _temporary_folder("resnet_jax_xla_")
  if compilation_cache:
    use_compilation_cache(compilation_cache)
  split = split_cpu_into_devices(cpu_devices, batch_sizes)
  if distributed:
    distributed_lib.initialize()
  return split


def _temporary_folder(prefix: str) -> str:
  """A folder removed when the process exits."""
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  folder = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  return folder


def reuse_freed_host_memory() -> bool:
  """Applies `host.malloc_settings` (glibc keeps freed memory for reuse); True if it was set.

  Must run before TensorFlow starts its threads: a thread keeps the arena it first allocated from,
  and a block this size in any arena but the main one is always mmapped.
  """
  settings = host.malloc_settings()
  if not settings:
    return False
  import ctypes  # pylint: disable=g-import-not-at-top

  try:
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
  except (OSError, AttributeError):  # no mallopt in this process's C library
    return False


def use_compilation_cache(directory: str) -> None:
  """JAX's persistent compile cache in ``directory``, so a restarted or resumed run skips
  recompiling; ``JAX_COMPILATION_CACHE_DIR``, when set, wins."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", directory)


def split_cpu_into_devices(requested: str | int = "auto", batch_sizes: Sequence[int] = ()) -> int:
  """On CPU, one single-threaded XLA device per core (see `host.cpu_split`); returns the count.

  Must run before the JAX backend starts (afterwards it does nothing and returns 1). Multi-process
  runs are left to their launcher. Has no effect on GPU or TPU backends.
  """
  from resnet_jax import distributed  # pylint: disable=g-import-not-at-top

  n = host.cpu_split(requested, batch_sizes, launcher_decides=distributed.multi_process_requested())
  if n <= 1 or distributed.backend_started():
    return 1
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_num_cpu_devices", n)
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} {host.SINGLE_THREADED_FLAG}".strip()
  return n


# --- TensorFlow, imported quietly -------------------------------------------------------------

# What TensorFlow's C++ core prints while it loads, before it has read TF_CPP_MIN_LOG_LEVEL: absl's
# "before absl::InitializeLog()" banner (once per shared library holding a copy of absl) and INFO
# lines such as the oneDNN and CPU-instruction notices, with the latter's continuation line.
_TF_LOAD_NOTICE = re.compile(
  r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
  r"|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
  r"|To enable the following instructions: )"
)

# TensorFlow imports Keras while it loads, only so that Keras optimizers register for SavedModels
# (``importlib.import_module("keras.src.optimizers")`` inside a ``try``). Nothing of ours uses Keras,
# and that import is seconds of every process start, so it is made to fail fast; ``tf.keras``
# still loads Keras on first use.
_KERAS_EAGER_IMPORT = "keras.src.optimizers"


def import_tensorflow():
  """``import tensorflow`` without its load-time notices or its eager Keras import; returns it.

  TF 2.2x logs through absl's C++ logging, which writes everything to stderr until
  ``absl::InitializeLog()`` -- so ``TF_CPP_MIN_LOG_LEVEL >= 1`` (INFO off) does not hide its
  load-time INFO notices. They are read off file descriptor 2 during the import and dropped;
  warnings, errors and anything else written meanwhile are passed on unchanged. Does nothing more
  once TensorFlow is loaded, but end a `pause_collection`.
  """
  try:
    return _import_tensorflow_quietly()
  finally:
    resume_collection()  # TensorFlow and JAX (which it imports) are in


def _import_tensorflow_quietly():
  if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
    return _import_tensorflow_without_keras()
  sys.stderr.flush()
  saved_stderr = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      tensorflow = _import_tensorflow_without_keras()
    finally:
      sys.stderr.flush()
      os.dup2(saved_stderr, 2)
      os.close(saved_stderr)
      captured.seek(0)
      lines = captured.read().decode(errors="replace").splitlines(keepends=True)
      kept = "".join(line for line in lines if not _TF_LOAD_NOTICE.match(line))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()
  return tensorflow


def _import_tensorflow_without_keras():
  if "keras" in sys.modules or "tensorflow" in sys.modules:  # already paid for
    import tensorflow  # pylint: disable=g-import-not-at-top

    return tensorflow
  sys.modules[_KERAS_EAGER_IMPORT] = None  # an import of this name now raises ImportError
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top
  finally:
    if sys.modules.get(_KERAS_EAGER_IMPORT, 0) is None:
      del sys.modules[_KERAS_EAGER_IMPORT]
  return tensorflow


# --- the garbage collector while the libraries load ------------------------------------------


def pause_collection() -> None:
  """Turns Python's cyclic garbage collector off while a command loads its libraries, until
  `resume_collection` (which `import_tensorflow` calls, and the front door when a command ends).

  Loading TensorFlow and JAX allocates ~320,000 objects that live as long as the process and leaves
  almost no garbage (~1,600 objects found in ~760 collections). Each full collection meanwhile walks
  everything allocated so far: with it paused, a tiny training run took 0.9-1.5 CPU s less of 7-8
  (means of 4-6 interleaved runs each; docs/benchmarks.md, "2026-12-07 night").
  """
  if gc.isenabled():  # a process that turned it off itself keeps it off
    gc.disable()
    _DONE["collection_paused"] = True


def resume_collection() -> None:
  """After `pause_collection`, the collector on again over what is allocated from now on: every
  object alive now goes into the permanent generation (``gc.freeze``), which no later collection
  walks. Does nothing when the collection was not paused (or has been resumed)."""
  if _DONE["collection_paused"]:
    _DONE["collection_paused"] = False
    gc.freeze()
    gc.enable()


# --- the end -----------------------------------------------------------------------------------


def spare_the_final_collection() -> None:
  """For a process whose work is done: takes every object alive now out of the garbage
  collector's reach (``gc.freeze``). Python's collections while it shuts down would otherwise walk
  all of them, the hundreds of thousands TensorFlow and JAX create, a pause at the end of every
  command for nothing: the process frees its memory by ending."""
  gc.freeze()
