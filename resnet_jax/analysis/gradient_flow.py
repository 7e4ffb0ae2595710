"""Gradient flow: the norm of the loss gradient w.r.t. each block's input, each block's parameters
and each layer's parameters, by depth, at initialisation and after training, plain vs residual.

Two sources of nets: an at-initialisation sweep over depths and seeds built from the degradation
recipe (:func:`init_sweep`, no training), and trained runs (:func:`measure`: each run's own
initialisation and its checkpoint). A *layer* is one conv with its BN (the stem's, then two per
basic block), then the head: the 6n+2 layers of the depth count. The headline number is the ratio
of the first layer's (stem conv + BN) parameter-gradient norm to the last block's last layer's: a
plain net with BN whose gradients *explode* towards the input (Yang et al. 2019; Philipp et al.
2018) has it far above 1.

For a residual block ``y = relu(x + F(x))`` the identity path adds ``+1`` to ``dy/dx``, so
``dL/dx`` reaches early blocks without passing through every ``F``; a plain net's gradient has to
go through every layer. The loss is the mean softmax cross-entropy on a batch of (unaugmented)
training images, the network in training mode (BN batch statistics), as in a training step
(without weight decay). ``dL/d(block input)`` is taken through an additive zero perturbation of
each block's input, inserted with ``flax.linen.intercept_methods`` (the models are not changed).
"""

from __future__ import annotations

import functools
import re
import time
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
DEPTHS = (20, 32, 44, 56, 110)  # the paper's CIFAR depths (Fig. 6, Table 6)


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


_LAYER = re.compile(r"(?:conv|bn)(\d+)$")


def layer_names(params) -> list[str]:
  """The parametrised layers in network order: ``stem`` (every ``stem*`` module), then each
  block's ``conv{k}``+``bn{k}`` as ``stageI_blockJ/k``, then ``head`` (with a pre-activation net's
  ``final_bn``). Projection shortcuts are no layer of the depth count and are left out."""
  names = ["stem"] if any(k.startswith("stem") for k in params) else []
  for block in block_names(params):
    indices = sorted({int(m.group(1)) for k in params[block] if (m := _LAYER.match(k))})
    names += [f"{block}/{i}" for i in indices]
  return names + (["head"] if "head" in params else [])


def layer_grad_norms(grads) -> list[float]:
  """The L2 norm of each :func:`layer_names` layer's parameter gradient."""
  out = []
  for name in layer_names(grads):
    if name == "stem":
      part = {k: v for k, v in grads.items() if k.startswith("stem")}
    elif name == "head":
      part = {k: grads[k] for k in ("head", "final_bn") if k in grads}
    else:
      block, i = name.split("/")
      part = {k: v for k, v in grads[block].items() if k in (f"conv{i}", f"bn{i}")}
    out.append(_l2(part))
  return out


def _l2(tree) -> float:
  """The L2 norm over every array of ``tree``, on the host in float64: run eagerly on the device,
  each leaf's shape would compile programs of its own (dozens per net)."""
  leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
  return float(np.sqrt(sum(np.sum(np.square(leaf, dtype=np.float64)) for leaf in leaves)))


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


def gradient_function(model, num_classes: int, train: bool = True):
  """``g(params, batch_stats, images, labels, deltas) -> (loss, (grad params, grad deltas))``,
  jitted once for ``model`` (every seed of a net reuses the compile)."""

  def g(params, batch_stats, images, labels, deltas):
    f = loss_fn(model, {"batch_stats": batch_stats}, images, labels, num_classes, train)
    return f(params, deltas)

  return jax.jit(jax.value_and_grad(g, argnums=(0, 4)))


