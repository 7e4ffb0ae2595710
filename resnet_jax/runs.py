"""A run on disk, read back one way: its workdir layout, config, checkpoint metadata and variables;
the network of its config; and starting a new run from its variables (``config.init_from``).

A run's workdir (written by :mod:`resnet_jax.train.loop`, or by ``resnet-jax convert``; the file
names live in :mod:`resnet_jax.run_files`, light enough for ``sweep --emit``)::

    config.json       the config it was trained with (absent in a converted-weights workdir)
    checkpoints/      Orbax checkpoints; each step's meta names the model and its architecture
    DONE              the final metrics, written after the last step

The loop writes what this module reads, and every reader (the loop on resume and on
``config.init_from``, eval, the analyses, serving) goes through it. Of ``train`` it imports what
describes a run, and calls nothing that compiles or takes a step: the config schema
(``train.config``, to read config.json back), the axis name of cross-replica BN that a model is
built with (``train.steps.AXIS``) and the state's abstract variables (``train.state``, to check
that a checkpoint fits its network).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import data as data_lib
from resnet_jax import models
from resnet_jax import storage
from resnet_jax.run_files import CHECKPOINT_DIR, CONFIG_FILE, DONE_FILE
from resnet_jax.train import config as config_lib
from resnet_jax.train import state as state_lib
from resnet_jax.train import steps


def _model_kwargs(config) -> dict[str, Any]:
  """``get_model`` keyword arguments of a config: its model overrides, compute dtype and BN axis."""
  kwargs = {k: v for k, v in config.model_overrides.items() if v not in ("", ())}
  if config.precision in ("bf16", "fp16"):
    kwargs["dtype"] = jnp.bfloat16 if config.precision == "bf16" else jnp.float16
  if config.cross_replica_bn:
    kwargs["bn_axis_name"] = steps.AXIS
  return kwargs


def build_model(config, num_classes: int | None = None, *, replicated: bool = True):
  """The network a run of ``config`` trains: ``config.model`` with its overrides and compute dtype,
  for the dataset's classes unless ``num_classes`` is given. The one place a config's model is
  built (train, eval, serving, analyses, bench).

  ``replicated=False``: for one device (inference, analyses), BN without the cross-replica axis.
  """
  if num_classes is None:
    num_classes = data_lib.dataset_info(config.dataset).num_classes
  kwargs = _model_kwargs(config)
  if not replicated:
    kwargs.pop("bn_axis_name", None)
  return models.get_model(config.model, num_classes=num_classes, **kwargs)


def net_name(config) -> str:
  """The net a config trains, by its real depth: ``plain8`` for plain20 with stage_sizes (1, 1, 1)
  (the CIFAR 6n+2 depths the registry lacks are trained that way); else ``config.model``."""
  sizes = config.model_overrides.get("stage_sizes")
  family = re.fullmatch(r"(resnet|plain)(\d+)", config.model)
  if sizes and family and config.model in models.list_models():
    if models.model_spec(config.model).family == "cifar":
      return f"{family.group(1)}{2 + 2 * sum(int(s) for s in sizes)}"
  return config.model


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
  "drop_path_rate",  # training-time only: the parameters and the eval function are the same
)


def architecture(config) -> dict[str, Any]:
  """The resolved network (registry defaults + overrides), through JSON as stored."""
  num_classes = data_lib.dataset_info(config.dataset).num_classes
  full = models.registry.model_config(
    config.model, num_classes=num_classes, **_model_kwargs(config)
  )
  return json.loads(json.dumps({k: v for k, v in full.items() if k not in NOT_ARCHITECTURE}))


def expect_meta(config) -> dict[str, Any]:
  """The checkpoint meta entries a run of ``config`` must find to restore a checkpoint."""
  return {"model": config.model, "architecture": architecture(config)}


def checkpoint_meta(config, controller) -> dict[str, Any]:
  """The meta saved with each checkpoint: :func:`expect_meta`, the dataset, and the learning-rate
  controller's state (``optim.LearningRateController.to_json()``)."""
  return {**expect_meta(config), "dataset": config.dataset, "lr_controller": controller.to_json()}


