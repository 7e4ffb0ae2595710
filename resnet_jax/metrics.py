"""Run output: ``metrics.jsonl``, TensorBoard event files, a progress bar, and curve plots.

Only the primary process writes (``enabled=False`` elsewhere), so a multi-host run produces one record.
``metrics.jsonl`` holds one JSON object per line, ``{"step": int, <name>: float, ...}``: train lines
carry ``train_*``/``learning_rate`` and the throughput of :class:`Throughput` (``images_per_sec``,
``step_time_ms``, ``data_wait_fraction``), eval lines ``eval_*``. TensorBoard gets every number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` and TensorBoard files in ``workdir``."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._summary = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        # Imported here, not at the top: the data package pulls in tensorflow_datasets, and a
        # metrics-only import (sweeps, analyses, tensorboard=False) should not pay for it.
        from resnet_jax.data import tf_device  # pylint: disable=g-import-not-at-top

        tf_device.hide_gpus_from_tf()
        self._tf = tf_device.tf
        self._summary = self._tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._summary is not None:
      with self._summary.as_default(step=int(step)):
        for k, v in record.items():
          if k != "step" and isinstance(v, (int, float)):
            self._tf.summary.scalar(k, v)
      self._summary.flush()

  def close(self):
    if self._summary is not None:
      self._summary.close()


def _plain(v):
  try:
    return float(v) if not isinstance(v, (int, str, bool)) else v
  except (TypeError, ValueError):
    return str(v)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


THROUGHPUT_KEYS = ("images_per_sec", "step_time_ms", "data_wait_fraction")


class Throughput:
  """Images/s, time per step and the share of it spent waiting for the next batch, per log window.

  The loop times its wait for input with :meth:`waiting` and counts steps with :meth:`step`;
  evaluation and checkpointing run inside :meth:`paused` so they do not count as training time.
  The window ends at a log step, where fetching the metrics waits for every step dispatched so far,
  so the wall time between two log steps is the time those steps took. ``data_wait_fraction`` near
  1 means an input-bound run: the accelerator idled while tf.data prepared batches.
  """

  def __init__(self, global_batch_size: int):
    self.global_batch_size = global_batch_size
    self._start = time.perf_counter()
    self._excluded = self._waited = 0.0
    self._steps = 0

  def step(self):
    self._steps += 1

  @contextlib.contextmanager
  def waiting(self):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self._waited += time.perf_counter() - t0

  @contextlib.contextmanager
  def paused(self):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self._excluded += time.perf_counter() - t0

  def window(self) -> dict[str, float]:
    """The window's figures (empty if no step ran), and a new window starts."""
    now = time.perf_counter()
    elapsed = max(now - self._start - self._excluded, 1e-9)
    figures = {}
    if self._steps:
      figures = {
        "images_per_sec": self._steps * self.global_batch_size / elapsed,
        "step_time_ms": 1000 * elapsed / self._steps,
        "data_wait_fraction": min(self._waited / elapsed, 1.0),
      }
    self._start, self._excluded, self._waited, self._steps = now, 0.0, 0.0, 0
    return figures


def _format_throughput(name: str, value: float) -> str:
  if name == "images_per_sec":
    return f"{value:.4g} img/s"
  if name == "step_time_ms":
    return f"{value:.4g} ms/step"
  return f"{100 * value:.0f}% waiting for data"


class Progress:
  """A progress bar with ETA on an interactive terminal; plain log lines otherwise (CI, clusters)."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True):
    self.total, self.step = total, initial
    self._bar = None
    self._t0, self._s0 = time.time(), initial
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    self.enabled = enabled

  def update(self, step: int, metrics: dict[str, Any] | None = None):
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(step - self.step)
      if metrics:
        self._bar.set_postfix(
          {k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))}, refresh=False
        )
    elif metrics:
      done = step - self._s0
      rate = done / max(time.time() - self._t0, 1e-9)
      eta = (self.total - step) / rate if rate > 0 else math.inf
      numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
      parts = [" ".join(f"{k}={v:.4g}" for k, v in numbers.items() if k not in THROUGHPUT_KEYS)]
      parts.append(
        ", ".join(_format_throughput(k, numbers[k]) for k in THROUGHPUT_KEYS if k in numbers)
      )
      parts.append(f"eta {_format_seconds(eta)}")
      logging.info("step %d/%d %s", step, self.total, " | ".join(p for p in parts if p))
    self.step = step

  def close(self):
    if self._bar is not None:
      self._bar.close()


def _format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  m, s = divmod(int(s), 60)
  h, m = divmod(m, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


def plot_curves(workdir: str, title: str = "") -> str | None:
  """Training and validation top-1 error and loss against step, as ``workdir/curves.png``."""
  records = read_metrics(workdir)
  if not records:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  def series(key):
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]

  fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
  for key, style, label in (("train_top1_error", "--", "train"), ("eval_top1_error", "-", "test")):
    x, y = series(key)
    if x:
      ax_err.plot(x, [100 * v for v in y], style, label=label)
  for key, style, label in (("train_loss", "--", "train"), ("eval_loss", "-", "test")):
    x, y = series(key)
    if x:
      ax_loss.plot(x, y, style, label=label)
  ax_err.set(xlabel="iteration", ylabel="top-1 error (%)", title="Top-1 error")
  ax_loss.set(xlabel="iteration", ylabel="cross-entropy (nats)", title="Loss", yscale="log")
  for ax in (ax_err, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(workdir, CURVES_FILE)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
