"""A member's results, read back from its workdir, and the sweep's summary table."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex

from resnet_jax import metrics
from resnet_jax import storage
from resnet_jax.run_files import DONE_FILE
from resnet_jax.sweep.spec import Member

SUMMARY_COLUMNS = (
  "name",
  "status",
  "final_step",
  "train_top1_error",
  "test_top1_error",
  "train_loss",
  "test_loss",
  "seconds",
  "overrides",
  "arguments",
  "config",
  "workdir",
)


def read_results(workdir: str | os.PathLike) -> dict:
  """Final metrics of a member's workdir: step, train/eval error and loss, done flag.

  The last value of each key in ``metrics.jsonl`` (the member may still be writing it); ``DONE``'s
  final metrics win where it has them.
  """
  workdir = storage.location(workdir)
  last: dict = {}
  step = None
  for record in metrics.read_metrics(workdir):
    if _is_number(record.get("step")):
      step = record["step"] if step is None else max(step, record["step"])
    last.update({k: v for k, v in record.items() if k != "step"})
  done_path = workdir / DONE_FILE
  done = done_path.exists()
  if done:
    try:
      final = json.loads(done_path.read_text() or "{}")
    except (json.JSONDecodeError, OSError):
      final = {}
    if isinstance(final, dict):
      if _is_number(final.get("step")):
        step = final["step"]
      last.update({k: v for k, v in final.items() if k != "step" and _is_number(v)})
  return {
    "done": done,
    "step": step,
    "train_top1_error": last.get("train_top1_error"),
    "test_top1_error": last.get("eval_top1_error"),
    "train_loss": last.get("train_loss"),
    "test_loss": last.get("eval_loss"),
  }


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def summary_row(member: Member, workdir: str, status: str, seconds: float | None) -> dict:
  """One row of the summary: the member, how it ended (``status``) and its results."""
  res = read_results(workdir)
  return {
    "name": member.name,
    "status": status,
    "final_step": res["step"],
    "train_top1_error": res["train_top1_error"],
    "test_top1_error": res["test_top1_error"],
    "train_loss": res["train_loss"],
    "test_loss": res["test_loss"],
    "seconds": None if seconds is None else round(seconds, 1),
    "overrides": json.dumps(member.overrides, sort_keys=True, default=str),
    # What the member ran with after its config and workdir: overrides, then the args after `--`.
    "arguments": shlex.join(member.run_args()),
    "config": member.config,
    "workdir": workdir,
  }


def write_summary(rows: list[dict], root: str | os.PathLike):
  """``ROOT/summary.csv`` (raw numbers) and ``ROOT/summary.md`` (errors in %), atomically."""
  root = storage.location(root)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: ("" if r.get(k) is None else r[k]) for k in SUMMARY_COLUMNS})
  md = [
    "| member | status | step | train err | test err | train loss | test loss |",
    "|---|---|---:|---:|---:|---:|---:|",
  ]
  pct = lambda v: "" if not _is_number(v) or math.isnan(v) else f"{100 * v:.2f}%"
  num = lambda v: "" if not _is_number(v) else f"{v:.4g}"
  for r in rows:
    cells = [
      r["name"],
      r["status"],
      "" if r.get("final_step") is None else str(r["final_step"]),
      pct(r.get("train_top1_error")),
      pct(r.get("test_top1_error")),
      num(r.get("train_loss")),
      num(r.get("test_loss")),
    ]
    md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  paths = root / "summary.csv", root / "summary.md"
  for path, text in zip(paths, (buf.getvalue(), "\n".join(md) + "\n")):
    storage.write_atomically(path, text)
  return paths
