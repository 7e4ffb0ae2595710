"""The loss landscape (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape of
Neural Nets", §4 and Fig. 5): the training loss around a trained net's weights along two random
filter-normalised directions, as a 2-D grid, and along the first direction as a 1-D slice.

A direction ``d`` has the shape of the parameters. Each filter of a conv kernel (one output
channel: ``kernel[..., j]``; a dense kernel's output unit likewise) is drawn from N(0, 1) and
rescaled to the norm of the same filter of the weights, ``d_j <- d_j ||w_j|| / ||d_j||``; BN
parameters and biases (every parameter of one dimension) are zero in the direction, as in Li et
al.'s ``ignore='biasbn'``. The loss at ``(a, b)`` is the mean softmax cross-entropy (no weight
decay) of ``w + a d1 + b d2`` on a fixed subset of training images (centre transform, no
augmentation), with BN in inference mode: the run's running statistics, unchanged.

The points are computed in batches of ``chunk``, one compiled ``lax.map`` over the batch, and
written to ``OUT/landscape_points/<run>.json`` after each batch: a rerun with the same settings
skips the points already there.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax import runs, storage
from resnet_jax.analysis import inputs, recipes, report

POINTS_DIR = "landscape_points"


def filter_normalized_direction(key, params):
  """A random direction shaped like ``params``: every filter (last axis of a kernel of two or more
  dimensions) with the norm of the same filter of ``params``; one-dimensional parameters zero."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, w in zip(keys, leaves):
    w = jnp.asarray(w, jnp.float32)
    if w.ndim <= 1:
      out.append(jnp.zeros_like(w))
      continue
    d = jax.random.normal(k, w.shape, jnp.float32)
    axes = tuple(range(w.ndim - 1))
    w_norm = jnp.sqrt(jnp.sum(w * w, axis=axes, keepdims=True))
    d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
    out.append(d * w_norm / (d_norm + 1e-10))
  return jax.tree_util.tree_unflatten(treedef, out)


def directions(params, seed: int = 0):
  """The two filter-normalised directions of ``seed``."""
  key = jax.random.key(seed)
  draw = jax.jit(filter_normalized_direction)  # one compile, not one per parameter
  return tuple(draw(jax.random.fold_in(key, i), params) for i in range(2))


def loss_function(model, num_classes: int):
  """``losses(variables, d1, d2, images, labels, coefficients[P, 2]) -> [P]`` (jitted): the loss
  at ``params + a d1 + b d2`` for each row ``(a, b)``, BN in inference mode."""

  def losses(variables, d1, d2, images, labels, coefficients):
    onehot = jax.nn.one_hot(labels, num_classes)

    def at(ab):
      params = jax.tree_util.tree_map(
        lambda w, x, y: w + ab[0] * x + ab[1] * y, variables["params"], d1, d2
      )
      logits = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, images, train=False
      )
      return optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot).mean()

    return jax.lax.map(at, coefficients)

  return jax.jit(losses)


def grid_coefficients(grid: int, span: float, slice_points: int) -> np.ndarray:
  """The ``(a, b)`` rows: the 2-D grid (``a`` along columns, ``b`` along rows; ``grid`` x
  ``grid`` over ``[-span, span]^2``), then the 1-D slice (``slice_points`` values of ``a``,
  ``b = 0``), then the origin."""
  axis = np.linspace(-span, span, grid)
  b, a = np.meshgrid(axis, axis, indexing="ij")
  two_d = np.stack([a.ravel(), b.ravel()], axis=1)
  one_d = np.stack([np.linspace(-span, span, slice_points), np.zeros(slice_points)], axis=1)
  return np.concatenate([two_d, one_d, np.zeros((1, 2))]).astype(np.float32)


def _read_points(path: str, settings: dict) -> list:
  target = storage.location(path)
  if not target.exists():
    return []
  saved = json.loads(target.read_text())
  if saved.get("settings") != settings:
    print(f"landscape: {path} was computed with other settings; starting it again")
    return []
  return saved["loss"]


