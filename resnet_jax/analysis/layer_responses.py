"""Layer responses (paper Fig. 7): std of each 3x3 layer's response, plain vs residual.

The response of a 3x3 layer is its BN output: after BN, before the addition and the ReLU (for
basic blocks ``bn1`` and ``bn2``; for bottlenecks ``bn2``; the CIFAR stem's ``stem_bn``). It is
captured with flax ``capture_intermediates`` on a batch of test images, the network in inference
mode (BN running statistics), from a run's checkpoint. The std is over every element of the
response (images x positions x channels), ``jnp.std`` of the captured array.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from resnet_jax import runs
from resnet_jax.analysis import inputs, recipes, report

_BN = re.compile(r"(stem_bn|bn\d+)$")


def three_by_three_bns(params) -> list[tuple[str, ...]]:
  """Module paths of the BNs that follow a 3x3 conv, in network order (stem, then the blocks)."""
  paths = []

  def visit(tree, prefix):
    for name, sub in tree.items():
      if not isinstance(sub, dict) and not hasattr(sub, "items"):
        continue
      kernel = sub.get("kernel") if hasattr(sub, "get") else None
      if kernel is not None and kernel.ndim == 4 and kernel.shape[0] == 3 and kernel.shape[1] == 3:
        bn = name.replace("conv", "bn")
        if bn in tree:
          paths.append(prefix + (bn,))
      elif kernel is None:
        visit(sub, prefix + (name,))

  visit(params, ())

  def order(path):
    top = path[0]
    m = re.match(r"stage(\d+)_block(\d+)", top)
    key = (
      (0, 0, 0)
      if top.startswith("stem")
      else (int(m.group(1)), int(m.group(2)), 0)
      if m
      else (99, 0, 0)
    )
    return key + (int(re.sub(r"\D", "", path[-1]) or 0),)

  return sorted(paths, key=order)


def capture_responses(
  model, variables, images, layers: Sequence[tuple[str, ...]] | None = None, train: bool = False
) -> dict[tuple[str, ...], jnp.ndarray]:
  """``{module path: BN output}`` for every (or the given) 3x3 layer on ``images``."""
  layers = list(layers or three_by_three_bns(variables["params"]))
  wanted = set(layers)
  kwargs = (
    {"mutable": ["intermediates", "batch_stats"]} if train else {"mutable": ["intermediates"]}
  )
  _, state = model.apply(
    variables,
    images,
    train=train,
    capture_intermediates=lambda mdl, method: (
      method == "__call__" and tuple(mdl.scope.path) in wanted
    ),
    **kwargs,
  )
  inter = state["intermediates"]
  out = {}
  for path in layers:
    node = inter
    for p in path:
      node = node[p]
    out[path] = node["__call__"][0]
  return out


def response_stds(model, variables, images, layers=None) -> list[tuple[str, float]]:
  """``[(layer name, std)]`` in network order."""
  caps = capture_responses(model, variables, images, layers)
  return [("/".join(p), float(jnp.std(v.astype(jnp.float32)))) for p, v in caps.items()]


def measure(workdirs: Sequence[str], *, num_images: int = 256, step: int | None = None):
  """Response stds of each run's checkpoint ``step`` (default: latest) on its first ``num_images``
  test images; plain nets first, then by depth."""
  results = []
  for w in workdirs:
    run = runs.load(w, step)
    images, _ = inputs.image_batch(run.config, split="eval", size=num_images)
    stds = response_stds(run.model, run.variables, jnp.asarray(images))
    results.append(
      {
        "workdir": w,
        **recipes.describe(run.config),
        "step": run.step,
        "layers": [n for n, _ in stds],
        "std": [s for _, s in stds],
      }
    )
  results.sort(key=lambda r: (not r["plain"], r["depth"]))
  return results


def _figure(results):
  plt = report.pyplot()
  fig, axes = plt.subplots(2, 1, figsize=(9, 7.5))
  for r in results:
    style = "--" if r["plain"] else "-"
    x = np.arange(1, len(r["std"]) + 1)
    axes[0].plot(x, r["std"], style, marker="o", ms=2.5, label=r["label"])
    axes[1].plot(x, sorted(r["std"], reverse=True), style, marker="o", ms=2.5, label=r["label"])
  axes[0].set_title("Std of 3x3 layer responses (after BN, before addition/ReLU), network order")
  axes[1].set_title("Same, sorted in descending order")
  for ax, xl in zip(axes, ("layer index (original order)", "layer index (sorted by magnitude)")):
    ax.set_xlabel(xl)
    ax.set_ylabel("std of response (normalised input units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
  return fig


_HEADER = (
  "model",
  "step",
  "3x3 layers",
  "mean std",
  "median std",
  "min std",
  "max std",
  "mean std, last third",
)


def _table(results, num_images: int) -> str:
  rows = [
    [
      r["label"],
      r["step"],
      len(r["std"]),
      f"{np.mean(r['std']):.3f}",
      f"{np.median(r['std']):.3f}",
      f"{np.min(r['std']):.3f}",
      f"{np.max(r['std']):.3f}",
      f"{np.mean(r['std'][-len(r['std']) // 3 :]):.3f}",
    ]
    for r in results
  ]
  return (
    f"Std of each 3x3 layer's response on {num_images} test images (inference mode).\n\n"
    + report.markdown_table(_HEADER, rows)
  )


def run(
  out: str, workdirs: Sequence[str], *, num_images: int = 256, step: int | None = None
) -> dict[str, Any]:
  """Writes ``layer_responses.png``, ``.md`` and ``.json`` for the runs in ``workdirs``."""
  results = measure(workdirs, num_images=num_images, step=step)
  written = report.write_outputs(
    out,
    "layer_responses",
    figure=_figure(results),
    table=_table(results, num_images),
    rows=results,
  )
  return {"results": results, **written}
