"""A trained run or converted weights, ready for inference: network, variables, preprocessing, names.

``load(workdir)`` reads the latest checkpoint of ``workdir`` through :func:`resnet_jax.runs.load`
-- a training run (its ``config.json`` gives the model, dataset and image size) or ``resnet-jax
convert``'s torchvision weights (no config: ImageNet preprocessing, and ImageNet's class names when
the head has 1,000 outputs) -- and adds what serving needs besides: class names and preprocessing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import data as data_lib
from resnet_jax import models
from resnet_jax import runs
from resnet_jax.data import augment


class ServingError(ValueError):
  """Bad input to predict/export (a path, a format, an option): one line says what and how to fix."""


@dataclasses.dataclass(frozen=True)
class ServingModel:
  """Everything inference needs, and nothing of training (no optimizer state).

  labels: the dataset's label names (tfds ``ClassLabel``: ImageNet synsets, '0'..'9', folder names).
  names: readable names in the same order (ImageNet's words; otherwise the labels themselves).
  image_size / resize_size: the eval crop side and the shorter side resized to before it (None: no
  resize), as ``data.eval_batches`` uses them. mean / std: 0..255 pixel units; std per channel,
  mean per channel or, for a run trained with ``normalization='pixel_mean'``, the training split's
  per-pixel mean image [H, W, C] (resized to the input as in ``data.augment.normalize``).
  """

  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  variables: dict
  step: int
  source: str  # 'run' (a training checkpoint) or the converter's source, e.g. 'torchvision'
  labels: tuple[str, ...]
  names: tuple[str, ...]
  channels: int
  image_size: int
  resize_size: int | None
  mean: tuple[float, ...] | np.ndarray
  std: tuple[float, ...]
  ema: bool = False  # the variables are the run's moving average (config.ema_decay), not its own

  @property
  def num_classes(self) -> int:
    return len(self.labels)

  def eval_views(self, method: str) -> augment.EvalViews:
    """The test-time views of ``method`` for this run, as ``eval`` takes them: they follow the
    run's own training transform (``data.augment.eval_views``)."""
    return augment.eval_views(
      method,
      train_augment=data_lib.train_augment_name(self.config.dataset, self.config.train_augment),
      image_size=self.image_size,
      resize_size=self.resize_size,
    )

  def describe(self) -> dict[str, Any]:
    """The facts a consumer of an exported model needs besides the function (JSON-able)."""
    return {
      "model": self.config.model,
      "dataset": self.config.dataset,
      "workdir": self.workdir,
      "checkpoint_step": self.step,
      "weights": "ema" if self.ema else "trained",
      "source": self.source,
      "channels": self.channels,
      "image_size": self.image_size,
      "resize_size": self.resize_size,
      "mean": np.asarray(self.mean).tolist(),
      "std": list(self.std),
      "labels": list(self.labels),
      "names": list(self.names),
    }


def _class_names(config, num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
  labels = data_lib.class_names(config.dataset, config.data_dir or None)
  readable = data_lib.readable_class_names(config.dataset)
  if len(labels) != num_classes:  # e.g. a converted head with another class count
    return tuple(str(i) for i in range(num_classes)), tuple(str(i) for i in range(num_classes))
  return tuple(labels), tuple(readable if readable and len(readable) == num_classes else labels)


def load(
  workdir: str,
  *,
  config: ml_collections.ConfigDict | None = None,
  image_size: int | None = None,
  use_ema: bool | None = None,
) -> ServingModel:
  """The latest checkpoint of ``workdir`` for inference.

  ``config`` replaces the run's config.json (a training checkpoint must still have been written by
  the same architecture). ``image_size`` serves at another crop side than the run's (the resize
  side follows, as in ``data.eval_batches``): the networks are fully convolutional up to the
  pooled head.

  ``use_ema``: serve the run's moving average of parameters and BN statistics
  (``config.ema_decay``). None (the default) serves it when the run kept one -- the model such a
  run was trained to deliver -- and the trained variables otherwise; False always the trained
  variables; True refuses a run without an average. ``describe()['weights']`` says which.
  """
  if runs.latest_step(workdir) is None:
    raise ServingError(
      f"no checkpoint in {workdir}: pass the --workdir of a training run or of `resnet-jax convert`"
    )
  try:
    run = runs.load(workdir, config=config, image_size=image_size, use_ema=use_ema)
  except (runs.RunError, FileNotFoundError, checkpoint_lib.CheckpointError) as e:
    raise ServingError(str(e)) from None
  config = run.config
  params = run.variables["params"]
  num_classes = int(params["head"]["bias"].shape[0])
  # The run's test-time side and crop ratio (eval_image_size, eval_crop_ratio) unless asked for one.
  side = image_size or config.eval_image_size or config.image_size or None
  image_size, resize_size = data_lib.eval_image_sizes(
    config.dataset, side, config.eval_crop_ratio or None
  )
  labels, names = _class_names(config, num_classes)
  spec = data_lib.dataset_info(config.dataset)
  # The inputs centred as the run's were: its per-pixel mean image where it trained with one.
  normalization = config.get("normalization", "channel")
  mean = data_lib.input_mean(
    config.dataset, normalization, config.get("train_split") or None, config.data_dir or None
  )
  return ServingModel(
    workdir=run.workdir,
    config=config,
    model=run.model,
    variables=run.variables,
    step=run.step,
    source=run.meta.get("source", "run") if run.is_converted else "run",
    labels=labels,
    names=names,
    channels=models.in_channels(params),
    image_size=image_size,
    resize_size=resize_size,
    mean=np.asarray(mean, np.float32) if normalization == "pixel_mean" else tuple(map(float, mean)),
    std=tuple(float(s) for s in spec.std),
    ema=run.ema,
  )
