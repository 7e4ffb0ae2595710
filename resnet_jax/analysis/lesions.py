"""Lesions (Veit, Wilber, Belongie 2016, "Residual Networks Behave Like Ensembles of Relatively
Shallow Networks", §4): delete blocks of a trained net at test time and measure the test error.

What deleting a block means here, for both families: **the block outputs its input**. Only blocks
whose output has the shape of their input can be deleted (stride 1, same channels, no projection
shortcut); the first block of each later stage downsamples and is kept, as Veit et al. keep theirs.

* Residual nets (post-activation, ``y = relu(x + F(x))``, He et al. 2015): deleting the residual
  branch ``F`` and keeping the identity shortcut gives ``relu(x)``, and ``x`` is the previous
  block's (or the stem's) ReLU output, so ``relu(x) = x``: the block is the identity. This is what
  zeroing the scale and bias of the branch's last BN computes (the test checks the two agree).
  Veit et al. studied pre-activation nets, where deleting ``F`` leaves ``x`` as well.
* Plain nets: a block has no shortcut, so removing its layers breaks the only path. We define its
  deletion as replacing the block (two conv-BN-ReLU layers) by the identity, the closest analogue;
  what it tests is whether the layers after it still work on the input they now get.

BN keeps the trained running statistics everywhere (inference mode), as Veit et al. did. The
deletion is made with ``flax.linen.intercept_methods`` and a mask the compiled forward pass takes
as an argument, so every deletion pattern of a net reuses one compile (the models are unchanged).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import runs
from resnet_jax.analysis import gradient_flow, inputs, recipes, report

_BATCH = 250  # test images per compiled forward pass (the last batch is padded)


def deletable_blocks(model, variables, image_shape) -> list[str]:
  """The blocks, in network order, whose output has their input's shape and that have no
  projection shortcut: those that can output their input."""
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and gradient_flow._is_block(context.module):  # pylint: disable=protected-access
      shapes[context.module.name] = (tuple(args[0].shape), tuple(out.shape))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros((1, *image_shape))
    )
  params = variables["params"]
  return [
    n
    for n in gradient_flow.block_names(params)
    if shapes[n][0] == shapes[n][1] and "shortcut_conv" not in params[n]
  ]


def logits_function(model, names: Sequence[str]):
  """``f(variables, images, deleted) -> logits`` (jitted), BN in inference mode; ``deleted`` a
  boolean vector over ``names``: the blocks that output their input."""
  index = {n: i for i, n in enumerate(names)}

  def f(variables, images, deleted):
    def lesion(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      m = context.module
      if context.method_name == "__call__" and m.name in index and gradient_flow._is_block(m):  # pylint: disable=protected-access
        return jnp.where(deleted[index[m.name]], args[0], out)
      return out

    with nn.intercept_methods(lesion):
      return model.apply(variables, images, train=False)

  return jax.jit(f)


def error_function(model, variables, images, labels, names: Sequence[str]):
  """``error(deleted) -> top-1 error`` on ``images`` with the blocks ``deleted`` (a boolean
  vector over ``names``) deleted."""
  logits_fn = logits_function(model, names)
  n = len(images)
  padded = -(-n // _BATCH) * _BATCH
  images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
  batches, (variables,) = inputs.across_devices(
    [images[i : i + _BATCH] for i in range(0, padded, _BATCH)], [variables]
  )
  labels = np.asarray(labels)

  def error(deleted) -> float:
    (mask,) = inputs.across_devices([], [np.asarray(deleted, bool)])[1]
    predicted = np.concatenate([np.argmax(logits_fn(variables, b, mask), -1) for b in batches])
    return float(np.mean(predicted[:n] != labels))

  return error


def lesion_errors(
  model, variables, images, labels, *, draws: int = 5, seed: int = 0
) -> dict[str, Any]:
  """Test errors of ``model``: intact, with each deletable block deleted alone, and with ``k``
  random blocks deleted together for ``k = 1..n`` (``draws`` random sets each; one for ``k = n``).
  """
  names = deletable_blocks(model, variables, images.shape[1:])
  error = error_function(model, variables, images, labels, names)
  n = len(names)
  rng = np.random.default_rng(seed)
  random_sets = []
  for k in range(1, n + 1):
    chosen = [sorted(rng.choice(n, size=k, replace=False).tolist()) for _ in range(draws)]
    chosen = chosen[:1] if k == n else chosen
    errors = [error(np.isin(np.arange(n), c)) for c in chosen]
    random_sets.append(
      {"k": k, "deleted": [[names[i] for i in c] for c in chosen], "error": errors}
    )
  return {
    "blocks": gradient_flow.block_names(variables["params"]),
    "deletable": names,
    "error": error(np.zeros(n, bool)),
    "single": [error(np.arange(n) == i) for i in range(n)],
    "random": random_sets,
  }


def measure(
  workdirs: Sequence[str],
  *,
  num_images: int = 10000,
  draws: int = 5,
  seed: int = 0,
  step: int | None = None,
) -> list[dict[str, Any]]:
  """:func:`lesion_errors` of each run's checkpoint ``step`` (default: latest) on the first
  ``num_images`` images of its test split; plain nets first, then by depth."""
  rows = []
  for w in workdirs:
    start = time.perf_counter()
    run = runs.load(w, step)
    images, labels = inputs.image_batch(run.config, split="eval", size=num_images)
    result = lesion_errors(run.model, run.variables, images, labels, draws=draws, seed=seed)
    rows.append(
      {
        "workdir": w,
        **recipes.describe(run.config),
        "seed": run.config.seed,
        "step": run.step,
        "num_images": len(images),
        **result,
        "wall_time_s": time.perf_counter() - start,
      }
    )
  rows.sort(key=lambda r: (not r["plain"], r["depth"], r["seed"]))
  return rows


def _figure(rows):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
  cmap = plt.get_cmap("tab10")
  for i, r in enumerate(rows):
    color = cmap(i % 10)
    style = "--" if r["plain"] else "-"
    label = f"{r['label']} seed {r['seed']}"
    position = [r["blocks"].index(n) + 1 for n in r["deletable"]]
    axes[0].plot(position, [100 * e for e in r["single"]], style, marker="o", ms=3, color=color)
    axes[0].axhline(100 * r["error"], color=color, lw=0.7, ls=":")
    k = [s["k"] for s in r["random"]]
    mean = [100 * np.mean(s["error"]) for s in r["random"]]
    lo = [100 * np.min(s["error"]) for s in r["random"]]
    hi = [100 * np.max(s["error"]) for s in r["random"]]
    axes[1].plot(
      [0, *k], [100 * r["error"], *mean], style, marker="o", ms=3, color=color, label=label
    )
    axes[1].fill_between(k, lo, hi, color=color, alpha=0.15)
  axes[0].set_title("Deleting one block (dotted: intact net)")
  axes[0].set_xlabel("deleted block (index among all blocks; downsampling blocks are kept)")
  axes[1].set_title("Deleting k random blocks (mean, min-max over draws)")
  axes[1].set_xlabel("number of deleted blocks k")
  for ax in axes:
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, title="dashed: plain, solid: residual", title_fontsize=7)
  fig.suptitle("Lesions (Veit et al. 2016): a deleted block outputs its input")
  return fig


_HEADER = (
  "model",
  "seed",
  "step",
  "test err",
  "deletable",
  "one deleted: mean",
  "max",
  "k=2",
  "k=5",
  "k=10",
  "k=n",
)


def _table(rows) -> str:
  lines = []
  for r in rows:
    by_k = {s["k"]: np.mean(s["error"]) for s in r["random"]}
    n = len(r["deletable"])
    single = r["single"] or [None]
    lines.append(
      [r["label"], r["seed"], r["step"], report.pct(r["error"]), n]
      + [report.pct(np.mean(single)) if n else "", report.pct(np.max(single)) if n else ""]
      + [report.pct(by_k.get(k)) for k in (2, 5, 10)]
      + [report.pct(by_k.get(n))]
    )
  return (
    "Test error with blocks deleted at test time (a deleted block outputs its input; for a "
    "post-activation residual block that is relu(shortcut), the identity; for a plain block, "
    "the identity in its place). Downsampling blocks are kept. k=j: mean over the random draws "
    "of j blocks deleted together.\n\n" + report.markdown_table(_HEADER, lines)
  )


def run(
  out: str,
  workdirs: Sequence[str],
  *,
  num_images: int = 10000,
  draws: int = 5,
  seed: int = 0,
  step: int | None = None,
) -> dict[str, Any]:
  """Writes ``lesions.png``, ``.md`` and ``.json`` (every run's errors and deleted sets)."""
  start = time.perf_counter()
  rows = measure(workdirs, num_images=num_images, draws=draws, seed=seed, step=step)
  record = {
    "provenance": report.provenance(),
    "wall_time_s": time.perf_counter() - start,
    "draws": draws,
    "seed": seed,
    "runs": rows,
  }
  written = report.write_outputs(
    out, "lesions", figure=_figure(rows), table=_table(rows), rows=record
  )
  return {"rows": rows, **written}
