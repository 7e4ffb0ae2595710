"""Gradient flow: the norm of the loss gradient w.r.t. each block's input and each block's
parameters, by depth, at initialisation and after training, plain vs residual.

For a residual block ``y = relu(x + F(x))`` the identity path adds ``+1`` to ``dy/dx``, so
``dL/dx`` reaches early blocks without passing through every ``F``; a plain net's gradient has to
go through every layer. The loss is the mean softmax cross-entropy on a batch of (unaugmented)
training images, the network in training mode (BN batch statistics), as in a training step
(without weight decay). ``dL/d(block input)`` is taken through an additive zero perturbation of
each block's input, inserted with ``flax.linen.intercept_methods`` (the models are not changed).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax import runs
from resnet_jax.analysis import inputs, recipes, report
from resnet_jax.models import blocks as blocks_lib

_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")


def _is_block(module) -> bool:
  return (
    isinstance(module, blocks_lib._Block)
    and bool(_BLOCK.match(module.name or ""))
    and len(module.scope.path) == 1
  )  # pylint: disable=protected-access


def block_names(params) -> list[str]:
  names = [k for k in params if _BLOCK.match(k)]
  return sorted(names, key=lambda n: tuple(int(g) for g in _BLOCK.match(n).groups()))


def loss_fn(model, variables, images, labels, num_classes: int, train: bool = True):
  """``f(params, deltas) -> loss``; ``deltas[name]`` is added to block ``name``'s input."""

  def f(params, deltas):
    def add_delta(next_fun, args, kwargs, context):
      m = context.module
      if context.method_name == "__call__" and _is_block(m) and m.name in deltas:
        args = (args[0] + deltas[m.name],) + tuple(args[1:])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(add_delta):
      out = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        images,
        train=train,
        mutable=["batch_stats"] if train else False,
      )
    logits = out[0] if train else out
    onehot = jax.nn.one_hot(labels, num_classes)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot).mean()

  return f


def block_input_shapes(model, variables, images, train: bool = True) -> dict[str, tuple]:
  shapes = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == "__call__" and _is_block(m):
      shapes[m.name] = tuple(args[0].shape)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
      lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"] if train else False),
      variables,
      images,
    )
  return shapes


def gradient_norms(
  model, variables, images, labels, num_classes: int, train: bool = True
) -> dict[str, Any]:
  """``{'blocks': [names], 'input_grad_norm': [...], 'param_grad_norm': [...], 'loss': float}``:
  L2 norms (over the whole batch tensor / every parameter of the block) in network order."""
  names = block_names(variables["params"])
  shapes = block_input_shapes(model, variables, images, train)
  deltas = {n: jnp.zeros(shapes[n], jnp.float32) for n in names}
  f = loss_fn(model, variables, images, labels, num_classes, train)
  loss, (g_params, g_inputs) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
    variables["params"], deltas
  )
  return {
    "blocks": names,
    "loss": float(loss),
    "input_grad_norm": [float(optax.global_norm(g_inputs[n])) for n in names],
    "param_grad_norm": [float(optax.global_norm(g_params[n])) for n in names],
  }


def measure(workdirs: Sequence[str], *, num_images: int = 128, step: int | None = None):
  """Gradient norms of each run at initialisation and at checkpoint ``step`` (default: latest), on
  its first ``num_images`` training images; plain nets first, then by depth."""
  results = []
  for w in workdirs:
    run = runs.load(w, step)
    config = run.config
    images, labels = inputs.image_batch(config, split="train", size=num_images)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    init = inputs.init_variables(run.model, config, images.shape[1:])
    for when, variables in (("init", init), ("trained", run.variables)):
      g = gradient_norms(run.model, variables, images, labels, run.model.num_classes)
      results.append(
        {
          "workdir": w,
          **recipes.describe(config),
          "when": when,
          "step": 0 if when == "init" else run.step,
          **g,
        }
      )
  results.sort(key=lambda r: (not r["plain"], r["depth"], r["when"]))
  return results


def _figure(results):
  plt = report.pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
  labels = sorted({(not r["plain"], r["depth"], r["label"]) for r in results})
  cmap = plt.get_cmap("tab10")
  colors = {lab: cmap(i % 10) for i, (_, _, lab) in enumerate(labels)}
  for r in results:
    col = 0 if r["when"] == "init" else 1
    x = np.arange(1, len(r["blocks"]) + 1) / len(r["blocks"])
    style = "--" if r["plain"] else "-"
    for row, key in enumerate(("input_grad_norm", "param_grad_norm")):
      axes[row, col].semilogy(
        x, r[key], style, marker="o", ms=2.5, color=colors[r["label"]], label=f"{r['label']}"
      )
  for col, when in enumerate(("at initialisation", "after training")):
    axes[0, col].set_title(f"||dL/d(block input)|| {when}")
    axes[1, col].set_title(f"||dL/d(block parameters)|| {when}")
    for row in range(2):
      ax = axes[row, col]
      ax.set_ylabel("L2 norm of gradient (log scale)")
      ax.grid(alpha=0.3, which="both")
      ax.legend(fontsize=7, title="dashed: plain, solid: residual", title_fontsize=7)
    axes[1, col].set_xlabel("relative block depth (block index / number of blocks)")
  fig.suptitle("Gradient flow by depth: plain vs residual")
  return fig


_HEADER = (
  "model",
  "weights",
  "step",
  "loss",
  "input grad first",
  "input grad last",
  "ratio",
  "param grad first",
  "param grad last",
  "ratio",
)


def _table(results, num_images: int) -> str:
  rows = []
  for r in results:
    gi, gp = r["input_grad_norm"], r["param_grad_norm"]
    rows.append(
      [r["label"], r["when"], r["step"], f"{r['loss']:.3f}"]
      + [f"{v:.3g}" for g in (gi, gp) for v in (g[0], g[-1], g[0] / g[-1])]
    )
  return (
    f"Loss-gradient norms on {num_images} training images (training-mode BN). "
    "first/last = first/last residual (or plain) block; ratio first/last < 1 means the "
    "gradient shrinks towards the input.\n\n" + report.markdown_table(_HEADER, rows)
  )


def run(
  out: str, workdirs: Sequence[str], *, num_images: int = 128, step: int | None = None
) -> dict[str, Any]:
  """Writes ``gradient_flow.png``, ``.md`` and ``.json`` (init and trained, per run)."""
  results = measure(workdirs, num_images=num_images, step=step)
  written = report.write_outputs(
    out,
    "gradient_flow",
    figure=_figure(results),
    table=_table(results, num_images),
    rows=results,
  )
  return {"results": results, **written}
