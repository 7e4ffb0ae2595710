"""``resnet-jax bench``: how fast the real train step turns compute into trained models.

One call of :func:`run_benchmark` measures, for one model / batch / image size / precision, and for
each data-parallel path (``parallelism``: ``pmap`` and ``jit`` over a mesh, side by side, their
timed steps and windows interleaved so the machine's drift hits both alike):

* compile time of the train step and of the eval step (``lower().compile()`` of the very functions
  the training loop compiles through ``train.parallel``: ``steps.train_step`` with the state
  donated, ``steps.eval_step``);
* bare train-step images/s: the compiled step on a synthetic batch already on the device, best of
  ``steps`` timed steps (the machine is shared and noisy; the median is reported too);
* full-loop images/s: the same compiled step fed by the real input pipeline (``data.train_batches``
  on the bundled ``digits`` dataset at ``image_size`` (random-resized crop above 32) and repeated to
  3 channels, prefetched
  to the device as ``train.loop`` does), per-step rng, metrics fetched and written to
  ``metrics.jsonl``, and one asynchronous Orbax checkpoint inside every timed window.  Bare and
  full-loop windows of ``loop_steps`` steps alternate ``loop_rounds`` times (the machine's speed
  drifts more than the overhead) and the overhead is ``1 - bare time / loop time`` in %;
* FLOPs of one step from XLA's cost analysis -> achieved FLOP/s (at the best step time), and MFU
  when ``peak_tflops`` is given;
* peak device memory of the train step from XLA's memory analysis (arguments + outputs - donated
  aliases + temporaries);
* ``compare='torch'``: the same architecture written in PyTorch (eager, channels_last, same batch,
  SGD momentum 0.9 + weight decay 1e-4 like ``optim.create_optimizer``) in a Python process of its
  own (:class:`TorchApart`), its ``steps`` timed steps alternating with ours one for one;
  ``torch_ratio`` = JAX images/s / PyTorch images/s (> 1: JAX is faster).

Results come back as a dict, print with :func:`format_report` and append as one JSON line to
``jsonl``.  PyTorch is optional (``pip install resnet-jax[bench]``) and imported only for
``compare='torch'``.  ``overrides`` are ResNet fields (``scan_blocks``, ``remat``,
``matmul_1x1``, ...); ``XLA_FLAGS`` from the environment is recorded with the result.
Command line: ``resnet-jax bench --model=resnet50 --batch_size=16 --image_size=224`` (flags and
defaults: ``resnet-jax bench --help``).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import models
from resnet_jax.train import config as config_lib
from resnet_jax.train import optim
from resnet_jax.train import parallel
from resnet_jax.train import state as state_lib
from resnet_jax.train import steps as steps_lib

PRECISIONS = ("fp32", "bf16")
LOOP_DATASET = "digits"


def _bench_config(model: str, batch: int, precision: str):
  c = config_lib.base_config()
  c.model = model
  c.global_batch_size = batch
  c.precision = precision
  c.optimizer = "sgd"
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.learning_rate = 0.01
  c.schedule = "constant"
  return c


def _model_kwargs(config, overrides: dict | None) -> dict:
  """What ``train.loop`` builds the model with (precision, cross-replica BN), plus ``overrides``."""
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  return {**loop.model_kwargs(config), **(overrides or {})}


def _cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def _peak_memory(compiled) -> dict[str, int | None]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    m = None
  if m is None:
    return {"peak_memory_bytes": None}
  arg, out = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  # Live at once at worst: inputs, outputs not written in place of a donated input, temporaries.
  return {
    "peak_memory_bytes": arg + out - alias + temp,
    "argument_bytes": arg,
    "output_bytes": out,
    "alias_bytes": alias,
    "temp_bytes": temp,
  }


def _time_steps(step_fn, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - t0)
  return times


def _loop_throughput(
  par, p_train, state, global_batch: int, channels: int, image_size: int, steps: int, seed: int = 0
):
  """The training loop's per-step work around the already-compiled step; returns (images/s, state).

  Mirrors ``train.loop.train_and_evaluate``: ``data.train_batches`` -> ``par.prefetch(2)`` ->
  step -> metrics kept pending and fetched/written at the end of the window, one asynchronous
  checkpoint (Orbax) saved at the start of the window.
  """
  from resnet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  # 'digits' augmentation pads 28 -> 32 and crops; at larger sizes use the random-resized crop
  # (ImageNet recipe), which scales the 28x28 source to any size.
  augment = None if image_size <= 32 else "inception"
  source = data_lib.train_batches(
    LOOP_DATASET, global_batch_size=global_batch, seed=seed, image_size=image_size, augment=augment
  )

  def rgb(it):  # digits are grayscale; the benchmarked step was compiled for `channels`.
    for b in it:
      img = b["image"]
      if img.shape[-1] != channels:
        img = np.repeat(img, channels // img.shape[-1], axis=-1)
      yield {"image": img.astype(np.float32), "label": b["label"].astype(np.int32)}

  batches = par.prefetch(rgb(source), 2)
  workdir = tempfile.mkdtemp(prefix="resnet_jax_bench_")
  ckpt = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep_last=1, async_save=True
  )
  writer = metrics_lib.MetricWriter(workdir, tensorboard=False)
  try:
    # Warm-up: fill the pipeline (first tf.data batches are slow) outside the window.
    for _ in range(2):
      state, m = p_train(state, next(batches))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    pending = []
    for step in range(2, 2 + steps):
      state, m = p_train(state, next(batches))
      pending.append(m)
      if step == 2:
        ckpt.save(step, par.checkpoint_state(state), {"model": "bench"})
    fetched = [jax.tree_util.tree_map(float, par.fetch(p)) for p in pending]
    means = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
    elapsed = time.perf_counter() - t0
    writer.write(2 + steps, {**means, "images_per_sec": steps * global_batch / elapsed})
    ckpt.wait()
  finally:
    ckpt.close()
    writer.close()
  return steps * global_batch / elapsed, state


def _checkpoint_save_times(par, state, saves: int = 2) -> list[float]:
  """Seconds each of ``saves`` asynchronous Orbax saves of ``state`` blocks the step loop.

  The first save in a process carries one-off set-up (for global arrays, several seconds on
  this CPU); run before the loop windows so that they time what training pays at every save.
  """
  from resnet_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

  workdir = tempfile.mkdtemp(prefix="resnet_jax_bench_")
  ckpt = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep_last=1, async_save=True
  )
  times = []
  try:
    for step in range(saves):
      t0 = time.perf_counter()
      ckpt.save(step, par.checkpoint_state(state), {"model": "bench"})
      times.append(time.perf_counter() - t0)
      ckpt.wait()
  finally:
    ckpt.close()
  return times


def run_benchmark(
  model: str,
  batch: int,
  image_size: int,
  precision: str = "fp32",
  compare: str | None = None,
  peak_tflops: float | None = None,
  steps: int = 5,
  jsonl: str | None = None,
  *,
  overrides: dict | None = None,
  num_classes: int | None = None,
  loop: bool = True,
  loop_steps: int | None = None,
  loop_rounds: int = 3,
  seed: int = 0,
  parallelism: tuple[str, ...] = parallel.PARALLELISMS,
) -> dict[str, Any]:
  """Benchmarks the real train step of ``model``; returns the report dict (see module doc)."""
  parallelism = tuple(parallelism)
  unknown = [p for p in parallelism if p not in parallel.PARALLELISMS]
  if not parallelism or unknown:
    raise ValueError(f"parallelism must be some of {parallel.PARALLELISMS}, got {parallelism!r}")
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
  if compare not in (None, "", "torch"):
    raise ValueError(f"compare must be 'torch' or None, got {compare!r}")
  if jsonl:  # a bad bucket fails now, not after the benchmark has run
    from resnet_jax import storage  # pylint: disable=g-import-not-at-top

    storage.check_access(jsonl, "--jsonl", write=True)
  spec = models.model_spec(model)
  num_classes = num_classes or spec.num_classes
  config = _bench_config(model, batch, precision)
  kwargs = _model_kwargs(config, overrides)
  net = models.get_model(model, num_classes=num_classes, **kwargs)
  image_shape = (image_size, image_size, 3)

  tx = optim.create_optimizer(config, state_lib.abstract_variables(net, image_shape)["params"])
  schedule = optim.create_schedule(config)
  host_state = jax.device_get(
    jax.jit(functools.partial(state_lib.create_train_state, net, tx, image_shape=image_shape))(
      jax.random.key(seed)
    )
  )
  n_params = state_lib.count_params(host_state.params)

  devices = jax.local_devices()
  n_dev = len(devices)
  if batch % n_dev:
    raise ValueError(
      f"batch {batch} is not divisible by the {n_dev} local devices; use a multiple of {n_dev}"
    )
  rng = np.random.default_rng(seed)
  per_device = (n_dev, batch // n_dev)
  # One host batch in the data pipeline's layout, [devices, per_device, ...]; each path puts it
  # on the devices its own way.
  host_batch = {
    "image": np.asarray(rng.standard_normal((*per_device, *image_shape)), np.float32),
    "label": np.asarray(rng.integers(0, min(num_classes, 10), per_device), np.int32),
  }
  host_eval_batch = {
    "image": host_batch["image"][:, :, None],
    "label": host_batch["label"],
    "mask": np.ones(per_device, bool),
  }

  # Every path compiles exactly what train.loop compiles for it (axis "batch", state donated).
  paths: dict[str, dict[str, Any]] = {}
  for name in parallelism:
    par = parallel.create(name)
    state = par.replicate(host_state)
    train_batch = par.put_batch(host_batch)
    p_train = par.train_step(
      steps_lib.train_step,
      seed=seed + 1,
      model=net,
      tx=tx,
      schedule=schedule,
      num_classes=num_classes,
    )
    t0 = time.perf_counter()
    train_compiled = p_train.lower(state, train_batch).compile()
    compile_train_s = time.perf_counter() - t0
    p_eval = par.compile(
      functools.partial(steps_lib.eval_step, model=net),
      (parallel.REPLICATED, parallel.SHARDED),
      parallel.REPLICATED,
    )
    t0 = time.perf_counter()
    p_eval.lower(state, par.put_batch(host_eval_batch)).compile()
    compile_eval_s = time.perf_counter() - t0

    flops = _cost_flops(train_compiled)
    if flops:
      flops *= n_dev  # XLA reports the cost of one device's program (pmap and shard_map alike)
    if net.scan_blocks:
      flops = None  # XLA's cost analysis counts a while loop's body once: not the step's FLOPs
    paths[name] = {
      "par": par,
      "compiled": train_compiled,
      "batch": train_batch,
      "state": state,
      "times": [],
      "compile_train_s": compile_train_s,
      "compile_eval_s": compile_eval_s,
      "flops_per_step": flops,
      **_peak_memory(train_compiled),
    }

  def one_step(path):
    path["state"], metrics = path["compiled"](path["state"], path["batch"])
    jax.block_until_ready((path["state"].step, metrics))

  for path in paths.values():
    one_step(path)  # first execution (allocations, thread pools) is not timed
  torch_apart = None
  if compare == "torch":
    torch_apart = TorchApart(
      model,
      batch,
      image_size,
      precision=precision,
      num_classes=num_classes,
      overrides=overrides,
    )
  torch_times = []
  try:
    for _ in range(steps):  # interleaved: the machine's drift hits every path (PyTorch's) alike
      for path in paths.values():
        path["times"] += _time_steps(lambda path=path: one_step(path), 1)
      if torch_apart:
        torch_times += torch_apart.time_steps(1)
  finally:
    if torch_apart:
      torch_apart.close()

  if loop:
    for path in paths.values():
      path["checkpoint_first_s"], path["checkpoint_s"] = _checkpoint_save_times(
        path["par"], path["state"]
      )
    # The machine's speed drifts by more than the overhead being measured, so bare and full-loop
    # windows of the same length alternate (and the paths with them) and the overhead compares
    # their summed times.
    n_loop = loop_steps or steps
    for path in paths.values():
      path["bare_s"] = path["loop_s"] = 0.0
    for r in range(loop_rounds):
      for path in paths.values():
        path["bare_s"] += sum(_time_steps(lambda path=path: one_step(path), n_loop))
        loop_ips, path["state"] = _loop_throughput(
          path["par"],
          path["compiled"],
          path["state"],
          batch,
          image_shape[-1],
          image_size,
          n_loop,
          seed + r,
        )
        path["loop_s"] += n_loop * batch / loop_ips

  per_path = {}
  for name, path in paths.items():
    best, median = min(path["times"]), statistics.median(path["times"])
    flops = path["flops_per_step"]
    r = {
      "compile_train_s": path["compile_train_s"],
      "compile_eval_s": path["compile_eval_s"],
      "step_time_best_s": best,
      "step_time_median_s": median,
      "images_per_sec": batch / best,
      "images_per_sec_median": batch / median,
      "loop_images_per_sec": None,
      "loop_overhead_pct": None,
      "flops_per_step": flops,
      "achieved_tflops": flops / best / 1e12 if flops else None,
      "mfu": (flops / best / 1e12 / peak_tflops) if (flops and peak_tflops) else None,
      **{k: v for k, v in path.items() if k.endswith("_bytes")},
    }
    if loop:
      total = loop_rounds * n_loop * batch
      r["loop_images_per_sec"] = total / path["loop_s"]
      r["loop_bare_images_per_sec"] = total / path["bare_s"]
      r["loop_overhead_pct"] = 100.0 * (1.0 - path["bare_s"] / path["loop_s"])
      r["checkpoint_first_s"] = path["checkpoint_first_s"]
      r["checkpoint_s"] = path["checkpoint_s"]
    per_path[name] = r
  paths.clear()  # drop the states before the PyTorch comparison allocates

  # The first path's figures are the report's own (the torch ratio compares against them); every
  # path's are under "paths".
  result: dict[str, Any] = {
    "model": model,
    "batch": batch,
    "image_size": image_size,
    "precision": precision,
    "overrides": {k: str(v) for k, v in (overrides or {}).items()},
    "num_params": n_params,
    "steps": steps,
    "parallelism": parallelism[0],
    **per_path[parallelism[0]],
    "paths": per_path,
    "peak_tflops": peak_tflops,
    "compare": compare or None,
    "torch_images_per_sec": None,
    "torch_ratio": None,
    "jax_version": jax.__version__,
    "backend": jax.default_backend(),
    "device": str(devices[0].device_kind),
    "num_devices": n_dev,
    "host": platform.node(),
    "cpu_count": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  if loop:
    result["loop_steps"], result["loop_rounds"] = n_loop, loop_rounds

  if torch_apart:
    result["torch_version"] = torch_apart.info["torch_version"]
    result["torch_threads"] = torch_apart.info["threads"]
    result["torch_images_per_sec"] = batch / min(torch_times)
    result["torch_images_per_sec_median"] = batch / statistics.median(torch_times)
    result["torch_ratio"] = result["images_per_sec"] / result["torch_images_per_sec"]

  if jsonl:
    _append_result(jsonl, result)
  return result


def _append_result(jsonl, result: dict):
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  storage.append_text(jsonl, json.dumps(result, sort_keys=True) + "\n")


def _fmt(v, unit="", digits=2):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.{digits}f}{unit}"
  return f"{v}{unit}"


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
    (
      "FLOPs / step (XLA)",
      _fmt(None if r["flops_per_step"] is None else r["flops_per_step"] / 1e9, " GFLOP", 1),
    ),
    (
      "achieved",
      _fmt(None if r["achieved_tflops"] is None else r["achieved_tflops"] * 1e3, " GFLOP/s", 1),
    ),
    (
      "MFU",
      _fmt(None if r["mfu"] is None else 100 * r["mfu"], " %", 1)
      + (f" of {r['peak_tflops']} TFLOP/s" if r.get("peak_tflops") else ""),
    ),
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
    ("peak memory (XLA)", [_fmt(gib(p["peak_memory_bytes"]), " GiB", 2) for p in paths.values()]),
  ]
  width = max(len(k) for k, _ in rows)
  cols = [max(len(v[i]) for _, v in rows) for i in range(len(paths))]
  lines = [f"{'':-<{width}}-+-" + "-+-".join("-" * c for c in cols)]
  for k, values in rows:
    lines.append(f"{k:<{width}} | " + " | ".join(f"{v:>{c}}" for v, c in zip(values, cols)))
  return "\n".join(lines)


# --- PyTorch reference (optional) -----------------------------------------------------------------
def torch_resnet(model: str, num_classes: int | None = None, overrides: dict | None = None):
  """The registry's architecture in PyTorch (stems, basic/bottleneck, shortcuts A/B/C/none)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  import dataclasses  # pylint: disable=g-import-not-at-top

  cfg = {
    f.name: f.default for f in dataclasses.fields(models.ResNet) if f.name not in ("parent", "name")
  }
  cfg.update(
    models.registry.model_config(
      model,
      num_classes=num_classes,
      **{k: v for k, v in (overrides or {}).items() if k in models.registry.OVERRIDABLE},
    )
  )
  if cfg.get("preact"):
    raise ValueError("--compare=torch covers post-activation nets only (no preact)")
  width = lambda w: max(1, int(round(w * cfg["width_multiplier"])))  # noqa: E731

  class Block(nn.Module):
    def __init__(self, cin, planes, stride, bottleneck):
      super().__init__()
      exp = 4 if bottleneck else 1
      out = planes * exp
      if bottleneck:
        inner = int(planes * cfg["width_per_group"] / 64) * cfg["groups"]
        s1, s3 = (stride, 1) if cfg["stride_on"] == "1x1" else (1, stride)
        spec = [(cin, inner, 1, s1, 1), (inner, inner, 3, s3, cfg["groups"]), (inner, out, 1, 1, 1)]
      else:
        spec = [(cin, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
      layers = []
      for i, (a, b, k, s, g) in enumerate(spec):
        layers += [nn.Conv2d(a, b, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(b)]
        if i < len(spec) - 1:
          layers.append(nn.ReLU(inplace=True))
      self.branch = nn.Sequential(*layers)
      sc = cfg["shortcut"]
      changes = stride != 1 or cin != out
      self.kind = sc
      self.project = sc == "C" or (sc == "B" and changes)
      if self.project:
        self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
      self.stride, self.extra = stride, out - cin

    def forward(self, x):
      y = self.branch(x)
      if self.kind == "none":
        return torch.relu(y)
      if self.project:
        idn = self.down(x)
      elif self.kind == "A":
        idn = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
          idn = nn.functional.pad(idn, (0, 0, 0, 0, 0, self.extra))
      else:
        idn = x
      return torch.relu(y + idn)

  layers: list = []
  stem = width(cfg["stem_width"])
  if cfg["stem"] == "imagenet":
    layers += [
      nn.Conv2d(3, stem, 7, 2, 3, bias=False),
      nn.BatchNorm2d(stem),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(3, 2, 1),
    ]
  else:
    layers += [nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
  cin, bottleneck = stem, cfg["block"] == "bottleneck"
  for i, (n, planes) in enumerate(zip(cfg["stage_sizes"], cfg["stage_widths"])):
    for j in range(n):
      layers.append(Block(cin, width(planes), 2 if (i > 0 and j == 0) else 1, bottleneck))
      cin = width(planes) * (4 if bottleneck else 1)
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cfg["num_classes"])]
  return nn.Sequential(*layers)


def torch_train_step(
  model: str,
  batch: int,
  image_size: int,
  precision: str = "fp32",
  num_classes: int | None = None,
  overrides: dict | None = None,
) -> Callable[[], None]:
  """One PyTorch eager training step of ``model`` (channels_last, SGD with momentum 0.9 and weight
  decay 1e-4, random batch), run once already so that later calls are steady-state."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "--compare=torch needs PyTorch: pip install 'resnet-jax[bench]' (torch==2.13.0, CPU build)"
    ) from e
  torch.manual_seed(0)
  net = torch_resnet(model, num_classes, overrides).to(memory_format=torch.channels_last)
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.CrossEntropyLoss()
  n_cls = num_classes or models.model_spec(model).num_classes
  x = torch.randn(batch, 3, image_size, image_size).to(memory_format=torch.channels_last)
  y = torch.randint(0, min(n_cls, 10), (batch,))

  def one_step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
      loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    loss.item()

  one_step()
  return one_step


def _torch_worker(args_json: str) -> None:
  """The PyTorch side of :class:`TorchApart`: one line in (a step count), one line out (times)."""
  one_step = torch_train_step(**json.loads(args_json))  # its ImportError names the extra
  import torch  # pylint: disable=g-import-not-at-top

  print(json.dumps({"torch_version": torch.__version__, "threads": torch.get_num_threads()}))
  sys.stdout.flush()
  for line in sys.stdin:
    print(json.dumps(_time_steps(one_step, int(line))))
    sys.stdout.flush()


class TorchApart:
  """PyTorch's training step in a Python process of its own, timed when asked.

  In our process, after the JAX steps, PyTorch took up to 25 % longer a step (ResNet-56 b128:
  155-161 against 203-212 images/s in its own process): it shares the process with XLA's thread
  pools, a second OpenMP runtime (the oneDNN kernel's) and the allocator settings of
  :func:`distributed.reuse_freed_host_memory`. Its own process is how PyTorch users run it. It
  stays alive so that its steps can alternate with ours: this machine's speed drifts by up to 30 %
  within minutes, and a ratio of two windows taken minutes apart carries that drift.
  """

  def __init__(self, model: str, batch: int, image_size: int, **kwargs):
    args = {"model": model, "batch": batch, "image_size": image_size, **kwargs}
    code = "import sys\nfrom resnet_jax import bench\nbench._torch_worker(sys.argv[1])"
    self._proc = subprocess.Popen(
      [sys.executable, "-c", code, json.dumps(args)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    self.info = self._read()

  def _read(self):
    line = self._proc.stdout.readline()
    if line:
      return json.loads(line)
    self._proc.wait()
    last = (self._proc.stderr.read().strip().splitlines() or ["(no output)"])[-1]
    if "ImportError" in last or "ModuleNotFoundError" in last:
      raise ImportError(last.split(": ", 1)[-1])
    raise RuntimeError(f"the PyTorch comparison failed: {last}")

  def time_steps(self, n: int) -> list[float]:
    self._proc.stdin.write(f"{n}\n")
    self._proc.stdin.flush()
    return self._read()

  def close(self):
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._proc.stdout.close()
    self._proc.stderr.close()


# --- inference: jit eval step vs exported SavedModel in TensorFlow vs PyTorch eager ---------------
INFERENCE_PATHS = ("jax_jit", "tf_savedmodel", "torch_eager")


def inference_benchmark(
  model: str = "resnet50",
  batches: tuple[int, ...] = (1, 16),
  image_size: int = 224,
  steps: int = 5,
  rounds: int = 3,
  jsonl: str | None = None,
) -> dict[str, Any]:
  """CPU inference images/s of one network (fp32, random weights) three ways, interleaved.

  * ``jax_jit``: ``steps.predict_step`` (the eval step's forward pass: the network in inference
    mode, softmax) under ``jax.jit`` on one CPU device that uses every core, on normalised float
    input -- what ``resnet-jax predict`` runs per batch;
  * ``tf_savedmodel``: the same variables through ``serving.export_model(..., 'savedmodel')``
    (uint8 in, normalisation, network, softmax), loaded with ``tf.saved_model.load`` and called
    through its ``serving_default`` signature (jax2tf's native serialization: an ``XlaCallModule``
    op, compiled by TensorFlow's XLA);
  * ``torch_eager``: the same architecture in PyTorch (``torch_resnet``), ``eval()`` under
    ``torch.no_grad()``, channels_last.

  Each (path, batch) is timed ``steps`` calls per round after a warm-up call, ``rounds`` times in
  turn (the machine's speed drifts), and the best call counts. Ratios are images/s over
  ``jax_jit``'s at the same batch (> 1: faster than our jit eval step).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax import serving  # pylint: disable=g-import-not-at-top

  data_lib.hide_gpus_from_tf()
  cpu = jax.devices("cpu")[0]
  net = models.get_model(model)
  with jax.default_device(cpu):
    variables = jax.jit(
      lambda r: net.init(r, jnp.zeros((1, image_size, image_size, 3)), train=False)
    )(jax.random.key(0))
  spec = data_lib.dataset_info("imagenet2012")
  num_classes = int(variables["params"]["head"]["bias"].shape[0])
  served = serving.ServingModel(
    workdir="",
    config=config_lib.base_config(),
    model=net,
    variables=dict(variables),
    step=0,
    source="bench",
    labels=tuple(str(i) for i in range(num_classes)),
    names=tuple(str(i) for i in range(num_classes)),
    channels=3,
    image_size=image_size,
    resize_size=None,
    mean=spec.mean,
    std=spec.std,
  )
  state = jax.device_put(
    state_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=(),
      lr_scale=jnp.ones((), jnp.float32),
    ),
    cpu,
  )
  jit_predict = jax.jit(functools.partial(steps_lib.predict_step, model=net))
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    exported = serving.export_model(served, "savedmodel", os.path.join(tmp, "model"))
    export_s = time.perf_counter() - t0
    with tf.device("/CPU:0"):
      signature = tf.saved_model.load(exported).signatures["serving_default"]
  torch.manual_seed(0)
  torch_net = torch_resnet(model).eval().to(memory_format=torch.channels_last)

  rng = np.random.default_rng(0)
  calls, compile_s = {}, {}
  for b in batches:
    pixels = rng.integers(0, 256, (b, image_size, image_size, 3), dtype=np.uint8)
    normalised = (pixels.astype(np.float32) - np.asarray(spec.mean, np.float32)) / np.asarray(
      spec.std, np.float32
    )
    x_jax = jax.device_put({"image": normalised[:, None]}, cpu)
    x_tf = tf.constant(pixels)
    x_torch = torch.from_numpy(normalised.transpose(0, 3, 1, 2)).contiguous(
      memory_format=torch.channels_last
    )

    def jax_call(x=x_jax):
      jit_predict(state, x).block_until_ready()

    def tf_call(x=x_tf):
      signature(images=x)["probabilities"].numpy()

    def torch_call(x=x_torch):
      with torch.no_grad():
        torch_net(x).softmax(-1).numpy()

    for name, fn in zip(INFERENCE_PATHS, (jax_call, tf_call, torch_call)):
      t0 = time.perf_counter()
      fn()  # compiles (jax, tf) or warms up (torch)
      compile_s[f"{name}_b{b}"] = time.perf_counter() - t0
      calls[(name, b)] = fn

  best = {key: float("inf") for key in calls}
  for _ in range(rounds):
    for key, fn in calls.items():
      best[key] = min(best[key], min(_time_steps(fn, steps)))
  result: dict[str, Any] = {
    "benchmark": "inference",
    "model": model,
    "image_size": image_size,
    "precision": "fp32",
    "steps": steps,
    "rounds": rounds,
    "export_savedmodel_s": export_s,
    "first_call_s": compile_s,
    "jax_version": jax.__version__,
    "tf_version": tf.__version__,
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "cpu_count": os.cpu_count(),
    "host": platform.node(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  for (name, b), seconds in best.items():
    result[f"{name}_b{b}_images_per_sec"] = b / seconds
  for b in batches:
    for name in INFERENCE_PATHS[1:]:
      result[f"{name}_b{b}_ratio"] = (
        result[f"{name}_b{b}_images_per_sec"] / result[f"jax_jit_b{b}_images_per_sec"]
      )
  if jsonl:
    _append_result(jsonl, result)
  return result


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
