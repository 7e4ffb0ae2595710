"""resnet_jax.serving: use a trained network -- ``predict`` on image files, ``export`` to StableHLO
(``jax.export``) or a TensorFlow SavedModel (``jax2tf``), both from one ``ServingModel``."""

from resnet_jax.serving.export import FORMATS, export_command, export_model, serving_function
from resnet_jax.serving.predict import classify, find_images, format_table, predict_command
from resnet_jax.serving.model import ServingError, ServingModel, load

__all__ = [
  "FORMATS",
  "classify",
  "ServingError",
  "ServingModel",
  "export_command",
  "export_model",
  "find_images",
  "format_table",
  "load",
  "predict_command",
  "serving_function",
]
