"""A trained run or converted weights, ready for inference: network, variables, preprocessing, names.

``load(workdir)`` reads the latest checkpoint of ``workdir`` -- a training run (its ``config.json``
gives the model, dataset and image size) or ``resnet-jax convert``'s torchvision weights (no config:
ImageNet preprocessing, and ImageNet's class names when the head has 1,000 outputs). The
checkpoint's parameter tree must match the network exactly: a serving model never runs with a
freshly initialised head.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import data as data_lib
from resnet_jax import models
from resnet_jax.train import config as config_lib
from resnet_jax.train import loop
from resnet_jax.train import state as state_lib

# train.loop writes these into a run's workdir.
CHECKPOINT_DIR = loop.CHECKPOINT_DIR
CONFIG_FILE = loop.CONFIG_FILE
# A converted checkpoint carries no config: torchvision's ImageNet preprocessing.
CONVERTED_DATASET = "imagenet2012"


class ServingError(ValueError):
  """Bad input to predict/export (a path, a format, an option): one line says what and how to fix."""


@dataclasses.dataclass(frozen=True)
class ServingModel:
  """Everything inference needs, and nothing of training (no optimizer state).

  labels: the dataset's label names (tfds ``ClassLabel``: ImageNet synsets, '0'..'9', folder names).
  names: readable names in the same order (ImageNet's words; otherwise the labels themselves).
  image_size / resize_size: the eval crop side and the shorter side resized to before it (None: no
  resize), as ``data.eval_batches`` uses them. mean / std: per channel, 0..255 pixel units.
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
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def num_classes(self) -> int:
    return len(self.labels)

  def describe(self) -> dict[str, Any]:
    """The facts a consumer of an exported model needs besides the function (JSON-able)."""
    return {
      "model": self.config.model,
      "dataset": self.config.dataset,
      "workdir": self.workdir,
      "checkpoint_step": self.step,
      "source": self.source,
      "channels": self.channels,
      "image_size": self.image_size,
      "resize_size": self.resize_size,
      "mean": list(self.mean),
      "std": list(self.std),
      "labels": list(self.labels),
      "names": list(self.names),
    }


def _run_config(workdir: epath.Path, meta: dict) -> ml_collections.ConfigDict:
  path = workdir / CONFIG_FILE
  if path.exists():
    config = config_lib.base_config()
    config.update_from_flattened_dict(_flatten(json.loads(path.read_text())))
    return config
  if meta.get("kind") != "weights":
    raise ServingError(
      f"{path} not found: {workdir} has checkpoints but no {CONFIG_FILE}; pass the --workdir "
      f"of a training run or of `resnet-jax convert`"
    )
  config = config_lib.base_config()
  config.model = meta["model"]
  config.dataset = CONVERTED_DATASET
  config.cross_replica_bn = False
  return config


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def _latest_step(workdir: epath.Path) -> int:
  directory = workdir / CHECKPOINT_DIR
  if directory.is_dir():
    ckpt = checkpoint_lib.Checkpointer(
      os.fspath(directory), read_only=True, async_save=False, keep_best=0
    )
    try:
      step = ckpt.latest_step()
    finally:
      ckpt.close()
    if step is not None:
      return step
  raise ServingError(
    f"no checkpoint in {workdir}: pass the --workdir of a training run or of `resnet-jax convert`"
  )


def _paths(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf)) for path, leaf in flat
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
) -> ServingModel:
  """The latest checkpoint of ``workdir`` for inference.

  ``config`` replaces the run's config.json (a training checkpoint must still have been written by
  the same architecture). ``image_size`` serves at another crop side than the run's (the resize
  side follows, as in ``data.eval_batches``): the networks are fully convolutional up to the
  pooled head.
  """
  from resnet_jax import weights  # pylint: disable=g-import-not-at-top

  root = epath.Path(workdir)
  step = _latest_step(root)
  params, batch_stats, meta = weights.load_variables(os.fspath(root))
  config = config if config is not None else _run_config(root, meta)
  if image_size:
    config = config.copy_and_resolve_references()
    config.image_size = image_size
  if meta.get("kind") != "weights" and "architecture" in meta:
    expected_meta = loop._expect_meta(config)  # pylint: disable=protected-access
    if meta["architecture"] != expected_meta["architecture"]:
      raise ServingError(
        f"checkpoint {root} step {step} was written by another architecture than "
        f"config.model={config.model!r} with its overrides; pass the run's own --config"
      )
  num_classes = int(np.shape(params["head"]["bias"])[0])
  channels = int(np.shape(params["stem_conv"]["kernel"])[2])
  kwargs = loop.model_kwargs(config)
  kwargs.pop("bn_axis_name", None)  # inference: running statistics, no cross-replica reduction
  model = models.get_model(config.model, num_classes=num_classes, **kwargs)
  image_size, resize_size = data_lib.eval_image_sizes(config.dataset, config.image_size or None)
  variables = {"params": params, "batch_stats": batch_stats}
  expected = state_lib.abstract_variables(model, (image_size, image_size, channels))
  expected = {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}
  want, got = _paths(expected), _paths(variables)
  if want != got:
    differ = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
    raise ServingError(
      f"checkpoint {root} step {step} does not fit {config.model} as configured "
      f"({len(differ)} parameters differ, e.g. {differ[0]}); pass the matching --config"
    )
  labels, names = _class_names(config, num_classes)
  spec = data_lib.dataset_info(config.dataset)
  return ServingModel(
    workdir=os.fspath(root),
    config=config,
    model=model,
    variables=jax.tree_util.tree_map(jnp.asarray, variables),
    step=int(step),
    source=meta.get("source", "run") if meta.get("kind") == "weights" else "run",
    labels=labels,
    names=names,
    channels=channels,
    image_size=image_size,
    resize_size=resize_size,
    mean=tuple(float(m) for m in spec.mean),
    std=tuple(float(s) for s in spec.std),
  )
