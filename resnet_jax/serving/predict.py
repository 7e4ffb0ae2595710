"""``resnet-jax predict``: classify image files with a trained run (or converted weights).

Each file goes through the run's own test-time views (``ServingModel.eval_views``, as ``eval``
takes them; ``data.augment``: decode to the network's channel count -- grayscale, RGB and RGBA
alike --, resize, centre or ten crops, normalisation) and ``train.steps.predict_step`` (the network
in inference mode, softmax averaged over the views), pmapped over every local device in batches of
``batch_per_device`` images per device, the last one padded.
A file that cannot be read or decoded is named, skipped and counted; an image smaller than the crop
has its shorter side resized up to the crop first, and is named and counted too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from etils import epath
from flax import jax_utils

from resnet_jax import metrics as metrics_lib
from resnet_jax.data import augment
from resnet_jax.serving.model import ServingError
from resnet_jax.serving.model import ServingModel
from resnet_jax.train import state as state_lib
from resnet_jax.train import steps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
METHODS = ("center", "ten_crop")


@dataclasses.dataclass(frozen=True)
class Prediction:
  path: str
  top: tuple[tuple[int, float], ...]  # (class index, probability), most probable first
  # (H, W) of an image smaller than the crop, whose shorter side was resized up to it; else None.
  resized_from: tuple[int, int] | None = None

  def to_json(self, model: ServingModel) -> dict:
    record = {
      "path": self.path,
      "top_k": [
        {"index": i, "label": model.labels[i], "name": model.names[i], "probability": p}
        for i, p in self.top
      ],
    }
    if self.resized_from:
      record["resized_from"] = list(self.resized_from)
    return record


@dataclasses.dataclass(frozen=True)
class Unreadable:
  path: str
  reason: str


def find_images(paths: Sequence[str]) -> list[str]:
  """Files as given (any name), and every .jpg/.jpeg/.png below each folder, sorted."""
  found = []
  for p in paths:
    path = epath.Path(p)
    if path.is_dir():
      found += sorted(_images_below(path))
    else:
      found.append(p)  # a missing file is reported as unreadable, with the others
  return found


def _images_below(folder: epath.Path) -> Iterable[str]:
  # epath refuses recursive globs (one RPC per match on a bucket); walk the folders instead.
  for entry in folder.iterdir():
    if entry.is_dir():
      yield from _images_below(entry)
    elif entry.suffix.lower() in IMAGE_SUFFIXES:
      yield os.fspath(entry)


def _inference_state(model: ServingModel) -> state_lib.TrainState:
  """The pytree ``steps.predict_step`` reads (params and BN statistics; no optimizer)."""
  return state_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=model.variables["params"],
    batch_stats=model.variables["batch_stats"],
    opt_state=(),
    lr_scale=jnp.ones((), jnp.float32),
  )


def _transform(model: ServingModel, method: str):
  """The run's test-time views of one file, as ``eval`` takes them (``ServingModel.eval_views``)."""
  return augment.views_transform(
    model.eval_views(method), mean=model.mean, std=model.std, channels=model.channels
  )


def _smallest_side(model: ServingModel, method: str) -> int:
  """The side below which an image is resized up before its views (0: the views resize all)."""
  views = model.eval_views(method)
  return 0 if views.resize else views.crop


def _decoded(
  files: list[str], transform, *, channels: int, min_side: int
) -> Iterable[tuple[int, np.ndarray, tuple[int, int]]]:
  """(index into files, views [V, H, W, C], (H, W) as decoded) of every file that decodes; the
  others are skipped. An image whose shorter side is below ``min_side`` (smaller than the crop) has
  that side resized up to it first, so that its crops are the crop's size as every other's."""

  def load(index, path):
    image = augment.decode(tf.io.read_file(path), channels)
    shape = tf.shape(image)[:2]
    small = tf.reduce_min(shape) < min_side
    image = tf.cond(
      small,
      lambda: augment.resize_shorter_side(image, min_side),
      lambda: tf.cast(image, tf.float32),
    )
    return index, transform(image), shape

  # A local file that is missing or unreadable is left to _reason: TensorFlow would log its failure.
  indices = [i for i, f in enumerate(files) if "://" in f or os.access(f, os.R_OK)]
  if not indices:
    return
  paths = np.asarray([files[i] for i in indices], dtype=object)
  ds = tf.data.Dataset.from_tensor_slices((np.asarray(indices, np.int64), paths))
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
  for index, views, shape in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    yield int(index), views, (int(shape[0]), int(shape[1]))


# What a file that decodes starts with (tf.io.decode_image: JPEG, PNG, GIF, BMP).
_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP"}


def _reason(path: str) -> str:
  """Why one file failed, read off the file (a second decode by TensorFlow would log its failure)."""
  try:
    with epath.Path(path).open("rb") as f:
      head = f.read(8)
  except Exception as e:  # noqa: BLE001 - missing, a folder, no permission, ...
    return f"{type(e).__name__}: {e.strerror or e}" if isinstance(e, OSError) else type(e).__name__
  if not head:
    return "empty file"
  kind = next((k for magic, k in _SIGNATURES.items() if head.startswith(magic)), None)
  if kind:
    return f"a corrupt or truncated {kind}"
  return "not a JPEG or PNG image"


