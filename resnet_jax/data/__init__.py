"""resnet_jax.data: dataset registry, tfds builders, augmentation and sharded batches.

Imports nothing else of ours. TensorFlow is kept off accelerators (hide_gpus_from_tf, in
tf_device: the one helper, also used by metrics' TensorBoard writer).
"""

# First: every other module of the package imports TensorFlow, which tf_device imports quietly.
from resnet_jax.data.tf_device import hide_gpus_from_tf

from resnet_jax.data.datasets import (
  REGISTRY,
  CorruptImageError,
  DatasetNotFoundError,
  DatasetSpec,
  class_names,
  dataset_info,
  default_data_dir,
  list_datasets,
  load_source,
  num_examples,
  readable_class_names,
  train_augment_name,
)
from resnet_jax.data.pipeline import (
  eval_batches,
  eval_image_sizes,
  input_mean,
  prefetch_to_device,
  train_batches,
)

__all__ = [
  "REGISTRY",
  "CorruptImageError",
  "DatasetNotFoundError",
  "DatasetSpec",
  "class_names",
  "dataset_info",
  "default_data_dir",
  "eval_batches",
  "eval_image_sizes",
  "hide_gpus_from_tf",
  "input_mean",
  "list_datasets",
  "load_source",
  "num_examples",
  "prefetch_to_device",
  "readable_class_names",
  "train_augment_name",
  "train_batches",
]
