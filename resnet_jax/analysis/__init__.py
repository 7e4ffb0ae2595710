"""The paper's experiments as analyses (He et al. 2015): each writes PNG figures and a Markdown table.

* :mod:`.degradation`      Fig. 1/4/6, Table 6: plain vs residual nets of increasing depth.
* :mod:`.layer_responses`  Fig. 7: std of each 3x3 layer's response (after BN, before add/ReLU).
* :mod:`.gradient_flow`    norm of the loss gradient w.r.t. each block's input and parameters.
* :mod:`.shortcuts`        Table 3: shortcut options A / B / C (error, parameter count).
* :mod:`.test_time`        Tables 3/4: center vs ten-crop vs fully-convolutional multi-scale.
* :mod:`.cli`              ``analyze_command(name, argv)``, called by ``resnet-jax analyze NAME``.

This module holds what the analyses share: the training recipe of a run, loading a trained run's
model and variables from its workdir, and writing tables and figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from resnet_jax import storage

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILE = "config.json"


# --- recipes --------------------------------------------------------------------------------------


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file (path from the cwd, else from the repository)."""
  path = Path(path)
  if not path.is_file():
    path = REPO / path
  if not path.is_file():
    raise FileNotFoundError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"_resnet_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def resolve_model(name: str) -> tuple[str, dict[str, Any]]:
  """A registry name, or a CIFAR 6n+2 depth the registry lacks (``resnet8``, ``plain14``): then
  ``(family + '20', {'stage_sizes': (n, n, n)})`` -- the same net with n blocks per stage."""
  from resnet_jax import models  # pylint: disable=g-import-not-at-top

  if name in models.list_models():
    return name, {}
  m = re.fullmatch(r"(resnet|plain)(\d+)", name)
  if m and (int(m.group(2)) - 2) % 6 == 0 and int(m.group(2)) >= 8:
    n = (int(m.group(2)) - 2) // 6
    return f"{m.group(1)}20", {"stage_sizes": (n, n, n)}
  raise ValueError(
    f"unknown model {name!r}: a registry name (`resnet-jax models`) or a CIFAR "
    f"depth 6n+2 such as resnet8, plain14"
  )


def display_name(config) -> str:
  """The net's name with its real depth (``resnet8`` for resnet20 with stage_sizes (1, 1, 1))."""
  sizes = config.model_overrides.get("stage_sizes")
  m = re.fullmatch(r"(resnet|plain)(\d+)", config.model)
  if sizes and m and config.model in _cifar_names():
    return f"{m.group(1)}{2 + 2 * sum(int(s) for s in sizes)}"
  return config.model


def _cifar_names():
  from resnet_jax import models  # pylint: disable=g-import-not-at-top

  return [n for n in models.list_models() if models.model_spec(n).family == "cifar"]


