"""``resnet-jax export``: one serving function -- uint8 images in, class probabilities out.

``serving_function(model)`` applies the run's test-time views in JAX (``ServingModel.eval_views``,
the decision ``eval`` and ``predict`` take too, applied as ``data.augment.view_stack`` does:
bilinear resize of the shorter side without antialiasing, as ``tf.image.resize`` does, centre or
ten crops -- mirrored only where training flipped, shifted by the run's own padding --,
``(x - mean) / std``), then the network in inference mode and the softmax (averaged over the
views). The input is ``uint8 [batch, H, W, C]`` with H x W fixed at export (default: the resize
side squared, e.g. 256 x 256 for ImageNet, or the crop side for 28/32 px datasets) and the batch
dimension symbolic (``jax.export`` shape polymorphism), so one artifact serves every batch size.

Formats (each written to a temporary sibling and renamed into place when complete):
  stablehlo   ``OUT/model.jax_exported`` (``jax.export.Exported.serialize()``, lowered for cpu,
              cuda and tpu: ``Exported.platforms``) and
              ``OUT/model.json`` (class labels and names, input size, channels, checkpoint step).
  savedmodel  ``OUT/<version>/`` (TF Serving's layout; version 1, or one above the highest there)
              through ``jax2tf``: signature ``serving_default`` (``images`` -> ``probabilities``),
              the variables as ``tf.Variable``s, ``assets/class_names.txt`` and ``model.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import uuid
from typing import Any, Callable

import jax
import jax.numpy as jnp
from etils import epath

from resnet_jax.data import augment
from resnet_jax.serving import model as model_lib
from resnet_jax.serving.model import ServingError
from resnet_jax.serving.model import ServingModel

FORMATS = ("stablehlo", "savedmodel")
PLATFORMS = ("cpu", "cuda", "tpu")  # what a StableHLO artifact is lowered for
METHODS = ("center", "ten_crop")
ARTIFACT = "model.jax_exported"
SIDECAR = "model.json"
CLASS_NAMES_ASSET = "class_names.txt"


def default_input_size(model: ServingModel) -> tuple[int, int]:
  side = model.resize_size or model.image_size
  return side, side


def _resize_shorter_side(images, size: int):
  """``augment.resize_shorter_side`` for a static [B, H, W, C]: same output shape, same sampling
  (half-pixel centres, two-tap bilinear, no antialiasing)."""
  h, w = images.shape[1], images.shape[2]
  scale = size / min(h, w)
  new_h = size if h <= w else max(int(round(h * scale)), size)
  new_w = size if w < h else max(int(round(w * scale)), size)
  if (new_h, new_w) == (h, w):
    return images
  return jax.image.scale_and_translate(
    images,
    (images.shape[0], new_h, new_w, images.shape[3]),
    spatial_dims=(1, 2),
    scale=jnp.array([new_h / h, new_w / w], jnp.float32),
    translation=jnp.zeros(2, jnp.float32),
    method="linear",
    antialias=False,
  )


def view_stack(images, views: augment.EvalViews):
  """[B, V, crop, crop, C]: ``augment.view_stack`` (TensorFlow, one image) for a static batch in
  jnp -- the same decision (``ServingModel.eval_views``), the same resize, pad, crops and flips."""
  if views.resize:
    images = _resize_shorter_side(images, views.resize)
  h, w = images.shape[1], images.shape[2]
  size = views.crop
  if min(h, w) < size:
    raise ServingError(
      f"input {h}x{w} is smaller than the {size} px crop; give a larger input size"
    )
  if views.method == "ten_crop" and views.pad:
    p = views.pad
    images = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = h + 2 * p, w + 2 * p
  top, left = (h - size) // 2, (w - size) // 2
  center = images[:, top : top + size, left : left + size]
  if views.method != "ten_crop":
    return center[:, None]
  crops = [
    images[:, :size, :size],
    images[:, :size, w - size :],
    images[:, h - size :, :size],
    images[:, h - size :, w - size :],
    center,
  ]
  crops = jnp.stack(crops, axis=1)
  return jnp.concatenate([crops, crops[:, :, :, ::-1] if views.flip else crops], axis=1)


def portable_network(network):
  """``network`` with ``lax.conv`` convolutions (``conv_impl='xla'``), as serving lowers it.

  oneDNN's convolutions are custom calls without a compatibility guarantee, which ``jax.export``
  refuses to serialize and a server could not run; ``lax.conv`` computes the same function with
  the same parameters (to fp32 rounding), so a run trained with oneDNN exports all the same.
  """
  if getattr(network, "conv_impl", "xla") == "xla":
    return network
  return network.clone(conv_impl="xla")


def serving_function(model: ServingModel, method: str = "center") -> Callable[..., Any]:
  """``fn(variables, images uint8 [B, H, W, C]) -> probabilities float32 [B, classes]``.

  The network runs with ``lax.conv`` whatever the run trained with (:func:`portable_network`).
  """
  if method not in METHODS:
    raise ServingError(f"--eval_method={method!r}: export supports {', '.join(METHODS)}")
  views = model.eval_views(method)
  network = portable_network(model.model)
  mean = jnp.asarray(model.mean, jnp.float32)
  std = jnp.asarray(model.std, jnp.float32)

  def serve(variables, images):
    x = view_stack(images.astype(jnp.float32), views)
    centre = mean
    if mean.ndim == 3 and mean.shape[:2] != x.shape[-3:-1]:  # a per-pixel mean image, resized
      centre = jax.image.resize(mean, (*x.shape[-3:-1], mean.shape[2]), "bilinear")
    x = (x - centre) / std
    b, v = x.shape[0], x.shape[1]
    logits = network.apply(variables, x.reshape((b * v,) + x.shape[2:]), train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return probs.reshape(b, v, -1).mean(axis=1)

  return serve


def input_spec(model: ServingModel, input_size: tuple[int, int]) -> jax.ShapeDtypeStruct:
  (batch,) = jax.export.symbolic_shape("batch")
  return jax.ShapeDtypeStruct((batch, *input_size, model.channels), jnp.uint8)


def export_stablehlo(model: ServingModel, method: str, input_size) -> jax.export.Exported:
  """The serving function with the variables folded in as constants: one self-contained artifact
  lowered for every platform in ``PLATFORMS`` (each its own form: the CPU's matmul 1x1 convs, plain
  convolutions for GPU and TPU), so one file serves on any of them."""
  serve = serving_function(model, method)
  variables = model.variables
  return jax.export.export(jax.jit(lambda images: serve(variables, images)), platforms=PLATFORMS)(
    input_spec(model, input_size)
  )


def _sidecar(model: ServingModel, method: str, input_size, fmt: str) -> dict[str, Any]:
  return {
    "format": fmt,
    "input": {"dtype": "uint8", "shape": ["batch", *input_size, model.channels]},
    "input_size": list(input_size),
    "output": "probabilities float32 [batch, classes] (softmax)",
    "eval_method": method,
    "eval_views": dataclasses.asdict(model.eval_views(method)),
    **model.describe(),
  }


def _write_savedmodel(model: ServingModel, method: str, input_size, directory: epath.Path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  serve = serving_function(model, method)
  h, w = input_size
  converted = jax2tf.convert(
    serve,
    polymorphic_shapes=[None, f"(batch, {h}, {w}, {model.channels})"],
    with_gradient=False,
  )
  module = tf.Module()
  module.params = tf.nest.map_structure(
    lambda a: tf.Variable(a, trainable=False), jax.device_get(model.variables)
  )

  @tf.function(
    autograph=False,
    input_signature=[tf.TensorSpec([None, h, w, model.channels], tf.uint8, name="images")],
  )
  def serving_default(images):
    return {"probabilities": converted(module.params, images)}

  module.serving_default = serving_default
  with tempfile.TemporaryDirectory() as tmp:  # the asset keeps its file name: write it apart
    names = os.path.join(tmp, CLASS_NAMES_ASSET)
    with open(names, "w") as f:
      f.write("".join(f"{label}\t{name}\n" for label, name in zip(model.labels, model.names)))
    module.class_names = tf.saved_model.Asset(names)
    tf.saved_model.save(
      module, os.fspath(directory), signatures={"serving_default": serving_default}
    )


def _next_version(out: epath.Path) -> int:
  versions = [int(p.name) for p in out.iterdir() if p.name.isdigit()] if out.is_dir() else []
  return max(versions, default=0) + 1


def export_model(
  model: ServingModel,
  fmt: str,
  out: str,
  *,
  method: str = "center",
  input_size: tuple[int, int] | None = None,
) -> str:
  """Writes the serving function of ``model`` in format ``fmt`` under ``out``; returns the path
  written (``out`` for stablehlo, ``out/<version>`` for savedmodel). Nothing is left behind on
  failure."""
  check_request(fmt, out, method)
  input_size = tuple(input_size or default_input_size(model))
  root = epath.Path(out)
  root_existed = root.exists()
  final = root / str(_next_version(root)) if fmt == "savedmodel" else root
  staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
  try:
    staging.mkdir(parents=True)
  except Exception as e:  # noqa: BLE001 - permissions, a file in the way, ...
    raise ServingError(
      f"--out={out}: cannot create {final} ({type(e).__name__}); choose a writable path"
    ) from None
  try:
    sidecar = _sidecar(model, method, input_size, fmt)
    if fmt == "stablehlo":
      exported = export_stablehlo(model, method, input_size)
      (staging / ARTIFACT).write_bytes(bytes(exported.serialize()))
      sidecar["platforms"] = list(exported.platforms)
    else:
      _write_savedmodel(model, method, input_size, staging)
    (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    staging.rename(final)
  finally:
    if staging.exists():
      staging.rmtree()
    if not root_existed and root.exists() and not any(root.iterdir()):
      root.rmdir()  # we created it for a version that was never written
  return os.fspath(final)


def check_request(fmt: str, out: str, method: str) -> None:
  """Refuses a bad format, method or --out before anything loads or compiles."""
  if fmt not in FORMATS:
    raise ServingError(f"--format={fmt!r}: choose one of {', '.join(FORMATS)}")
  if method not in METHODS:
    raise ServingError(f"--eval_method={method!r}: export supports {', '.join(METHODS)}")
  root = epath.Path(out)
  if fmt == "stablehlo" and root.exists():
    raise ServingError(f"--out={out} already exists; choose a new path (nothing was overwritten)")
  if fmt == "savedmodel" and root.exists() and not root.is_dir():
    raise ServingError(f"--out={out} is a file; give a folder for the SavedModel versions")
  parent = root if root.exists() else root.parent
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if parent.is_dir() and not os.access(parent, os.W_OK) and "://" not in out:
    raise ServingError(f"--out={out}: {parent} is not writable; choose a writable path")


def export_command(
  workdir: str,
  fmt: str,
  out: str,
  *,
  method: str = "center",
  config=None,
  input_size=None,
  use_ema: bool | None = None,
) -> str:
  """``resnet-jax export``: checks the request, loads the run, exports; returns the line to print.

  ``use_ema`` as in ``serving.load``: by default a run's moving average when it kept one.
  """
  check_request(fmt, out, method)
  model = model_lib.load(workdir, config=config, use_ema=use_ema)
  input_size = tuple(input_size or default_input_size(model))
  path = export_model(model, fmt, out, method=method, input_size=input_size)
  weights = ", its moving average" if model.ema else ""
  return (
    f"exported {model.config.model} (checkpoint step {model.step}{weights}, "
    f"{model.num_classes} classes, "
    f"uint8 [batch, {', '.join(map(str, input_size))}, {model.channels}] in, "
    f"probabilities out) as {fmt}{' for ' + '/'.join(PLATFORMS) if fmt == 'stablehlo' else ''} "
    f"-> {path}"
  )
