"""Shortcut options (paper Table 3): A (zero-padding identity), B (projection where the shape
changes), C (projection everywhere) on the same net and recipe: error and parameter count."""

from __future__ import annotations

from typing import Any, Sequence

from resnet_jax.analysis import recipes, report
from resnet_jax.train import state as state_lib

OPTIONS = ("A", "B", "C")


def param_count(config) -> int:
  """Parameters of the net a recipe describes (counted from shapes, nothing computed)."""
  model, info = recipes.build_model(config)
  shape = recipes.image_shape_of(config, info)
  return state_lib.count_params(state_lib.abstract_variables(model, shape)["params"])


def train_options(out: str, model: str, options: Sequence[str], **recipe_kwargs) -> list[dict]:
  """Trains ``model`` with each shortcut option into ``OUT/runs/shortcut=X`` (a finished run is
  skipped); one row per option with its final errors and parameter count."""
  rows = []
  for opt in options:
    if opt not in OPTIONS + ("none",):
      raise ValueError(f"shortcut option {opt!r}: choose from A, B, C, none")
    cfg = recipes.recipe(model, overrides={"model_overrides.shortcut": opt}, **recipe_kwargs)
    workdir = report.output_path(report.output_path(out, "runs"), f"shortcut={opt}")
    res = recipes.train(cfg, workdir)
    rows.append(
      {
        "option": opt,
        "model": model,
        "params": param_count(cfg),
        "test_top1_error": res.get("eval_top1_error"),
        "test_top5_error": res.get("eval_top5_error"),
        "step": res.get("step"),
        "workdir": workdir,
      }
    )
  return rows


def _figure(rows, model: str, dataset: str):
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = range(len(rows))
  bars = ax.bar(
    xs, [100 * r["test_top1_error"] for r in rows], color="tab:blue", label="test top-1 error"
  )
  for b, r in zip(bars, rows):
    ax.annotate(
      f"{r['params'] / 1e3:.1f}k params",
      (b.get_x() + b.get_width() / 2, b.get_height()),
      ha="center",
      va="bottom",
      fontsize=8,
    )
  ax.set_xticks(list(xs), [f"option {r['option']}" for r in rows])
  ax.set_xlabel("shortcut option")
  ax.set_ylabel("test top-1 error (%)")
  ax.set_title(f"Shortcut options: {model} on {dataset}, {rows[0]['step']} iterations")
  ax.legend(fontsize=8)
  return fig


def _table(rows, dataset: str, width_multiplier: float) -> str:
  table = report.markdown_table(
    ["option", "model", "parameters", "test top-1 err", "test top-5 err", "iterations"],
    [
      [
        r["option"],
        r["model"],
        f"{r['params']:,}",
        report.pct(r["test_top1_error"]),
        report.pct(r["test_top5_error"]),
        r["step"],
      ]
      for r in rows
    ],
  )
  return f"Shortcut options on {dataset} (width x{width_multiplier:g}).\n\n" + table


def run(
  out: str,
  *,
  model: str = "resnet20",
  options: Sequence[str] = OPTIONS,
  dataset: str = "digits",
  steps: int | None = None,
  width_multiplier: float = 1.0,
  seed: int = 0,
  batch_size: int | None = None,
  evals: int = 4,
) -> dict[str, Any]:
  """Trains ``model`` with each shortcut option into ``OUT/runs/shortcut=X``; writes
  ``shortcuts.png``, ``.md`` and ``.json``."""
  rows = train_options(
    out,
    model,
    options,
    dataset=dataset,
    steps=steps,
    width_multiplier=width_multiplier,
    seed=seed,
    batch_size=batch_size,
    evals=evals,
  )
  written = report.write_outputs(
    out,
    "shortcuts",
    figure=_figure(rows, model, dataset),
    table=_table(rows, dataset, width_multiplier),
    rows=rows,
  )
  return {"rows": rows, **written}