def gradient_norms(
  model, variables, images, labels, num_classes: int, train: bool = True, grad_fn=None
) -> dict[str, Any]:
  """``{'blocks', 'input_grad_norm', 'param_grad_norm', 'layers', 'layer_grad_norm', 'loss',
  'layer_ratio'}``: L2 norms (over the whole batch tensor / every parameter of the block or layer)
  in network order; ``layer_ratio`` = first layer / last block's last layer. ``grad_fn``: a
  :func:`gradient_function` of ``model`` to reuse."""
  names = block_names(variables["params"])
  shapes = block_input_shapes(model, variables, images, train)
  deltas = {n: jnp.zeros(shapes[n], jnp.float32) for n in names}
  grad_fn = grad_fn or gradient_function(model, num_classes, train)
  loss, (g_params, g_inputs) = jax.device_get(
    grad_fn(variables["params"], variables["batch_stats"], images, labels, deltas)
  )
  layers = layer_grad_norms(g_params)
  last_conv = -2 if "head" in g_params else -1
  return {
    "blocks": names,
    "loss": float(loss),
    "input_grad_norm": [_l2(g_inputs[n]) for n in names],
    "param_grad_norm": [_l2(g_params[n]) for n in names],
    "layers": layer_names(g_params),
    "layer_grad_norm": layers,
    "layer_ratio": layers[0] / layers[last_conv],
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
    grad_fn = gradient_function(run.model, run.model.num_classes)  # one compile for both
    for when, variables in (("init", init), ("trained", run.variables)):
      g = gradient_norms(
        run.model, variables, images, labels, run.model.num_classes, grad_fn=grad_fn
      )
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


def _init_variables(model, image_shape, key):
  """``inputs.init_variables`` (the key training starts from), to jit once per net."""
  v = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def init_sweep(
  *,
  depths: Sequence[int] = DEPTHS,
  seeds: Sequence[int] = (0, 1, 2),
  families: Sequence[str] = ("plain", "resnet"),
  recipe_name: str = "paper",
  dataset: str = "digits",
  width_multiplier: float | None = None,
  num_images: int = 128,
) -> list[dict[str, Any]]:
  """Gradient norms at initialisation of ``{family}{depth}`` built from the degradation recipe
  (``recipes.recipe(..., name=recipe_name)``, its width unless ``width_multiplier``), one row per
  seed, on the first ``num_images`` training images (the same batch for every net)."""
  rows, batch = [], None
  for family in families:
    for depth in depths:
      for seed in seeds:
        config = recipes.recipe(
          f"{family}{depth}",
          dataset=dataset,
          width_multiplier=width_multiplier,
          seed=seed,
          name=recipe_name,
        )
        if seed == seeds[0]:  # one net and one compile per family and depth
          model, info = recipes.build_model(config)
          grad_fn = gradient_function(model, model.num_classes)
          shape = recipes.image_shape_of(config, info)
          init = jax.jit(functools.partial(_init_variables, model, shape))
        if batch is None:
          images, labels = inputs.image_batch(config, split="train", size=num_images)
          batch = jnp.asarray(images), jnp.asarray(labels)
        variables = init(jax.random.key(config.seed))
        g = gradient_norms(model, variables, *batch, model.num_classes, grad_fn=grad_fn)
        rows.append({**recipes.describe(config), "seed": seed, "when": "init", "step": 0, **g})
  return rows


def _figure(results, sweep):
  plt = report.pyplot()
  rows = (1 if sweep else 0) + (2 if results else 0)
  fig, axes = plt.subplots(rows, 2, figsize=(12, 4 * rows), squeeze=False)
  if sweep:
    _sweep_panels(plt, axes[0], sweep)
  if results:
    _run_panels(plt, axes[-2:], results)
  return fig


def _sweep_panels(plt, axes, sweep):
  """Per-layer parameter-gradient norm at initialisation (seed geometric mean) by relative depth,
  and the first/last layer ratio against depth (mean and min-max over seeds)."""
  cmap = plt.get_cmap("viridis")
  depths = sorted({r["depth"] for r in sweep})
  for plain in (True, False):
    style = "--" if plain else "-"
    family = "plain" if plain else "residual"
    ratios = []
    for k, depth in enumerate(depths):
      group = [r for r in sweep if r["plain"] == plain and r["depth"] == depth]
      if not group:
        continue
      norms = np.exp(np.mean([np.log(r["layer_grad_norm"][:-1]) for r in group], axis=0))
      x = np.arange(1, len(norms) + 1) / len(norms)
      color = cmap(k / max(1, len(depths) - 1))
      axes[0].semilogy(x, norms, style, color=color, label=f"{family}-{depth}")
      ratios.append((depth, [r["layer_ratio"] for r in group]))
    if ratios:
      d = [r[0] for r in ratios]
      mean = [np.mean(r[1]) for r in ratios]
      lo = [np.min(r[1]) for r in ratios]
      hi = [np.max(r[1]) for r in ratios]
      axes[1].semilogy(d, mean, style, marker="o", label=family)
      axes[1].fill_between(d, lo, hi, alpha=0.2)
  axes[0].set_title("||dL/d(layer parameters)|| at initialisation (geometric mean over seeds)")
  axes[0].set_xlabel("relative layer depth (conv layer index / number of conv layers)")
  axes[0].set_ylabel("L2 norm of gradient (log scale)")
  axes[0].legend(fontsize=6, ncol=2, title="dashed: plain, solid: residual", title_fontsize=7)
  axes[1].set_title("first layer / last conv layer gradient norm at initialisation")
  axes[1].set_xlabel("depth (layers)")
  axes[1].set_ylabel("ratio (log scale; mean, min-max over seeds)")
  axes[1].axhline(1.0, color="grey", lw=0.8)
  axes[1].legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3, which="both")