def classify(
  model: ServingModel,
  paths: Sequence[str],
  *,
  top_k: int = 5,
  method: str = "center",
  batch_per_device: int = 8,
  progress: bool = True,
) -> tuple[list[Prediction], list[Unreadable]]:
  """Top-``top_k`` classes of every image under ``paths``; and the files that could not be read."""
  if method not in METHODS:
    raise ServingError(f"--eval_method={method!r}: predict supports {', '.join(METHODS)}")
  if top_k < 1:
    raise ServingError(f"--top_k={top_k}: must be at least 1")
  top_k = min(top_k, model.num_classes)
  files = find_images(paths)
  if not files:
    raise ServingError(f"no .jpg/.jpeg/.png files in {', '.join(paths)}")
  transform = _transform(model, method)
  min_side = _smallest_side(model, method)
  devices = jax.local_device_count()
  batch = devices * batch_per_device
  p_predict = jax.pmap(
    functools.partial(steps.predict_step, model=model.model), axis_name=steps.AXIS
  )
  state = jax_utils.replicate(_inference_state(model))
  bar = metrics_lib.Progress(len(files), enabled=progress)
  predictions, seen, resized, done = [], set(), {}, 0

  def run(indices, views):
    nonlocal done
    n = len(indices)
    stacked = np.stack(views + [np.zeros_like(views[0])] * (batch - n))
    shaped = stacked.reshape((devices, batch_per_device) + stacked.shape[1:])
    probs = np.asarray(p_predict(state, {"image": shaped})).reshape(batch, -1)[:n]
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    for i, row, p in zip(indices, order, probs):
      top = tuple((int(c), float(p[c])) for c in row)
      predictions.append(Prediction(files[i], top, resized.get(i)))
    done = max(indices) + 1
    bar.update(done, {"images": len(predictions)})

  pending_indices, pending_views = [], []
  for index, views, shape in _decoded(files, transform, channels=model.channels, min_side=min_side):
    seen.add(index)
    if min(shape) < min_side:
      resized[index] = shape
    pending_indices.append(index)
    pending_views.append(views)
    if len(pending_indices) == batch:
      run(pending_indices, pending_views)
      pending_indices, pending_views = [], []
  if pending_indices:
    run(pending_indices, pending_views)
  bar.update(len(files))
  bar.close()
  failed = [Unreadable(f, _reason(f)) for i, f in enumerate(files) if i not in seen]
  return predictions, failed


def format_table(model: ServingModel, predictions: Sequence[Prediction]) -> str:
  """One block per image: its path, then rank, probability and class name."""
  lines = []
  for pred in predictions:
    lines.append(pred.path)
    for rank, (i, p) in enumerate(pred.top, 1):
      label = model.names[i]
      if model.labels[i] != model.names[i]:
        label = f"{model.names[i]} ({model.labels[i]})"
      lines.append(f"  {rank:>2}  {p:8.4f}  {label}")
  return "\n".join(lines)


def _open_output(output: str):
  """A writer to ``output + '.partial'``, renamed over ``output`` when complete."""
  final = epath.Path(output)
  if final.is_dir():
    raise ServingError(
      f"--output={output} is a folder; give a file path, e.g. {final / 'predictions.jsonl'}"
    )
  partial = final.parent / (final.name + ".partial")
  try:
    handle = partial.open("w")
  except Exception as e:  # noqa: BLE001 - not writable, a missing folder, ...
    raise ServingError(
      f"--output={output}: cannot write there ({type(e).__name__}); choose a writable path"
    ) from None
  return final, partial, handle


def predict_command(
  model_loader,
  paths: Sequence[str],
  *,
  top_k: int = 5,
  method: str = "center",
  output: str | None = None,
) -> int:
  """``resnet-jax predict``: prints the table and writes JSON lines (stdout, or ``output``); returns
  the number of images classified. No file readable raises ``ServingError`` (after naming each).
  ``model_loader()`` builds the model after the output is known writable: a bad --output fails in
  a second, not after the network has compiled."""
  if not paths:
    raise ServingError(
      "predict needs image files or folders: resnet-jax predict --workdir=DIR PATH"
    )
  target = _open_output(output) if output else None
  try:
    model = model_loader()
    predictions, failed = classify(
      model, paths, top_k=top_k, method=method, progress=sys.stderr.isatty()
    )
    lines = [json.dumps(p.to_json(model)) for p in predictions]
    if target:
      target[2].write("".join(line + "\n" for line in lines))
      target[2].close()
      if predictions:
        target[1].rename(target[0])
  finally:
    if target:
      target[2].close()
      if target[1].exists():
        target[1].unlink()
  if not target:  # with --output the file holds them: the terminal gets the summary line only
    print(format_table(model, predictions))
    print("\n".join(lines))
  if not predictions:  # nothing classified: the one error line names what was wrong
    first = f"{failed[0].path}: {failed[0].reason}" if failed else "no files"
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    raise ServingError(f"no image could be read as a JPEG or PNG: {first}{more}")
  for f in failed:
    print(f"skipped (unreadable): {f.path}: {f.reason}", file=sys.stderr)
  crop = _smallest_side(model, method)
  for p in (p for p in predictions if p.resized_from):
    h, w = p.resized_from
    print(
      f"resized: {p.path}: {h}x{w} is smaller than the {crop} px crop; shorter side resized to {crop}",
      file=sys.stderr,
    )
  n_resized = sum(1 for p in predictions if p.resized_from)
  summary = f"{len(predictions)} images classified, {len(failed)} unreadable skipped"
  if n_resized:
    summary += f", {n_resized} smaller than the crop resized up"
  if target:
    summary += f"; JSON lines in {target[0]}"
  print(summary, file=sys.stderr)
  return len(predictions)
