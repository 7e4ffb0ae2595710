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
        "seed": int(run.config.seed),
        "step": run.step,
        "layers": [n for n, _ in stds],
        "std": [s for _, s in stds],
      }
    )
  results.sort(key=lambda r: (not r["plain"], r["depth"], r["label"], r["seed"]))
  return results


def by_net(results) -> dict[str, list[dict[str, Any]]]:
  """Runs grouped by net (label), in ``results``' order: the seeds of one net together."""
  groups = {}
  for r in results:
    groups.setdefault(r["label"], []).append(r)
  return groups


def _figure(results):
  plt = report.pyplot()
  fig, axes = plt.subplots(2, 1, figsize=(9, 7.5))
  for label, group in by_net(results).items():
    style = "--" if group[0]["plain"] else "-"
    stds = np.array([g["std"] for g in group])
    seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
    for ax, vals in ((axes[0], stds), (axes[1], -np.sort(-stds, axis=1))):
      x = np.arange(1, vals.shape[1] + 1)
      (line,) = ax.plot(x, vals.mean(0), style, marker="o", ms=2.5, label=label + seeds)
      if len(group) > 1:
        ax.fill_between(x, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.15, lw=0)
  axes[0].set_title("Std of 3x3 layer responses (after BN, before addition/ReLU), network order")
  axes[1].set_title("Same, sorted in descending order (mean over seeds; band: min-max)")
  for ax, xl in zip(axes, ("layer index (original order)", "layer index (sorted by magnitude)")):
    ax.set_xlabel(xl)
    ax.set_ylabel("std of response (normalised input units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
  return fig


_HEADER = (
  "model",
  "seeds",
  "step",
  "3x3 layers",
  "mean std",
  "median std",
  "min std",
  "max std",
  "mean std, last third",
)


def _table(results, num_images: int) -> str:
  rows = []
  for label, group in by_net(results).items():
    stds = np.array([g["std"] for g in group])
    per_run = lambda f, stds=stds: f"{np.mean([f(s) for s in stds]):.3f}"  # noqa: E731
    rows.append(
      [
        label,
        len(group),
        ",".join(sorted({str(g["step"]) for g in group})),
        stds.shape[1],
        per_run(np.mean),
        per_run(np.median),
        per_run(np.min),
        per_run(np.max),
        per_run(lambda s: np.mean(s[-len(s) // 3 :])),
      ]
    )
  return (
    f"Std of each 3x3 layer's response on {num_images} test images (inference mode); each "
    "statistic over a run's layers, then averaged over the net's seeds.\n\n"
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
