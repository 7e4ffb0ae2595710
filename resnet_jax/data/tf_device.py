"""Keeps TensorFlow off the accelerators: JAX owns them, TensorFlow only feeds data and writes events.

Imports only TensorFlow, so callers outside the input pipeline (``metrics``' TensorBoard writer)
share this one helper. A process started through ``resnet_jax.main`` has TensorFlow loaded already,
quietly (``resnet_jax.runtime.import_tensorflow``); here it is a plain import, which changes nothing
of the process's beyond what TensorFlow itself does when it loads.
"""

from __future__ import annotations

import tensorflow as tf

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
