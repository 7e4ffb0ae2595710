"""Shortcut options (paper Table 3): A (zero-padding identity), B (projection where the shape
changes), C (projection everywhere) on the same net and recipe: error and parameter count."""

from __future__ import annotations

from typing import Any, Sequence

from resnet_jax import analysis as A
from resnet_jax.train import state as state_lib

OPTIONS = ("A", "B", "C")


def param_count(config) -> int:
  model, info = A.build_model(config)
  shape = A.image_shape_of(config, info)
  return state_lib.count_params(state_lib.abstract_variables(model, shape)["params"])


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
  ``shortcuts.png`` and ``shortcuts.md``."""
  rows = []
  for opt in options:
    if opt not in OPTIONS + ("none",):
      raise ValueError(f"shortcut option {opt!r}: choose from A, B, C, none")
    cfg = A.recipe(
      model,
      dataset=dataset,
      steps=steps,
      width_multiplier=width_multiplier,
      seed=seed,
      batch_size=batch_size,
      evals=evals,
      overrides={"model_overrides.shortcut": opt},
    )
    workdir = A.output_path(A.output_path(out, "runs"), f"shortcut={opt}")
    res = A.train(cfg, workdir)
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

  plt = A.pyplot()
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
  figure = A.save_figure(fig, A.output_path(out, "shortcuts.png"))
  table = A.markdown_table(
    ["option", "model", "parameters", "test top-1 err", "test top-5 err", "iterations"],
    [
      [
        r["option"],
        r["model"],
        f"{r['params']:,}",
        A.pct(r["test_top1_error"]),
        A.pct(r["test_top5_error"]),
        r["step"],
      ]
      for r in rows
    ],
  )
  path = A.write_text(
    A.output_path(out, "shortcuts.md"),
    f"Shortcut options on {dataset} (width x{width_multiplier:g}).\n\n" + table,
  )
  A.write_json(A.output_path(out, "shortcuts.json"), rows)
  return {"rows": rows, "figure": figure, "table": path}
