"""Run output: ``metrics.jsonl``, TensorBoard event files, a progress bar, and curve plots.

Only the primary process writes (``enabled=False`` elsewhere), so a multi-host run produces one record.
``metrics.jsonl`` holds one JSON object per line, ``{"step": int, <name>: float, ...}``: train lines
carry ``train_*``/``learning_rate`` and the throughput of :class:`Throughput` (``images_per_sec``,
``step_time_ms``, ``data_wait_fraction``), eval lines ``eval_*``. TensorBoard gets every number.

The workdir may be a bucket (``gs://...``), where nothing can be appended to: there the writer keeps
the file's content in memory and rewrites the object whole at each ``flush()`` (an upload replaces
an object atomically, so a reader sees one complete version or the next). On a file system it
appends as it goes. Either way a resumed run opens the writer with the checkpoint step it resumed
from: records after that step (written by the interrupted run, about to be recomputed) are dropped,
and a record written again for the same step and names replaces the old one, so the file ends with
every record exactly once. The training loop flushes before each checkpoint, so no record a
checkpoint covers can be lost.

TensorBoard files are written by TensorBoard's own record writer, through the same path layer (not
TensorFlow's file system); a resumed run starts its event file with a ``SessionLog.START`` at the
step it resumes from, which makes TensorBoard drop the interrupted run's later points.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import socket
import sys
import time
from typing import Any

from absl import logging

from resnet_jax import storage
from resnet_jax.run_files import METRICS_FILE

CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class _GrowingFile:
  """A file that grows at its end: appended to on a file system, rewritten whole on a bucket."""

  def __init__(self, path, content: bytes = b""):
    self.path = path
    self._buffered = storage.is_object_store(path)
    self._content = bytearray(content)  # the whole file; only kept where it cannot be appended
    self._dirty = False
    if not self._buffered:
      path.parent.mkdir(parents=True, exist_ok=True)

  def append(self, data: bytes):
    if self._buffered:
      self._content += data
      self._dirty = True
    else:
      with self.path.open("ab") as f:
        f.write(data)

  def replace(self, data: bytes):
    """Sets the whole content (written at once here, or at the next ``flush`` on a bucket)."""
    if self._buffered:
      self._content = bytearray(data)
      self._dirty = True
    else:
      storage.write_atomically(self.path, data)

  def flush(self):
    if self._dirty:
      storage.write_atomically(self.path, bytes(self._content))
      self._dirty = False


_EVENT_FILES = itertools.count()


class _EventFile:
  """TensorBoard scalars (``Summary.Value.simple_value``) in TensorFlow's event-file format."""

  def __init__(self, directory, resume_step: int | None):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top

    self._event_pb2 = event_pb2
    # TensorFlow's naming; the counter keeps two writers of one process and second apart.
    name = (
      f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
      f"{next(_EVENT_FILES)}.v2"
    )
    self._file = _GrowingFile(directory / name)
    self._records = record_writer.RecordWriter(self)  # frames each record; calls self.write
    self._write_event(event_pb2.Event(file_version="brain.Event:2"))
    if resume_step:
      start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      self._write_event(event_pb2.Event(step=resume_step + 1, session_log=start))

  def write(self, data: bytes):  # the RecordWriter's file interface
    self._file.append(data)

  def _write_event(self, event):
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, values: dict[str, float]):
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top

    summary = summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
    )
    self._write_event(self._event_pb2.Event(step=step, summary=summary))

  def flush(self):
    self._file.flush()


class MetricWriter:
  """Writes metrics to ``metrics.jsonl`` and TensorBoard files in ``workdir`` (a folder or bucket).

  ``resume_step``: the checkpoint step a resumed run starts from (0 for a fresh start); records
  after it are dropped. ``None`` keeps the existing file as it is.
  """

  def __init__(
    self,
    workdir,
    enabled: bool = True,
    tensorboard: bool = True,
    resume_step: int | None = None,
    flush_every_secs: float = 30.0,
  ):
    self.enabled = enabled
    self.path = storage.location(workdir) / METRICS_FILE
    self._events = None
    self._flush_every_secs = flush_every_secs
    self._last_flush = time.time()
    if not enabled:
      return
    self._records = read_metrics(workdir)
    kept = self._records
    if resume_step is not None:
      kept = [r for r in self._records if r.get("step", 0) <= resume_step]
    self._file = _GrowingFile(self.path, _jsonl(self._records))
    if len(kept) != len(self._records):
      self._records = kept
      self._file.replace(_jsonl(kept))
    if tensorboard:
      self._events = _EventFile(storage.location(workdir) / TENSORBOARD_DIR, resume_step)

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    same = None
    for i in range(len(self._records) - 1, -1, -1):  # records come in step order: look at the end
      if self._records[i].get("step", 0) < record["step"]:
        break
      if self._records[i].keys() == record.keys() and self._records[i]["step"] == record["step"]:
        same = i
        break
    if same is not None:  # the same measurement again (a run resumed at its last step evaluates)
      self._records[same] = record
      self._file.replace(_jsonl(self._records))
    else:
      self._records.append(record)
      self._file.append(_jsonl([record]))
    if self._events is not None:
      self._events.scalars(
        record["step"],
        {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
      )
    if time.time() - self._last_flush >= self._flush_every_secs:
      self.flush()

  def flush(self):
    """Makes everything written so far durable (on a bucket: rewrites the objects)."""
    if not self.enabled:
      return
    self._file.flush()
    if self._events is not None:
      self._events.flush()
    self._last_flush = time.time()

  def close(self):
    self.flush()


def _jsonl(records: list[dict[str, Any]]) -> bytes:
  return "".join(json.dumps(r) + "\n" for r in records).encode()


def _plain(v):
  try:
    return float(v) if not isinstance(v, (int, str, bool)) else v
  except (TypeError, ValueError):
    return str(v)


def read_metrics(workdir) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl`` in file order; [] when there is none.

  A line that is not a JSON object is skipped: a reader may meet a line a running writer has half
  appended (a sweep's summary reads its running members), and one bad line hides no other record.
  """
  path = storage.location(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


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


def plot_curves(workdir, title: str = "") -> str | None:
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
  path = storage.location(workdir) / CURVES_FILE
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)
  return os.fspath(path)
