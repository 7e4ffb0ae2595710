"""Test-time methods (paper Tables 3/4, §3.4), the ``test_time`` analysis: center crop vs 10-crop vs
fully-convolutional multi-scale, for a checkpoint, through ``train.loop.evaluate`` (the training
program's evaluator).

10-crop: the four corners and the centre crop plus their flips, softmax averaged; it follows the
dataset's training (``data.augment.eval_transform``): on the digits, trained without flips and
with a 2-pixel pad + random crop, the views are the five crops of the image padded by 2 pixels,
unmirrored. full_conv: the whole image resized to each shorter side in ``scales``, the net applied
fully convolutionally, scores averaged over scales.
"""

from __future__ import annotations

from typing import Any, Sequence

from resnet_jax import runs
from resnet_jax.analysis import recipes, report

METHODS = ("center", "ten_crop", "full_conv")
# The command's name and its output files' stem: the paper's "testing" methods.
NAME = "test_time"


def evaluate(
  workdirs: Sequence[str],
  *,
  methods: Sequence[str] = METHODS,
  scales: Sequence[int] | None = None,
  step: int | None = None,
) -> list[dict[str, Any]]:
  """Test error of each run's checkpoint ``step`` (default: latest) under each method."""
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  rows = []
  for w in workdirs:
    config = runs.read_config(w)
    if scales:
      config.eval_scales = tuple(int(s) for s in scales)
    for method in methods:
      res = loop.evaluate(config, w, step=step, method=method)
      rows.append(
        {
          "workdir": w,
          "label": recipes.model_label(config),
          "method": method,
          "scales": list(loop.full_conv_scales(config)) if method == "full_conv" else None,
          "step": res["step"],
          "top1_error": res["eval_top1_error"],
          "top5_error": res["eval_top5_error"],
          "count": res["eval_count"],
        }
      )
  return rows


def _figure(rows, methods: Sequence[str]):
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  labels = list(dict.fromkeys(r["label"] for r in rows))
  width = 0.8 / max(1, len(methods))
  for k, method in enumerate(methods):
    ys = [
      100 * next(r["top1_error"] for r in rows if r["label"] == lab and r["method"] == method)
      for lab in labels
    ]
    ax.bar([i + k * width for i in range(len(labels))], ys, width, label=method)
  ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(labels))], labels)
  ax.set_xlabel("model (checkpoint)")
  ax.set_ylabel("test top-1 error (%)")
  ax.set_title("Test-time methods: center vs 10-crop vs fully-convolutional multi-scale")
  ax.legend(fontsize=8)
  return fig


def _table(rows) -> str:
  return report.markdown_table(
    ["model", "step", "method", "scales", "test top-1 err", "test top-5 err", "images"],
    [
      [
        r["label"],
        r["step"],
        r["method"],
        ",".join(map(str, r["scales"] or [])) or "-",
        report.pct(r["top1_error"]),
        report.pct(r["top5_error"]),
        r["count"],
      ]
      for r in rows
    ],
  )


def run(
  out: str,
  workdirs: Sequence[str],
  *,
  methods: Sequence[str] = METHODS,
  scales: Sequence[int] | None = None,
  step: int | None = None,
) -> dict[str, Any]:
  """Writes ``test_time.png``, ``.md`` and ``.json``. ``scales``: shorter sides for full_conv
  (default: the run's config.eval_scales, and if that is empty ``train.loop.full_conv_scales``'
  choice from the image size, as ``resnet-jax eval`` makes it)."""
  rows = evaluate(workdirs, methods=methods, scales=scales, step=step)
  written = report.write_outputs(
    out, NAME, figure=_figure(rows, methods), table=_table(rows), rows=rows
  )
  return {"rows": rows, **written}