# --- reading a run back ---------------------------------------------------------------------------
# A converted checkpoint (``resnet-jax convert``) carries no config: torchvision's ImageNet
# preprocessing.
CONVERTED_DATASET = "imagenet2012"


class RunError(ValueError):
  """A workdir whose checkpoint does not fit the network its config describes (one line)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One checkpoint's variables (host numpy arrays) and meta, read without a template."""

  params: dict
  batch_stats: dict
  meta: dict
  step: int
  ema: dict | None = None  # {'params', 'batch_stats'}: the moving average of config.ema_decay


@dataclasses.dataclass(frozen=True)
class Run:
  """A run (or converted weights) ready to apply: ``model.apply(variables, x, train=False)``."""

  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  variables: dict  # {'params', 'batch_stats'} as jax arrays
  step: int
  meta: dict
  ema: bool = False  # whether ``variables`` are the run's moving average (config.ema_decay)

  @property
  def is_converted(self) -> bool:
    """Weights written by ``resnet-jax convert`` rather than by training."""
    return self.meta.get("kind") == "weights"


def is_done(workdir) -> bool:
  """Whether the run in ``workdir`` finished (the loop wrote its DONE file)."""
  return (storage.location(workdir) / DONE_FILE).exists()


def final_metrics(workdir) -> dict[str, Any]:
  """The final metrics a finished run wrote into its DONE file."""
  return json.loads((storage.location(workdir) / DONE_FILE).read_text())


def is_run(path) -> bool:
  """Whether ``path`` is a training workdir (holds a config.json)."""
  return (storage.location(path) / CONFIG_FILE).exists()


def _tuples(tree):
  """JSON's lists back to the tuples the config holds."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  return tuple(_tuples(v) for v in tree) if isinstance(tree, list) else tree


def read_config(workdir) -> ml_collections.ConfigDict:
  """The config a run was trained with (its config.json) over today's defaults, so a key added
  since the run was written reads as its default."""
  path = storage.check_access(workdir, "--workdir") / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
      f"{path} not found: {workdir} is not a training workdir; pass the --workdir of a training "
      f"run or of `resnet-jax convert`"
    )
  config = config_lib.base_config()
  config.update(_tuples(json.loads(path.read_text())))
  return config


def converted_config(meta: dict) -> ml_collections.ConfigDict:
  """The config that serves converted weights: their model, ImageNet preprocessing."""
  config = config_lib.base_config()
  config.model = meta["model"]
  config.dataset = CONVERTED_DATASET
  config.cross_replica_bn = False
  return config


def checkpoint_dir(path, what: str = "--workdir") -> epath.Path:
  """A workdir's ``checkpoints/``, or ``path`` itself if it is a checkpoints directory."""
  path = storage.check_access(path, what)
  sub = path / CHECKPOINT_DIR
  if sub.is_dir():
    return sub
  if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
    return path
  raise checkpoint_lib.CheckpointError(
    f"{what}='{path}' has no checkpoints: pass the --workdir of `resnet-jax convert` or of a "
    f"training run"
  )


def _open(directory) -> checkpoint_lib.Checkpointer:
  return checkpoint_lib.Checkpointer(directory, read_only=True, async_save=False, keep_best=0)


def latest_step(workdir) -> int | None:
  """The newest checkpoint step of a workdir, or None when it has none."""
  try:
    directory = checkpoint_dir(workdir)
  except checkpoint_lib.CheckpointError:
    return None
  ckpt = _open(directory)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def read_checkpoint(path, step: int | None = None, *, what: str = "--workdir") -> Checkpoint:
  """Params, batch statistics and meta of checkpoint ``step`` (default: the latest) of a workdir
  or checkpoints directory: a training run's (its optimizer state etc. are not returned) or
  converted weights. Read as a raw tree, whichever parallelism wrote it."""
  directory = checkpoint_dir(path, what)
  ckpt = _open(directory)
  try:
    steps_there = ckpt.all_steps()
    if not steps_there:
      raise checkpoint_lib.CheckpointError(f"no checkpoint in {directory}")
    step = steps_there[-1] if step is None else step
    if step not in steps_there:
      raise checkpoint_lib.CheckpointError(
        f"no checkpoint at step {step} in {directory}; available: {steps_there}"
      )
    meta = ckpt.read_meta(step)
    state = ckpt.read_state(step)
  finally:
    ckpt.close()
  if not isinstance(state, Mapping) or "params" not in state:
    raise checkpoint_lib.CheckpointError(f"checkpoint {directory} step {step} holds no params")
  ema = state.get("ema")
  ema = dict(ema) if isinstance(ema, Mapping) and "params" in ema else None
  return Checkpoint(
    dict(state["params"]), dict(state.get("batch_stats") or {}), meta, int(step), ema
  )