def landscape(
  model,
  variables,
  images,
  labels,
  *,
  grid: int = 21,
  span: float = 1.0,
  slice_points: int = 51,
  direction_seed: int = 0,
  chunk: int = 25,
  points_path: str | None = None,
  settings: dict | None = None,
) -> dict[str, Any]:
  """The loss on the 2-D grid, the 1-D slice and at the origin (:func:`grid_coefficients`). ``points_path``: the
  json the points are written to after each batch and read back from (points computed with the
  same ``settings`` are not computed again)."""
  coefficients = grid_coefficients(grid, span, slice_points)
  settings = {
    **(settings or {}),
    "grid": grid,
    "span": span,
    "slice_points": slice_points,
    "direction_seed": direction_seed,
    "num_images": len(images),
  }
  loss = _read_points(points_path, settings) if points_path else []
  loss = loss + [None] * (len(coefficients) - len(loss))
  todo = [i for i, v in enumerate(loss) if v is None]
  computed = len(todo)
  if todo:
    d1, d2 = directions(variables["params"], direction_seed)
    losses = loss_function(model, model.num_classes)
    (images, labels), (variables, d1, d2) = inputs.across_devices(
      [np.asarray(images), np.asarray(labels)], [variables, d1, d2]
    )
    for start in range(0, len(todo), chunk):
      batch = todo[start : start + chunk]
      rows = np.zeros((chunk, 2), np.float32)  # padded: one compile for every batch
      rows[: len(batch)] = coefficients[batch]
      (rows,) = inputs.across_devices([], [rows])[1]
      values = np.asarray(losses(variables, d1, d2, images, labels, rows))
      for i, v in zip(batch, values):
        loss[i] = float(v)
      if points_path:
        report.write_json(points_path, {"settings": settings, "loss": loss})
  n2 = grid * grid
  return {
    "axis": np.linspace(-span, span, grid).tolist(),
    "loss_2d": np.asarray(loss[:n2]).reshape(grid, grid).tolist(),  # [b index][a index]
    "slice_axis": coefficients[n2:-1, 0].tolist(),
    "loss_1d": loss[n2:-1],
    "loss_at_origin": loss[-1],
    "computed": computed,
    "settings": settings,
  }


def local_minima(values) -> int:
  """Points strictly below all their neighbours (8 in 2-D, 2 in 1-D; fewer at the edges): 1 for
  a convex bowl."""
  v = np.asarray(values, float)
  padded = np.pad(v, 1, constant_values=np.inf)
  lower = np.ones(v.shape, bool)
  for offset in np.ndindex(*(3,) * v.ndim):
    if all(o == 1 for o in offset):
      continue
    window = tuple(slice(o, o + n) for o, n in zip(offset, v.shape))
    lower &= v < padded[window]
  return int(lower.sum())


def _points_file(out, workdir: str, step: int) -> str:
  name = os.path.basename(os.path.normpath(os.fspath(workdir))) or "run"
  return report.output_path(out, f"{POINTS_DIR}/{name}_step{step}.json")


def measure(
  out,
  workdirs: Sequence[str],
  *,
  num_images: int = 256,
  step: int | None = None,
  **kwargs,
) -> list[dict[str, Any]]:
  """:func:`landscape` of each run's checkpoint ``step`` (default: latest) on its first
  ``num_images`` training images, its points kept under ``OUT/landscape_points/``."""
  rows = []
  for w in workdirs:
    start = time.perf_counter()
    run = runs.load(w, step)
    images, labels = inputs.image_batch(run.config, split="train", size=num_images)
    settings = {"workdir": os.fspath(w), "step": run.step}
    result = landscape(
      run.model,
      run.variables,
      images,
      labels,
      points_path=_points_file(out, w, run.step),
      settings=settings,
      **kwargs,
    )
    rows.append(
      {
        "workdir": w,
        **recipes.describe(run.config),
        "seed": run.config.seed,
        "step": run.step,
        **result,
        "local_minima_2d": local_minima(result["loss_2d"]),
        "local_minima_1d": local_minima(result["loss_1d"]),
        "wall_time_s": time.perf_counter() - start,
      }
    )
  rows.sort(key=lambda r: (not r["plain"], r["depth"], r["seed"]))
  return rows