def recipe(
  model: str,
  *,
  dataset: str = "digits",
  steps: int | None = None,
  width_multiplier: float = 1.0,
  seed: int = 0,
  batch_size: int | None = None,
  evals: int = 4,
  overrides: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
  """The config of one run: the same recipe for every depth/family so runs compare.

  ``dataset='digits'``: configs/digits.py (warm-up + cosine, minutes on a CPU).
  ``dataset='cifar10'``: the paper's §4.2 recipe (configs/cifar10_<model>.py); with ``steps`` other
  than 64k the lr boundaries (32k, 48k) keep their fractions of the run.
  ``evals``: test-error points on the curve (eval_every_steps = steps / evals).
  ``overrides``: any other config keys (``model_overrides.shortcut`` etc. as nested dicts).
  """
  model, net_overrides = resolve_model(model)
  if dataset == "cifar10":
    c = (
      load_config_file(f"configs/cifar10_{model}.py")
      if (REPO / f"configs/cifar10_{model}.py").is_file()
      else _cifar_recipe(model)
    )
  elif dataset == "digits":
    c = load_config_file("configs/digits.py")
  else:
    c = load_config_file("configs/digits.py")
    c.dataset = dataset
  c.model = model
  c.seed = seed
  if steps:
    if c.lr_boundaries:
      c.lr_boundaries = tuple(int(round(b * steps / c.num_train_steps)) for b in c.lr_boundaries)
    c.num_train_steps = steps
  if batch_size:
    c.global_batch_size = batch_size
  every = max(1, c.num_train_steps // max(1, evals))
  c.eval_every_steps = every
  c.checkpoint_every_steps = every
  c.log_every_steps = max(1, min(c.log_every_steps, every // 4 or 1))
  c.async_checkpoints = False
  if width_multiplier != 1.0:
    c.model_overrides.width_multiplier = float(width_multiplier)
  for key, value in net_overrides.items():
    c.model_overrides[key] = value
  for key, value in (overrides or {}).items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


def _cifar_recipe(model):
  from resnet_jax.train.config import cifar10_table6  # pylint: disable=g-import-not-at-top

  return cifar10_table6(model)


def train(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes, or skips a finished) run in ``workdir``; returns its final metrics."""
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  done = storage.location(workdir) / loop.DONE_FILE
  if done.exists():
    return json.loads(done.read_text())
  return loop.train_and_evaluate(config, workdir)


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` was trained with (its config.json)."""
  path = storage.check_access(workdir, "workdir") / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir} is not a training workdir")
  d = json.loads(path.read_text())
  for key in ("eval_scales", "lr_boundaries"):
    if isinstance(d.get(key), list):
      d[key] = tuple(d[key])
  return ml_collections.ConfigDict(d)


def build_model(config):
  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  info = data_lib.dataset_info(config.dataset)
  kwargs = loop.model_kwargs(config)
  kwargs.pop("bn_axis_name", None)  # analyses run unreplicated
  from resnet_jax import models  # pylint: disable=g-import-not-at-top

  return models.get_model(config.model, num_classes=info.num_classes, **kwargs), info


def init_variables(model, config, image_shape):
  """The variables training starts from (same key as ``train_and_evaluate``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  v = model.init(
    jax.random.key(config.seed), jnp.zeros((1, *image_shape), jnp.float32), train=False
  )
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def load_run(workdir: str, step: int | None = None):
  """``(config, model, variables, step)`` of a trained run's checkpoint (latest or ``step``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from resnet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import optim  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  config = run_config(workdir)
  model, info = build_model(config)
  image_shape = image_shape_of(config, info)
  abstract_variables = state_lib.abstract_variables(model, image_shape)  # traced once, used twice
  tx = optim.create_optimizer(config, abstract_variables["params"])
  template = state_lib.abstract_train_state(
    model, tx, image_shape, use_loss_scale=config.precision == "fp16", variables=abstract_variables
  )
  ckpt = checkpoint_lib.Checkpointer(
    storage.location(workdir) / "checkpoints", read_only=True, async_save=False
  )
  try:
    state, _ = ckpt.restore(template, step)
    used = step if step is not None else ckpt.latest_step()
  finally:
    ckpt.close()
  variables = {
    "params": jax.tree_util.tree_map(jnp.asarray, state.params),
    "batch_stats": jax.tree_util.tree_map(jnp.asarray, state.batch_stats),
  }
  return config, model, variables, used


def image_shape_of(config, info) -> tuple[int, int, int]:
  size = config.image_size or info.image_size
  return (size, size, info.image_shape[-1])


def image_batch(config, *, split: str = "eval", size: int = 256, seed: int = 0):
  """``(images [N, H, W, C], labels [N])``: the first ``size`` examples of the train or eval split
  with the center (no-augmentation) transform, as numpy."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  del seed
  split_name = (config.eval_split if split == "eval" else config.train_split) or None
  if split_name is None:
    info = data_lib.dataset_info(config.dataset)
    split_name = info.eval_split if split == "eval" else info.train_split
  images, labels = [], []
  n = 0
  for batch in data_lib.eval_batches(
    config.dataset,
    global_batch_size=min(size, 256),
    method="center",
    split=split_name,
    data_dir=config.data_dir or None,
    image_size=config.image_size or None,
    local_device_count=1,
  ):
    mask = batch["mask"].reshape(-1)
    img = batch["image"].reshape((-1,) + batch["image"].shape[3:])[mask]
    images.append(img)
    labels.append(batch["label"].reshape(-1)[mask])
    n += len(img)
    if n >= size:
      break
  return np.concatenate(images)[:size], np.concatenate(labels)[:size]


def run_dirs(runs: str | None = None, workdirs: Sequence[str] = ()) -> list[str]:
  """Explicit workdirs, plus every subdirectory of ``runs`` holding a config.json."""
  out = [w for w in workdirs if w]
  if runs:
    for path in sorted(storage.check_access(runs, "--runs").iterdir()):
      if (path / CONFIG_FILE).exists():
        out.append(os.fspath(path))
  if not out:
    raise FileNotFoundError(f"no training workdirs given (--workdirs) or found in --runs={runs}")
  return out


def model_label(config) -> str:
  """``resnet20`` / ``plain20`` plus the non-default overrides, e.g. ``resnet20 (x0.5)``."""
  mo = config.model_overrides
  extra = []
  if mo.get("width_multiplier") not in (None, "", 1, 1.0):
    extra.append(f"x{mo.width_multiplier:g}")
  if mo.get("shortcut") not in (None, ""):
    extra.append(f"shortcut {mo.shortcut}")
  return display_name(config) + (f" ({', '.join(extra)})" if extra else "")


def is_plain(config) -> bool:
  return config.model.startswith("plain") or config.model_overrides.get("shortcut") == "none"


def depth_of(name) -> int:
  """Depth from a name (``plain56`` -> 56) or a config (its display name)."""
  if not isinstance(name, str):
    name = display_name(name)
  digits = "".join(ch for ch in name if ch.isdigit())
  return int(digits) if digits else 0


# --- outputs --------------------------------------------------------------------------------------


def markdown_table(
  header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
  align = align or ["---"] + ["---:"] * (len(header) - 1)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
  return "\n".join(lines) + "\n"


def output_path(out, name: str) -> str:
  """``out/name``, where ``out`` (an analysis's ``--out``) may be a folder or a bucket URL."""
  return os.fspath(storage.location(out) / name)


def write_text(path: str, text: str) -> str:
  storage.write_atomically(path, text)
  return path


def write_json(path: str, obj) -> str:
  return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def pct(v) -> str:
  return "" if v is None else f"{100 * float(v):.2f}%"


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def save_figure(fig, path: str) -> str:
  target = storage.location(path)
  if not storage.is_object_store(target):
    target.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  with target.open("wb") as f:
    fig.savefig(f, format="png", dpi=110)
  pyplot().close(fig)
  return path