def abstract_variables(config, model, channels: int | None = None) -> dict:
  """Shapes and dtypes of ``model``'s ``{'params', 'batch_stats'}`` for a run of ``config``: the
  train state's abstract variables at the run's eval input side, with ``channels`` (default: the
  dataset's). Nothing compiles."""
  size = data_lib.eval_image_sizes(config.dataset, config.image_size or None)[0]
  channels = channels or data_lib.dataset_info(config.dataset).image_shape[-1]
  variables = state_lib.abstract_variables(model, (size, size, channels))
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _check_fits(where: str, config, meta: dict, model, variables, channels: int) -> None:
  """Refuses a checkpoint whose architecture or parameter tree is not the configured network's."""
  if meta.get("kind") != "weights" and "architecture" in meta:
    if meta["architecture"] != expect_meta(config)["architecture"]:
      raise RunError(
        f"checkpoint {where} was written by another architecture than "
        f"config.model={config.model!r} with its overrides; pass the run's own --config"
      )
  expected = abstract_variables(config, model, channels)
  problem = checkpoint_lib.mismatch(
    checkpoint_lib.shapes(variables), checkpoint_lib.shapes(expected)
  )
  if problem:
    raise RunError(
      f"checkpoint {where} does not fit {config.model} as configured: {problem}; pass the "
      f"matching --config"
    )


def load(
  workdir,
  step: int | None = None,
  *,
  config: ml_collections.ConfigDict | None = None,
  image_size: int | None = None,
  use_ema: bool | None = False,
) -> Run:
  """Checkpoint ``step`` (default: the latest) of a training run or of converted weights, with the
  network it fits, for inference or analysis (unreplicated: BN uses running statistics).

  ``config`` replaces the run's config.json (it must still describe the same architecture);
  ``image_size`` sets config.image_size (the networks are fully convolutional up to the pooled
  head). The parameter tree must match the network exactly: a loaded model never runs with a
  freshly initialised head.

  ``use_ema``: False (the default, what analyses study) gives the trained variables; True the
  run's moving average of parameters and BN statistics (``config.ema_decay``; a run without one
  is refused); None the average when the run has one, else the trained variables (serving).
  """
  ckpt = read_checkpoint(workdir, step)
  if use_ema and ckpt.ema is None:
    raise RunError(
      f"checkpoint {workdir} step {ckpt.step} has no moving average (trained with "
      f"config.ema_decay=0); use its own variables"
    )
  ema = ckpt.ema is not None and use_ema is not False
  if config is None:
    if ckpt.meta.get("kind") == "weights" and not is_run(workdir):
      config = converted_config(ckpt.meta)
    else:
      config = read_config(workdir)
  if image_size:
    config = config.copy_and_resolve_references()
    config.image_size = image_size
  source = ckpt.ema if ema else {"params": ckpt.params, "batch_stats": ckpt.batch_stats}
  variables = {"params": dict(source["params"]), "batch_stats": dict(source["batch_stats"] or {})}
  num_classes = int(np.shape(ckpt.params["head"]["bias"])[0])
  model = build_model(config, num_classes, replicated=False)  # BN with its running statistics
  channels = models.in_channels(ckpt.params)
  _check_fits(f"{workdir} step {ckpt.step}", config, ckpt.meta, model, variables, channels)
  return Run(
    workdir=os.fspath(storage.location(workdir)),
    config=config,
    model=model,
    variables=jax.tree_util.tree_map(jnp.asarray, variables),
    step=ckpt.step,
    meta=ckpt.meta,
    ema=ema,
  )