def _figure(rows):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, len(rows) + 1, figsize=(4.6 * (len(rows) + 1), 4.2), squeeze=False)
  axes = axes[0]
  for ax, r in zip(axes, rows):
    axis = np.asarray(r["axis"])
    log_loss = np.log10(np.maximum(np.asarray(r["loss_2d"]), 1e-8))
    filled = ax.contourf(axis, axis, log_loss, levels=20, cmap="viridis")
    ax.contour(axis, axis, log_loss, levels=20, colors="k", linewidths=0.3)
    fig.colorbar(filled, ax=ax, label="log10 training loss")
    ax.plot([0], [0], "r+", ms=10)
    ax.set_title(f"{r['label']} seed {r['seed']} (step {r['step']})", fontsize=9)
    ax.set_xlabel("direction 1 (filter-normalised)")
    ax.set_ylabel("direction 2 (filter-normalised)")
  ax = axes[-1]
  for r in rows:
    ax.semilogy(r["slice_axis"], r["loss_1d"], "--" if r["plain"] else "-", label=r["label"])
  ax.set_title("1-D slice along direction 1")
  ax.set_xlabel("step along direction 1")
  ax.set_ylabel("training loss (log scale)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, title="dashed: plain, solid: residual", title_fontsize=7)
  fig.suptitle("Loss landscape (Li et al. 2018), BN in inference mode")
  return fig


_HEADER = (
  "model",
  "seed",
  "step",
  "loss at 0",
  "grid min",
  "grid max",
  "slice at -0.5 / +0.5 (nearest)",
  "slice at -1 / +1",
  "local minima 2-D",
  "local minima 1-D",
)


def _table(rows) -> str:
  lines = []
  for r in rows:
    axis, slice_loss = np.asarray(r["slice_axis"]), r["loss_1d"]

    def at(x, axis=axis, slice_loss=slice_loss):  # the slice's nearest point
      return f"{slice_loss[int(np.argmin(np.abs(axis - x)))]:.4g}"

    lines.append(
      [r["label"], r["seed"], r["step"], f"{r['loss_at_origin']:.4g}"]
      + [f"{np.min(r['loss_2d']):.4g}", f"{np.max(r['loss_2d']):.4g}"]
      + [f"{at(-h)} / {at(h)}" for h in (0.5, 1.0)]
      + [r["local_minima_2d"], r["local_minima_1d"]]
    )
  return (
    "Training loss (mean cross-entropy, no weight decay) around the final weights along two "
    "filter-normalised random directions, BN in inference mode. Local minima: grid points below "
    "all their neighbours (1 for a convex bowl).\n\n" + report.markdown_table(_HEADER, lines)
  )


def run(
  out: str,
  workdirs: Sequence[str],
  *,
  num_images: int = 256,
  step: int | None = None,
  grid: int = 25,
  span: float = 1.0,
  slice_points: int = 51,
  direction_seed: int = 0,
  chunk: int = 25,
) -> dict[str, Any]:
  """Writes ``landscape.png``, ``.md`` and ``.json`` (each run's grid and slice)."""
  start = time.perf_counter()
  rows = measure(
    out,
    workdirs,
    num_images=num_images,
    step=step,
    grid=grid,
    span=span,
    slice_points=slice_points,
    direction_seed=direction_seed,
    chunk=chunk,
  )
  record = {
    "provenance": report.provenance(),
    "wall_time_s": time.perf_counter() - start,
    "runs": rows,
  }
  written = report.write_outputs(
    out, "landscape", figure=_figure(rows), table=_table(rows), rows=record
  )
  return {"rows": rows, **written}
