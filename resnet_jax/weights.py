"""Pretrained weights: torchvision and timm ResNet state dicts -> our Flax params, and checkpoints.

``from_state_dict(state_dict_or_path, model_name, source=...)`` (``from_torchvision``,
``from_timm``) maps a ``ResNet`` state dict in that library's key layout onto the parameter names
of :mod:`resnet_jax.models.resnet` one-to-one::

    conv1.weight                    -> params/stem_conv/kernel           (O, I, kh, kw) -> (kh, kw, I, O)
    bn1.{weight,bias}               -> params/stem_bn/{scale,bias}
    bn1.running_{mean,var}          -> batch_stats/stem_bn/{mean,var}
    layer{i}.{j}.conv{k}.weight     -> params/stage{i}_block{j}/conv{k}/kernel
    layer{i}.{j}.bn{k}.*            -> .../stage{i}_block{j}/bn{k}/*
    layer{i}.{j}.downsample.0.weight -> params/stage{i}_block{j}/shortcut_conv/kernel
    layer{i}.{j}.downsample.1.*     -> .../stage{i}_block{j}/shortcut_bn/*
    fc.{weight,bias}                -> params/head/{kernel (transposed), bias}

timm's plain resnet/resnext/wide_resnet use exactly these keys (timm began as a copy of
torchvision's resnet.py).  Its other names differ where the network does:

    conv1.{0,1,3,4,6}.*             -> stem_conv1, stem_bn1, stem_conv2, stem_bn2, stem_conv3
      (ResNet-C deep stem; bn1 -> stem_bn3)
    layer{i}.{j}.downsample.{1,2}.* -> shortcut_conv, shortcut_bn   (ResNet-D: downsample.0 is
                                                                      the parameter-free AvgPool)
    layer{i}.{j}.se.fc{1,2}.{weight,bias} -> .../se/fc{1,2}/{kernel,bias}   (squeeze-excitation)

``*.num_batches_tracked`` is ignored.  The expected tree is the train state's abstract variables
at ImageNet's input (:func:`resnet_jax.runs.abstract_variables`: nothing is computed), so every
missing, unexpected or wrongly shaped tensor is found before anything is converted and reported in
one :class:`WeightImportError` (``checkpoint.mismatch``, the one check of a tree); so is a file
that is not a state dict at all.  Our ImageNet models use torchvision's v1.5 stride placement,
option-B shortcuts, padding and BN epsilon, and timm's deep stem, average-pool shortcut and SE
module, so the imported network reproduces the source's eval-mode logits (tests/test_weights.py).

``convert(src, model_name, workdir, source=...)`` writes the result as an Orbax checkpoint (step 0,
state ``{'params', 'batch_stats'}``, meta ``{'model', 'source', 'kind': 'weights'}``) in
``<workdir>/checkpoints``; ``--config.init_from=<workdir>`` starts training from it
(:func:`resnet_jax.runs.initialise_from`, used by ``train.loop``).

torch is an optional extra (``pip install resnet-jax[torch]``), imported only here and only when a
``.pth`` file is read or torch tensors are converted; ``torch.load`` runs with ``weights_only=True``
(no arbitrary unpickling)."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Mapping

import jax
import numpy as np

from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import models
from resnet_jax import runs
from resnet_jax import storage

SUPPORTED = (
  "resnet18",
  "resnet34",
  "resnet50",
  "resnet101",
  "resnet152",
  "resnext50_32x4d",
  "resnext101_32x8d",
  "resnext101_64x4d",
  "wide_resnet50_2",
  "wide_resnet101_2",
)
# timm's names beyond torchvision's: ResNet-C/D (deep stem, average-pool shortcut) and
# squeeze-and-excitation nets; timm's plain resnet/resnext/wide_resnet share torchvision's keys.
TIMM_SUPPORTED = SUPPORTED + (
  "resnet18d",
  "resnet34d",
  "resnet50d",
  "resnet101d",
  "resnet152d",
  "seresnet50",
  "seresnet101",
  "seresnext50_32x4d",
)
SOURCES = ("torchvision", "timm")
_IGNORED_SUFFIXES = ("num_batches_tracked",)


class WeightImportError(ValueError):
  """A state dict or checkpoint that does not fit the model; the message lists every mismatch."""


def supported(source: str) -> tuple[str, ...]:
  """The model names whose ``source`` state dicts can be imported."""
  names = {"torchvision": SUPPORTED, "timm": TIMM_SUPPORTED}.get(source, ())
  registered = set(models.list_models())
  return tuple(n for n in names if n in registered)


# --- source key <-> our path ----------------------------------------------------------------------
_BN_LEAVES = {
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}
_BLOCK = r"stage(\d+)_block(\d+)"
# (our module path, regex) -> the source's module name (re.sub template), first match wins.  Both
# sources name a plain ResNet alike: timm started from a copy of torchvision's resnet.py and kept
# its names for weight compatibility.
_TORCHVISION_MODULES = (
  (r"stem_conv", "conv1"),
  (r"stem_bn", "bn1"),
  (r"head", "fc"),
  (_BLOCK + r"/(conv\d+|bn\d+)", r"layer\1.\2.\3"),
  (_BLOCK + r"/shortcut_conv", r"layer\1.\2.downsample.0"),
  (_BLOCK + r"/shortcut_bn", r"layer\1.\2.downsample.1"),
)
# timm's deep stem is conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv), then bn1; its
# squeeze-and-excitation is a block's ``se`` (fc1/fc2: 1x1 convs with bias).
_TIMM_MODULES = (
  (r"stem_conv1", "conv1.0"),
  (r"stem_bn1", "conv1.1"),
  (r"stem_conv2", "conv1.3"),
  (r"stem_bn2", "conv1.4"),
  (r"stem_conv3", "conv1.6"),
  (r"stem_bn3", "bn1"),
  (_BLOCK + r"/se/(fc1|fc2)", r"layer\1.\2.se.\3"),
) + _TORCHVISION_MODULES
# ResNet-D's shortcut is Sequential(AvgPool2d, conv, bn): the pool holds no parameters but takes
# index 0 (an Identity where the stride is 1).
_TIMM_AVG_DOWN_MODULES = (
  (_BLOCK + r"/shortcut_conv", r"layer\1.\2.downsample.1"),
  (_BLOCK + r"/shortcut_bn", r"layer\1.\2.downsample.2"),
) + _TIMM_MODULES


def _layout(source: str, model_name: str, model_overrides: Mapping[str, Any] | None = None):
  """The module-name table of ``source`` for ``model_name`` (timm's depends on the shortcut)."""
  if source == "torchvision":
    return _TORCHVISION_MODULES
  config = {**models.model_spec(model_name).config, **(model_overrides or {})}
  return _TIMM_AVG_DOWN_MODULES if config.get("shortcut") == "D" else _TIMM_MODULES


def _torch_module(module: str, layout=_TORCHVISION_MODULES) -> str:
  """Our module name (``stage3_block12/shortcut_bn``) -> the source's (``layer3.12.downsample.1``)."""
  for pattern, template in layout:
    if re.fullmatch(pattern, module):
      return re.sub(pattern, template, module)
  raise WeightImportError(
    f"parameter {module!r} has no counterpart in the source's layout "
    f"(pre-activation/plain/CIFAR nets cannot be imported)"
  )


def _torch_key(
  collection: str, path: tuple[str, ...], layout=_TORCHVISION_MODULES, ndim: int = 4
) -> tuple[str, str]:
  """(collection, path of one leaf of ``ndim`` dimensions) -> (source key, transform) with
  transform in 'conv' (OIHW -> HWIO), 'linear' (out,in -> in,out) or 'none'."""
  module, leaf = "/".join(path[:-1]), path[-1]
  prefix = _torch_module(module, layout)
  if leaf == "kernel":
    return f"{prefix}.weight", ("conv" if ndim == 4 else "linear")
  if collection == "params" and leaf == "bias":  # a conv's, the head's or a BN's shift
    return f"{prefix}.bias", "none"
  try:
    return f"{prefix}.{_BN_LEAVES[(collection, leaf)]}", "none"
  except KeyError:
    raise WeightImportError(
      f"{collection}/{'/'.join(path)} has no counterpart in the source's layout"
    ) from None


def _torch_shape(shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
  if transform == "conv":  # ours (kh, kw, cin/groups, cout) <- torch (cout, cin/groups, kh, kw)
    return (shape[3], shape[2], shape[0], shape[1])
  if transform == "linear":
    return (shape[1], shape[0])
  return tuple(shape)


def _to_ours(array: np.ndarray, transform: str) -> np.ndarray:
  if transform == "conv":
    return np.transpose(array, (2, 3, 1, 0))
  if transform == "linear":
    return np.transpose(array, (1, 0))
  return array


# --- reading a state dict -------------------------------------------------------------------------
def _torch_load(path) -> Any:
  """``torch.load`` of ``path`` (weights only); any file it cannot read is one WeightImportError."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
      "reading a .pth file needs PyTorch: pip install 'resnet-jax[torch]'"
    ) from None
  with path.open("rb") as f, warnings.catch_warnings():
    # Its complaints about a foreign pickle would come before the one line that says what is wrong.
    warnings.simplefilter("ignore", UserWarning)
    try:
      return torch.load(f, map_location="cpu", weights_only=True)
    except OSError:
      raise
    except Exception as e:  # noqa: BLE001 -- a file of another kind fails anywhere in the unpickler
      text = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:  # a pickle of objects, e.g. a training script's checkpoint with its arguments
      raise WeightImportError(
        f"{path} holds Python objects besides tensors ({found[1]}), which are not loaded "
        "(torch.load with weights_only=True); save the model's state_dict() alone (timm: "
        "clean_checkpoint.py) and convert that"
      )
  with path.open("rb") as f:
    head = f.read(10)
  if head[8:10] == b'{"':  # safetensors: an 8-byte header length, then the JSON header
    raise WeightImportError(
      f"{path} is a safetensors file, which is not read here; convert "
      "torch.save(safetensors.torch.load_file(path), 'model.pth') instead"
    )
  raise WeightImportError(
    f"{path} is not a PyTorch state dict (a file written by torch.save); nothing was converted"
  )


def _unwrap(loaded: Mapping[str, Any]) -> Mapping[str, Any]:
  """The state dict inside common wrappers: {'state_dict': ...} / {'model': ...} (timm's and
  other training scripts' checkpoints) and DataParallel's 'module.' prefix."""
  for wrapper in ("state_dict", "model"):
    if set(loaded) == {wrapper} or (
      wrapper in loaded and isinstance(loaded[wrapper], Mapping) and "fc.weight" not in loaded
    ):
      loaded = loaded[wrapper]
      break
  keys = list(loaded)
  if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
    loaded = {k[len("module.") :]: v for k, v in loaded.items()}
  return loaded


def _load_state_dict(state_dict_or_path) -> Mapping[str, Any]:
  what = "the state dict"
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    path = storage.check_access(state_dict_or_path, "--src")
    if not path.is_file():
      raise FileNotFoundError(f"no such state-dict file: {path}")
    loaded, what = _torch_load(path), str(path)
  else:
    loaded = state_dict_or_path
  if not isinstance(loaded, Mapping):
    raise WeightImportError(
      f"{what} is not a state dict (a mapping of name -> tensor): it holds a "
      f"{type(loaded).__name__}; nothing was converted"
    )
  loaded = _unwrap(loaded)
  not_tensors = sorted(
    str(k) for k, v in loaded.items() if not (isinstance(k, str) and hasattr(v, "shape"))
  )
  if not loaded or not_tensors:
    raise WeightImportError(
      f"{what} is not a state dict (a mapping of name -> tensor): "
      + (
        checkpoint_lib.listing("entries that are not tensors", not_tensors)
        if loaded
        else "it is empty"
      )
      + "; nothing was converted"
    )
  return loaded


def _shape(value) -> tuple[int, ...]:
  return tuple(int(d) for d in getattr(value, "shape", np.shape(value)))


def _numpy(value, dtype) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor (torch is already imported if we have one)
    value = value.detach().cpu()
    if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
      value = value.float()
    value = value.numpy()
  return np.asarray(value, dtype=dtype)


def expected_tree(model_name: str, num_classes: int | None = None, **model_overrides):
  """Shapes/dtypes of ``{'params', 'batch_stats'}`` of the model as a run of its converted weights
  builds it: the train state's abstract variables at ImageNet's input (no compute)."""
  config = runs.converted_config({"model": model_name})
  config.model_overrides.update(model_overrides)
  model = runs.build_model(config, num_classes, replicated=False)
  return runs.abstract_variables(config, model)


def key_table(model_name: str, source: str, num_classes: int | None = None, **model_overrides):
  """``{our path: (source key, transform, source shape, our dtype)}`` for every leaf of the model's
  ``params`` and ``batch_stats`` (no compute: shapes from :func:`expected_tree`)."""
  layout = _layout(source, model_name, model_overrides)
  table = {}
  for path, leaf in checkpoint_lib.flatten(
    expected_tree(model_name, num_classes, **model_overrides)
  ).items():
    key, transform = _torch_key(path[0], path[1:], layout, len(leaf.shape))
    table[path] = (key, transform, _torch_shape(leaf.shape, transform), leaf.dtype)
  return table


def from_state_dict(
  state_dict_or_path,
  model_name: str,
  *,
  source: str = "torchvision",
  num_classes: int | None = None,
  **model_overrides,
) -> tuple[dict, dict]:
  """A ``source`` state dict (or a ``.pth`` file of one) in that library's key layout ->
  ``(params, batch_stats)``.

  ``source``: one of :data:`SOURCES`; ``model_name``: one of :func:`supported` ``(source)``.
  ``num_classes`` defaults to the length of ``fc.bias`` (so a model fine-tuned to 10 classes
  imports too).  ``model_overrides`` go to ``get_model`` (the tests use ``stage_sizes`` for shallow
  stand-ins of the deepest nets).  Every missing, unexpected (``num_batches_tracked`` aside) or
  wrongly shaped tensor is listed in one :class:`WeightImportError`; values are only converted once
  everything fits.
  """
  if source not in SOURCES:
    raise WeightImportError(f"--from={source!r}: supported sources are {', '.join(SOURCES)}")
  if model_name not in supported(source):
    raise WeightImportError(
      f"model {model_name!r} has no {source} counterpart; supported: {', '.join(supported(source))}"
    )
  state_dict = _load_state_dict(state_dict_or_path)
  if num_classes is None and "fc.bias" in state_dict and len(_shape(state_dict["fc.bias"])) == 1:
    num_classes = _shape(state_dict["fc.bias"])[
      0
    ]  # the bias: unambiguous if fc.weight is transposed
  table = key_table(model_name, source, num_classes, **model_overrides)

  want = {key: shape for key, _, shape, _ in table.values()}
  have = {k: _shape(v) for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
  problem = checkpoint_lib.mismatch(have, want, transposed_hint=True)
  if problem:
    raise WeightImportError(
      f"state dict does not match {source} {model_name} ({num_classes} classes): {problem}. "
      "Nothing was converted."
    )
  converted = {
    path: _to_ours(_numpy(state_dict[key], dtype), transform)
    for path, (key, transform, _, dtype) in table.items()
  }
  variables = checkpoint_lib.unflatten(converted)
  return variables["params"], variables["batch_stats"]


def from_torchvision(state_dict_or_path, model_name: str, **kwargs) -> tuple[dict, dict]:
  """:func:`from_state_dict` of a torchvision ``ResNet`` state dict."""
  return from_state_dict(state_dict_or_path, model_name, source="torchvision", **kwargs)


def from_timm(state_dict_or_path, model_name: str, **kwargs) -> tuple[dict, dict]:
  """:func:`from_state_dict` of a timm ``ResNet`` state dict (resnet, resnet-d, seresnet,
  seresnext: timm's names, timm's keys)."""
  return from_state_dict(state_dict_or_path, model_name, source="timm", **kwargs)


# --- checkpoints ----------------------------------------------------------------------------------
def _has_checkpoints(directory) -> bool:
  return directory.is_dir() and any(True for _ in directory.iterdir())


class WorkdirInUse(WeightImportError, FileExistsError):
  """``convert --workdir`` names a run (or a file): refused before anything is read or written."""


def _check_fresh_workdir(workdir: str, ckpt_dir) -> None:
  """Refuses a workdir that holds a run already (checkpoints or a config.json) or is not a folder."""
  root = ckpt_dir.parent
  if root.exists() and not root.is_dir():
    raise WorkdirInUse(f"--workdir={workdir} is a file; give a new folder for the checkpoint")
  for parent in root.parents:  # a path below a file cannot be created
    if parent.exists():
      if not parent.is_dir():
        raise WorkdirInUse(f"--workdir={workdir}: {parent} is a file; give a new folder")
      break
  if _has_checkpoints(ckpt_dir):
    raise WorkdirInUse(
      f"{ckpt_dir} already has checkpoints; convert into a fresh --workdir "
      f"(nothing was overwritten)"
    )
  if (root / runs.CONFIG_FILE).exists():
    raise WorkdirInUse(
      f"--workdir={workdir} holds a training run ({runs.CONFIG_FILE}); convert into a fresh "
      f"--workdir (nothing was overwritten)"
    )


def convert(
  src, model_name: str, workdir: str, *, source: str = "torchvision", **model_overrides
) -> dict[str, Any]:
  """Imports ``src`` (a ``.pth`` path or a state dict) and saves it at step 0 of
  ``<workdir>/checkpoints``.  Refuses a workdir that already has checkpoints; nothing is written
  unless the import succeeded.  Returns a summary dict (directory, step, parameter count, ...)."""
  if source not in SOURCES:
    raise WeightImportError(f"--from={source!r}: supported sources are {', '.join(SOURCES)}")
  ckpt_dir = storage.check_access(workdir, "--workdir", write=True) / runs.CHECKPOINT_DIR
  _check_fresh_workdir(workdir, ckpt_dir)
  params, batch_stats = from_state_dict(src, model_name, source=source, **model_overrides)
  num_classes = int(params["head"]["bias"].shape[0])
  meta = {"model": model_name, "source": source, "kind": "weights", "num_classes": num_classes}
  if isinstance(src, (str, os.PathLike)):
    meta["src"] = os.fspath(storage.location(src))
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir, keep_best=0, async_save=False)
  try:
    ckpt.save(0, {"params": params, "batch_stats": batch_stats}, meta)
    ckpt.wait()
  finally:
    ckpt.close()
  n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
  return {
    "directory": os.fspath(ckpt_dir),
    "step": 0,
    "model": model_name,
    "source": source,
    "num_classes": num_classes,
    "num_params": n_params,
  }


def convert_command(source: str, model: str, src: str, workdir: str) -> str:
  """``resnet-jax convert --from=SOURCE --model=MODEL --src=FILE.pth --workdir=DIR``: returns the
  one summary line to print."""
  info = convert(src, model, workdir, source=source)
  return (
    f"converted {source} {model} ({info['num_params']:,} parameters, "
    f"{info['num_classes']} classes) from {src} -> {info['directory']} step 0; "
    f"start from it with --config.init_from={storage.location(workdir)}"
  )