# --- starting a run from another -----------------------------------------------------------------
_STEM_KERNEL = ("params", "stem_conv", "kernel")


def _is_head(path: tuple[str, ...]) -> bool:
  return path[1:2] == ("head",)


def _grey_stem(source_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> bool:
  """An RGB stem kernel (kh, kw, 3, out) for a 1-channel network's (kh, kw, 1, out)."""
  return (
    len(source_shape) == len(target_shape) == 4
    and source_shape[2] == 3
    and target_shape[2] == 1
    and source_shape[:2] + source_shape[3:] == target_shape[:2] + target_shape[3:]
  )


def merge_into(params, batch_stats, source_params, source_batch_stats, *, describe: str = "source"):
  """Copies every source leaf onto the same path of ``params``/``batch_stats`` (same shape).

  * ``head``: kept as initialised (and logged) when its shape differs or it is absent (a new
    number of classes).
  * ``stem_conv/kernel`` with 3 input channels in the source and 1 in the model (RGB ImageNet
    weights, grayscale digits): summed over the input channels -- the response to a grey image
    replicated to RGB.
  * anything else that is missing, unexpected or of another shape: one ``RunError``
    (``checkpoint.mismatch``).

  Returns ``(params, batch_stats, notes)``; ``notes`` lists what was adapted.
  """
  target = checkpoint_lib.flatten({"params": params, "batch_stats": batch_stats})
  source = checkpoint_lib.flatten({"params": source_params, "batch_stats": source_batch_stats})
  source = {path: np.asarray(leaf) for path, leaf in source.items()}
  shapes = lambda flat: {path: np.shape(leaf) for path, leaf in flat.items()}  # noqa: E731
  head = lambda flat: {p[2:]: np.shape(v) for p, v in flat.items() if _is_head(p)}  # noqa: E731
  notes = []
  stem = source.get(_STEM_KERNEL)
  if stem is not None and _STEM_KERNEL in target:
    if _grey_stem(stem.shape, np.shape(target[_STEM_KERNEL])):
      source[_STEM_KERNEL] = stem.sum(axis=2, keepdims=True)
      notes.append("stem_conv/kernel summed over its 3 input channels for 1-channel images")
  # A head of another shape (another number of classes) stays as initialised.
  kept = {}
  if any(head(source).get(p) != shape for p, shape in head(target).items()):
    kept = {p: v for p, v in target.items() if _is_head(p)}
    notes.append(
      f"head re-initialised: {describe} has {_named(head(source)) or 'no head'}, model has "
      f"{_named(head(target))}"
    )
    source = {p: v for p, v in source.items() if not _is_head(p)}
  wanted = {p: v for p, v in target.items() if p not in kept}
  problem = checkpoint_lib.mismatch(shapes(source), shapes(wanted))
  if problem:
    raise RunError(f"{describe} does not fit this model (head aside): {problem}")
  merged = {p: jnp.asarray(source[p], dtype=getattr(v, "dtype", None)) for p, v in wanted.items()}
  new = checkpoint_lib.unflatten({**merged, **kept})
  return new["params"], new.get("batch_stats", {}), notes


def _named(shapes: dict[tuple[str, ...], tuple]) -> dict[str, tuple]:
  return {"/".join(path): tuple(shape) for path, shape in shapes.items()}


def initialise_from(params, batch_stats, init_dir: str):
  """The latest checkpoint under ``init_dir`` (a workdir or its checkpoints directory: converted
  weights or a training run) merged into ``params``/``batch_stats`` by :func:`merge_into`; logs
  what was adapted. For ``train.loop``'s ``config.init_from``."""
  source = read_checkpoint(init_dir, what="config.init_from")
  describe = f"checkpoint {init_dir} ({source.meta.get('model', '?')})"
  params, batch_stats, notes = merge_into(
    params, batch_stats, source.params, source.batch_stats, describe=describe
  )
  logging.info("initialised from %s", describe)
  for note in notes:
    logging.info("init_from: %s", note)
  return params, batch_stats, notes
