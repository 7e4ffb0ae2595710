"""Keeps TensorFlow off the accelerators: JAX owns them, TF only feeds data and writes events.

Imports only TensorFlow, so callers outside the input pipeline (``metrics``' TensorBoard writer)
share this one helper. Note that importing it still runs ``resnet_jax.data``'s ``__init__``
(and so tensorflow_datasets); callers that must stay light import it where they need it.
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
