"""The bench reports: the training table, the paths side by side, the inference table, and the
results file (one JSON line a run)."""

from __future__ import annotations

import json


def append_result(jsonl, result: dict):
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  storage.append_text(jsonl, json.dumps(result, sort_keys=True) + "\n")


def _fmt(v, unit="", digits=2):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.{digits}f}{unit}"
  return f"{v}{unit}"


def _gflop(flops) -> str:
  return _fmt(None if flops is None else flops / 1e9, " GFLOP", 1)


def _xla_flops(r: dict) -> str:
  """XLA's count where it sees the step's convolutions; else the analytic count, saying why."""
  xla, analytic = r.get("flops_per_step"), r.get("analytic_flops_per_step")
  if not analytic or (xla is not None and xla >= 0.5 * analytic):
    return _gflop(xla)
  why = (
    "none from XLA for scanned blocks"
    if xla is None
    else f"XLA sees {_gflop(xla)}, not inside custom calls such as oneDNN's"
  )
  return f"{_gflop(analytic)} analytic ({why})"


def _train_step(r: dict) -> str:
  """The config's choices that shape the step besides the model (older results lack them)."""
  step = r.get("train_step")
  if not step:
    return "-"
  parts = [step["optimizer"], step["schedule"], step["loss"]]
  parts += [
    f"{k} {step[k]:g}" for k in step if k not in ("optimizer", "schedule", "loss") and step[k]
  ]
  return ", ".join(parts)


def _mfu(r: dict) -> str:
  """MFU and the peak it is measured against, or why there is none."""
  if r.get("mfu") is not None:
    return f"{100 * r['mfu']:.1f} % of {r['peak_tflops']:g} TFLOP/s ({r['precision']}, dense)"
  if r.get("backend") == "cpu":
    return "n/a (no peak for cpu)"
  return f"n/a (no peak for {r.get('device')} in {r['precision']}; give --peak_tflops)"


def format_report(r: dict) -> str:
  """The report as a two-column table."""
  gib = lambda b: None if b is None else b / 2**30  # noqa: E731
  over = r.get("overrides") or {}
  rows = [
    (
      "model",
      f"{r['model']}  batch {r['batch']}  {r['image_size']}²  {r['precision']}"
      + (f"  {over}" if over else ""),
    ),
    ("parameters", f"{r['num_params']:,}"),
    ("train step (the config's)", _train_step(r)),
    (
      "device",
      f"{r['backend']} ({r.get('num_devices', 1)} × {r['device']}, {r['cpu_count']} cpus)"
      + (f"  XLA_FLAGS={r['xla_flags']}" if r.get("xla_flags") else ""),
    ),
    ("compile train step", _fmt(r["compile_train_s"], " s", 1)),
    ("compile eval step", _fmt(r["compile_eval_s"], " s", 1)),
    (
      "train step (best / median)",
      f"{_fmt(r['step_time_best_s'] * 1e3, ' ms', 1)} / "
      f"{_fmt(r['step_time_median_s'] * 1e3, ' ms', 1)}",
    ),
    (f"bare images/s (best of {r['steps']})", _fmt(r["images_per_sec"])),
    ("full-loop images/s", _fmt(r["loop_images_per_sec"])),
    (
      "loop overhead (interleaved)",
      _fmt(r["loop_overhead_pct"], " %", 1)
      + (f"  ({r['loop_rounds']} x {r['loop_steps']} steps each)" if r.get("loop_rounds") else ""),
    ),
    ("FLOPs / step (analytic, 6 × MACs)", _gflop(r.get("analytic_flops_per_step"))),
    ("FLOPs / step (XLA cost analysis)", _xla_flops(r)),
    (
      "achieved",
      _fmt(None if r["achieved_tflops"] is None else r["achieved_tflops"] * 1e3, " GFLOP/s", 1),
    ),
    ("MFU", _mfu(r)),
    ("peak memory (XLA)", _fmt(gib(r["peak_memory_bytes"]), " GiB", 2)),
  ]
  if r.get("compare") == "torch":
    rows += [
      (f"PyTorch {r.get('torch_version', '')} eager images/s", _fmt(r["torch_images_per_sec"])),
      ("JAX / PyTorch", _fmt(r["torch_ratio"], "×")),
    ]
  width = max(len(k) for k, _ in rows)
  lines = [f"{'':-<{width}}-+-{'':-<40}"]
  lines += [f"{k:<{width}} | {v}" for k, v in rows]
  paths = r.get("paths") or {}
  if len(paths) > 1:
    lines += ["", format_paths(r)]
  return "\n".join(lines)


def format_paths(r: dict) -> str:
  """The data-parallel paths side by side (their steps were timed interleaved)."""
  paths = r["paths"]
  gib = lambda b: None if b is None else b / 2**30  # noqa: E731
  rows = [
    ("parallelism", list(paths)),
    ("compile train step", [_fmt(p["compile_train_s"], " s", 1) for p in paths.values()]),
    ("compile eval step", [_fmt(p["compile_eval_s"], " s", 1) for p in paths.values()]),
    (
      f"bare images/s (best of {r['steps']})",
      [_fmt(p["images_per_sec"]) for p in paths.values()],
    ),
    ("bare images/s (median)", [_fmt(p["images_per_sec_median"]) for p in paths.values()]),
    ("full-loop images/s", [_fmt(p["loop_images_per_sec"]) for p in paths.values()]),
    (
      "checkpoint save: first / later",
      [
        f"{_fmt(p.get('checkpoint_first_s'), ' s', 2)} / {_fmt(p.get('checkpoint_s'), ' s', 2)}"
        for p in paths.values()
      ],
    ),
    (
      "MFU",
      [_fmt(None if p.get("mfu") is None else 100 * p["mfu"], " %", 1) for p in paths.values()],
    ),
    ("peak memory (XLA)", [_fmt(gib(p["peak_memory_bytes"]), " GiB", 2) for p in paths.values()]),
  ]
  width = max(len(k) for k, _ in rows)
  cols = [max(len(v[i]) for _, v in rows) for i in range(len(paths))]
  lines = [f"{'':-<{width}}-+-" + "-+-".join("-" * c for c in cols)]
  for k, values in rows:
    lines.append(f"{k:<{width}} | " + " | ".join(f"{v:>{c}}" for v, c in zip(values, cols)))
  return "\n".join(lines)


def format_inference_report(r: dict) -> str:
  """One row per batch size: images/s of each path and the ratios to the jit eval step."""
  batches = sorted({int(k.split("_b")[1].split("_")[0]) for k in r if k.startswith("jax_jit_b")})
  lines = [
    f"{r['model']} inference, {r['image_size']}x{r['image_size']}, fp32, CPU "
    f"(best of {r['steps']} calls x {r['rounds']} interleaved rounds)",
    "batch | jax jit eval step | TF SavedModel (ratio) | PyTorch eager (ratio)   [images/s]",
  ]
  for b in batches:
    lines.append(
      f"{b:>5} | {r[f'jax_jit_b{b}_images_per_sec']:17.2f} | "
      f"{r[f'tf_savedmodel_b{b}_images_per_sec']:8.2f} ({r[f'tf_savedmodel_b{b}_ratio']:.2f}x) | "
      f"{r[f'torch_eager_b{b}_images_per_sec']:8.2f} ({r[f'torch_eager_b{b}_ratio']:.2f}x)"
    )
  return "\n".join(lines)
