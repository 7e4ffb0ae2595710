"""One way to read a run back: its workdir layout, config, checkpoint metadata and variables.

A run's workdir (written by :mod:`resnet_jax.train.loop`, or by ``resnet-jax convert``)::

    config.json       the config it was trained with (absent in a converted-weights workdir)
    checkpoints/      Orbax checkpoints; each step's meta names the model and its architecture
    DONE              the final metrics, written after the last step

The loop writes what this module reads, and every reader (the loop on resume, the analyses,
serving, weights) goes through it. It imports nothing that trains.
"""

from __future__ import annotations

import json
from typing import Any

import jax.numpy as jnp

from resnet_jax import data as data_lib
from resnet_jax import models
from resnet_jax.train import steps

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
DONE_FILE = "DONE"


def model_kwargs(config) -> dict[str, Any]:
  """``get_model`` keyword arguments of a config: its model overrides, compute dtype and BN axis."""
  kwargs = {k: v for k, v in config.model_overrides.items() if v not in ("", ())}
  if config.precision in ("bf16", "fp16"):
    kwargs["dtype"] = jnp.bfloat16 if config.precision == "bf16" else jnp.float16
  if config.cross_replica_bn:
    kwargs["bn_axis_name"] = steps.AXIS
  return kwargs


# ResNet fields that change neither the function computed nor the parameters: a run may resume
# with different values (e.g. switch on remat, or bf16 compute).
NOT_ARCHITECTURE = (
  "dtype",
  "param_dtype",
  "bn_axis_name",
  "bn_momentum",
  "zero_init_last_bn",
  "remat",
  "matmul_1x1",
  "conv_impl",
)


def architecture(config) -> dict[str, Any]:
  """The resolved network (registry defaults + overrides), through JSON as stored."""
  num_classes = data_lib.dataset_info(config.dataset).num_classes
  full = models.registry.model_config(config.model, num_classes=num_classes, **model_kwargs(config))
  return json.loads(json.dumps({k: v for k, v in full.items() if k not in NOT_ARCHITECTURE}))


def expect_meta(config) -> dict[str, Any]:
  """The checkpoint meta entries a run of ``config`` must find to restore a checkpoint."""
  return {"model": config.model, "architecture": architecture(config)}


def checkpoint_meta(config, controller) -> dict[str, Any]:
  """The meta saved with each checkpoint: :func:`expect_meta`, the dataset, and the learning-rate
  controller's state (``optim.LearningRateController.to_json()``)."""
  return {**expect_meta(config), "dataset": config.dataset, "lr_controller": controller.to_json()}