def _run_panels(plt, axes, results):
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
    axes[0, col].set_title(f"runs: ||dL/d(block input)|| {when}")
    axes[1, col].set_title(f"runs: ||dL/d(block parameters)|| {when}")
    for row in range(2):
      ax = axes[row, col]
      ax.set_ylabel("L2 norm of gradient (log scale)")
      ax.grid(alpha=0.3, which="both")
      ax.legend(fontsize=7, title="dashed: plain, solid: residual", title_fontsize=7)
    axes[1, col].set_xlabel("relative block depth (block index / number of blocks)")


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
  "first/last layer",
)

_SWEEP_HEADER = (
  "model",
  "seeds",
  "loss",
  "first/last layer (mean)",
  "min",
  "max",
  "first/last block input grad (mean)",
)


def _sweep_table(sweep) -> str:
  rows = []
  for key in sorted({(not r["plain"], r["depth"], r["label"]) for r in sweep}):
    group = [r for r in sweep if (not r["plain"], r["depth"], r["label"]) == key]
    ratio = [r["layer_ratio"] for r in group]
    block = [r["input_grad_norm"][0] / r["input_grad_norm"][-1] for r in group]
    rows.append(
      [key[2], ",".join(str(r["seed"]) for r in group)]
      + [f"{np.mean([r['loss'] for r in group]):.3f}"]
      + [f"{v:.3g}" for v in (np.mean(ratio), np.min(ratio), np.max(ratio), np.mean(block))]
    )
  return report.markdown_table(_SWEEP_HEADER, rows)


def _table(results, num_images: int, sweep=()) -> str:
  text = (
    f"Loss-gradient norms on {num_images} training images (training-mode BN). first/last layer = "
    "the stem's (conv + BN) parameter-gradient norm over the last block's last conv + BN's; "
    "first/last block = the first/last residual (or plain) block; a ratio above 1 means the "
    "gradient grows towards the input.\n\n"
  )
  if sweep:
    text += "At initialisation, the degradation recipe's nets:\n\n" + _sweep_table(sweep) + "\n"
  if results:
    rows = []
    for r in results:
      gi, gp = r["input_grad_norm"], r["param_grad_norm"]
      rows.append(
        [r["label"], r["when"], r["step"], f"{r['loss']:.3f}"]
        + [f"{v:.3g}" for g in (gi, gp) for v in (g[0], g[-1], g[0] / g[-1])]
        + [f"{r['layer_ratio']:.3g}"]
      )
    text += "Runs:\n\n" + report.markdown_table(_HEADER, rows)
  return text


def run(
  out: str,
  workdirs: Sequence[str] = (),
  *,
  num_images: int = 128,
  step: int | None = None,
  depths: Sequence[int] = (),
  seeds: Sequence[int] = (0, 1, 2),
  families: Sequence[str] = ("plain", "resnet"),
  recipe_name: str = "paper",
  dataset: str = "digits",
  width_multiplier: float | None = None,
) -> dict[str, Any]:
  """Writes ``gradient_flow.png``, ``.md`` and ``.json``: the at-initialisation sweep over
  ``depths`` x ``seeds`` (none for no depths) and each run of ``workdirs`` at its initialisation
  and checkpoint ``step``."""
  start = time.perf_counter()
  sweep = []
  if depths:
    sweep = init_sweep(
      depths=depths,
      seeds=seeds,
      families=families,
      recipe_name=recipe_name,
      dataset=dataset,
      width_multiplier=width_multiplier,
      num_images=num_images,
    )
  results = measure(workdirs, num_images=num_images, step=step) if workdirs else []
  record = {
    "provenance": report.provenance(),
    "wall_time_s": time.perf_counter() - start,
    "num_images": num_images,
    "init_sweep": {"recipe": recipe_name, "dataset": dataset, "rows": sweep},
    "runs": results,
  }
  written = report.write_outputs(
    out,
    "gradient_flow",
    figure=_figure(results, sweep),
    table=_table(results, num_images, sweep),
    rows=record,
  )
  return {"results": results, "sweep": sweep, **written}
