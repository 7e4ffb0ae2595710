"""Keeps TensorFlow off the accelerators (JAX owns them, TF only feeds data and writes events), and
imports it without its load-time C++ INFO notices.

Imports only TensorFlow, so callers outside the input pipeline (``metrics``' TensorBoard writer)
share this one helper. Note that importing it still runs ``resnet_jax.data``'s ``__init__``
(and so tensorflow_datasets); callers that must stay light import it where they need it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# What TensorFlow's C++ core prints while it loads, before it has read TF_CPP_MIN_LOG_LEVEL: absl's
# "before absl::InitializeLog()" banner (once per shared library holding a copy of absl) and INFO
# lines such as the oneDNN and CPU-instruction notices, with the latter's continuation line.
_LOAD_NOTICE = re.compile(
  r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
  r"|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
  r"|To enable the following instructions: )"
)


# TensorFlow imports Keras while it loads, only so that Keras optimizers register for SavedModels
# (``importlib.import_module("keras.src.optimizers")`` inside a ``try``). Nothing of ours uses Keras,
# and that import is about 2 s of every process start, so it is made to fail fast; ``tf.keras``
# still loads Keras on first use.
_KERAS_EAGER_IMPORT = "keras.src.optimizers"


def _import_tensorflow_without_keras():
  if "keras" in sys.modules:  # already paid for by whoever imported it
    import tensorflow  # pylint: disable=g-import-not-at-top

    return tensorflow
  sys.modules[_KERAS_EAGER_IMPORT] = None  # an import of this name now raises ImportError
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top
  finally:
    if sys.modules.get(_KERAS_EAGER_IMPORT, 0) is None:
      del sys.modules[_KERAS_EAGER_IMPORT]
  return tensorflow


def _import_tensorflow():
  """``import tensorflow``, honouring TF_CPP_MIN_LOG_LEVEL for what TF prints while it loads.

  TF 2.2x logs through absl's C++ logging, which writes everything to stderr until
  ``absl::InitializeLog()`` -- so ``TF_CPP_MIN_LOG_LEVEL >= 1`` (INFO off) does not hide its
  load-time INFO notices. They are read off file descriptor 2 during the import and dropped;
  warnings, errors and anything else written meanwhile are passed on unchanged.
  """
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
      kept = "".join(line for line in lines if not _LOAD_NOTICE.match(line))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()
  return tensorflow


tf = _import_tensorflow()

_GPUS_HIDDEN = False


def hide_gpus_from_tf() -> None:
  """Keeps TensorFlow off every accelerator (JAX owns them). Idempotent."""
  global _GPUS_HIDDEN
  if _GPUS_HIDDEN:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices (on CPU); nothing more to do.
    pass
  _GPUS_HIDDEN = True
