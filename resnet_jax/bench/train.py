"""``resnet-jax bench``: how fast the real train step turns compute into trained models.

One call of :func:`run_benchmark` measures, for one model / batch / image size / precision, and for
each data-parallel path (``parallelism``: ``pmap`` and ``jit`` over a mesh, side by side, their
timed steps and windows interleaved so the machine's drift hits both alike):

* compile time of the train step and of the eval step (``lower().compile()`` of the very functions
  the training loop compiles: ``train.loop.compile_steps``'s train step, with the config's
  optimizer, loss, label smoothing, mixing, EMA and precision and the state donated, and
  ``steps.eval_step``);
* bare train-step images/s: the compiled step on a synthetic batch already on the device, best of
  ``steps`` timed steps (the machine is shared and noisy; the median is reported too);
* full-loop images/s: the same compiled step fed by the real input pipeline (``data.train_batches``
  on the bundled ``digits`` dataset at ``image_size`` (random-resized crop above 32) and repeated to
  3 channels, prefetched
  to the device as ``train.loop`` does), per-step rng, metrics fetched and written to
  ``metrics.jsonl``, and one asynchronous Orbax checkpoint inside every timed window.  Bare and
  full-loop windows of ``loop_steps`` steps alternate ``loop_rounds`` times (the machine's speed
  drifts more than the overhead) and the overhead is ``1 - bare time / loop time`` in %;
* FLOPs of one step, analytic (``models.count_macs``: 6 x multiply-adds per image, what MFU counts)
  and from XLA's cost analysis (which misses custom calls such as the oneDNN convolutions) ->
  achieved FLOP/s of the analytic count at the best step time, and MFU against ``peak_tflops`` or,
  by default, the device's dense peak for the precision (:mod:`.peaks`; none for CPUs);
* peak device memory of the train step from XLA's memory analysis (arguments + outputs - donated
  aliases + temporaries);
* ``compare='torch'``: the same architecture written in PyTorch (eager, channels_last, same batch,
  SGD momentum 0.9 + weight decay 1e-4 whatever the config's optimizer) in a Python process of its
  own (:class:`reference.TorchApart`, running the checkout's ``benchmarks/torch_reference.py``), its
  ``steps`` timed steps alternating with ours one for one; ``torch_ratio`` = JAX images/s /
  PyTorch images/s (> 1: JAX is faster).

Results come back as a dict, print with :func:`report.format_report` and append as one JSON line to
``jsonl``.  PyTorch is optional (``pip install resnet-jax[bench]``) and imported only for
``compare='torch'``.  The step is that of a full training config (:func:`bench_config`): ``config``
(default: the built-in digits recipe) with bench's model, batch, precision and seed; ``overrides``
are ResNet fields on top of its model (``scan_blocks``, ``remat``, ``matmul_1x1``, ...).
``XLA_FLAGS`` from the environment is recorded with the result.
Command line: ``resnet-jax bench --model=resnet50 --batch_size=16 --image_size=224`` (flags and
defaults: ``resnet-jax bench --help``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np

from resnet_jax import models
from resnet_jax.bench import peaks, reference, report
from resnet_jax.train import config as config_lib
from resnet_jax.train import optim
from resnet_jax.train import parallel
from resnet_jax.train import state as state_lib
from resnet_jax.train import steps as steps_lib

PRECISIONS = ("fp32", "bf16", "auto")  # 'auto': bf16 on GPU/TPU, fp32 on CPU
LOOP_DATASET = "digits"
# The config keys that shape the train step besides the model (the report names them).
STEP_KEYS = (
  "optimizer",
  "schedule",
  "loss",
  "label_smoothing",
  "mixup_alpha",
  "cutmix_alpha",
  "ema_decay",
)


def bench_config(model: str, batch: int, precision: str, config=None, seed: int = 0):
  """The training config whose step bench times: ``config`` (default: the built-in experiment,
  the digits recipe) with bench's model, global batch, precision and seed."""
  if config is None:
    config = config_lib.load(config_lib.DEFAULT_EXPERIMENT)
  c = config.copy_and_resolve_references()
  c.model = model
  c.global_batch_size = batch
  c.eval_batch_size = 0  # bench's eval step runs on its train batch
  c.precision = precision
  c.seed = seed
  config_lib.validate(c, known_models=models.list_models(), known_datasets=None)
  return c


def _with_overrides(config, overrides: dict | None):
  """``config`` with bench's ``--override`` ResNet fields over its model overrides, taken as given
  (``runs.build_model`` builds the network from it, as for training)."""
  c = config.copy_and_resolve_references()
  c.model_overrides = {**c.model_overrides.to_dict(), **(overrides or {})}
  return c


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


def time_steps(step_fn, n: int) -> list[float]:
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


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every data-parallel path shares: the config, network, optimizer and initial state (host)."""

  config: Any
  image_size: int
  net: Any
  tx: Any
  host_state: Any
  num_classes: int

  @property
  def model(self) -> str:
    return self.config.model

  @property
  def batch(self) -> int:
    return self.config.global_batch_size

  @property
  def seed(self) -> int:
    return self.config.seed

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)


def _check_arguments(parallelism: tuple[str, ...], precision: str, compare, jsonl) -> None:
  unknown = [p for p in parallelism if p not in parallel.PARALLELISMS]
  if not parallelism or unknown:
    raise ValueError(f"parallelism must be some of {parallel.PARALLELISMS}, got {parallelism!r}")
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
  if compare not in (None, "", "torch"):
    raise ValueError(f"compare must be 'torch' or None, got {compare!r}")
  if compare == "torch":
    reference.reference_path()  # the checkout's PyTorch reference: missing fails before compiling
  if jsonl:  # a bad bucket fails now, not after the benchmark has run
    from resnet_jax import storage  # pylint: disable=g-import-not-at-top

    storage.check_access(jsonl, "--jsonl", write=True)


def set_up(config, image_size: int, overrides=None, num_classes: int | None = None) -> Setup:
  """The network, optimizer and step-0 state of ``config`` as the training loop builds them, on
  ``image_size``² RGB images with the model's own classes (or ``num_classes``)."""
  from resnet_jax import runs  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  num_classes = num_classes or models.model_spec(config.model).num_classes
  net = runs.build_model(_with_overrides(config, overrides), num_classes)
  image_shape = (image_size, image_size, 3)
  tx = optim.create_optimizer(config, state_lib.abstract_variables(net, image_shape)["params"])
  lr_scale = optim.LearningRateController.from_config(config).lr_scale
  host_state = jax.device_get(loop.fresh_state(config, net, tx, image_shape, lr_scale))
  return Setup(config, image_size, net, tx, host_state, num_classes)


def host_batches(setup: Setup, n_dev: int) -> tuple[dict, dict]:
  """One synthetic train batch and one eval batch in the data pipeline's layout."""
  if setup.batch % n_dev:
    raise ValueError(
      f"batch {setup.batch} is not divisible by the {n_dev} local devices; use a multiple of {n_dev}"
    )
  rng = np.random.default_rng(setup.seed)
  per_device = (n_dev, setup.batch // n_dev)
  # [devices, per_device, ...]; each path puts it on the devices its own way.
  host_batch = {
    "image": np.asarray(rng.standard_normal((*per_device, *setup.image_shape)), np.float32),
    "label": np.asarray(rng.integers(0, min(setup.num_classes, 10), per_device), np.int32),
  }
  host_eval_batch = {
    "image": host_batch["image"][:, :, None],
    "label": host_batch["label"],
    "mask": np.ones(per_device, bool),
  }
  return host_batch, host_eval_batch


def lower_train_step(par: parallel.DataParallel, setup: Setup, state, batch):
  """The training loop's own train step of ``setup.config`` (``loop.compile_steps``), lowered for
  ``state`` and ``batch`` on the devices of ``par``."""
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  steps = loop.compile_steps(setup.config, par, setup.net, setup.tx, setup.num_classes)
  return steps["p_train_step"].lower(state, batch)


def _compile_path(name: str, setup: Setup, host_batch, host_eval_batch, n_dev: int) -> dict:
  """Compiles exactly what train.loop compiles for path ``name`` (axis "batch", state donated)."""
  par = parallel.create(name)
  state = par.replicate(setup.host_state)
  train_batch = par.put_batch(host_batch)
  t0 = time.perf_counter()
  train_compiled = lower_train_step(par, setup, state, train_batch).compile()
  compile_train_s = time.perf_counter() - t0
  p_eval = par.compile(
    functools.partial(steps_lib.eval_step, model=setup.net),
    (parallel.REPLICATED, parallel.SHARDED),
    parallel.REPLICATED,
  )
  t0 = time.perf_counter()
  p_eval.lower(state, par.put_batch(host_eval_batch)).compile()
  compile_eval_s = time.perf_counter() - t0

  flops = _cost_flops(train_compiled)
  if flops:
    flops *= n_dev  # XLA reports the cost of one device's program (pmap and shard_map alike)
  if setup.net.scan_blocks:
    flops = None  # XLA's cost analysis counts a while loop's body once: not the step's FLOPs
  return {
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


def _one_step(path: dict) -> None:
  path["state"], metrics = path["compiled"](path["state"], path["batch"])
  jax.block_until_ready((path["state"].step, metrics))


def _time_bare_steps(paths: dict, steps: int, torch_apart) -> list[float]:
  """``steps`` timed steps of every path, interleaved; returns PyTorch's step times (if any)."""
  torch_times = []
  try:
    for _ in range(steps):  # interleaved: the machine's drift hits every path (PyTorch's) alike
      for path in paths.values():
        path["times"] += time_steps(lambda path=path: _one_step(path), 1)
      if torch_apart:
        torch_times += torch_apart.time_steps(1)
  finally:
    if torch_apart:
      torch_apart.close()
  return torch_times


def _time_loop(paths: dict, setup: Setup, n_loop: int, loop_rounds: int) -> None:
  """Checkpoint save times, then bare and full-loop windows of ``n_loop`` steps, alternating."""
  for path in paths.values():
    path["checkpoint_first_s"], path["checkpoint_s"] = _checkpoint_save_times(
      path["par"], path["state"]
    )
  # The machine's speed drifts by more than the overhead being measured, so bare and full-loop
  # windows of the same length alternate (and the paths with them) and the overhead compares
  # their summed times.
  for path in paths.values():
    path["bare_s"] = path["loop_s"] = 0.0
  for r in range(loop_rounds):
    for path in paths.values():
      path["bare_s"] += sum(time_steps(lambda path=path: _one_step(path), n_loop))
      loop_ips, path["state"] = _loop_throughput(
        path["par"],
        path["compiled"],
        path["state"],
        setup.batch,
        setup.image_shape[-1],
        setup.image_size,
        n_loop,
        setup.seed + r,
      )
      path["loop_s"] += n_loop * setup.batch / loop_ips


def _path_figures(
  path: dict, batch: int, flops: float, peak_tflops, loop_window: tuple[int, int] | None
) -> dict:
  """One path's figures; ``flops`` the analytic count of one step (all devices), ``peak_tflops``
  that of all devices; ``loop_window`` is (rounds, steps) when the full loop was timed."""
  best, median = min(path["times"]), statistics.median(path["times"])
  r = {
    "compile_train_s": path["compile_train_s"],
    "compile_eval_s": path["compile_eval_s"],
    "step_time_best_s": best,
    "step_time_median_s": median,
    "images_per_sec": batch / best,
    "images_per_sec_median": batch / median,
    "loop_images_per_sec": None,
    "loop_overhead_pct": None,
    "flops_per_step": path["flops_per_step"],
    "analytic_flops_per_step": flops,
    "achieved_tflops": flops / best / 1e12 if flops else None,
    "mfu": (flops / best / 1e12 / peak_tflops) if (flops and peak_tflops) else None,
    **{k: v for k, v in path.items() if k.endswith("_bytes")},
  }
  if loop_window:
    total = loop_window[0] * loop_window[1] * batch
    r["loop_images_per_sec"] = total / path["loop_s"]
    r["loop_bare_images_per_sec"] = total / path["bare_s"]
    r["loop_overhead_pct"] = 100.0 * (1.0 - path["bare_s"] / path["loop_s"])
    r["checkpoint_first_s"] = path["checkpoint_first_s"]
    r["checkpoint_s"] = path["checkpoint_s"]
  return r


def _result(setup: Setup, precision, overrides, steps, parallelism, per_path, peak_tflops, compare):
  """The report dict: the first path's figures are the report's own (the torch ratio compares
  against them); every path's are under "paths"."""
  devices = jax.local_devices()
  return {
    "model": setup.model,
    "batch": setup.batch,
    "image_size": setup.image_size,
    "precision": precision,
    "overrides": {k: str(v) for k, v in (overrides or {}).items()},
    "train_step": {k: setup.config[k] for k in STEP_KEYS},
    "config": setup.config.to_dict(),
    "num_params": state_lib.count_params(setup.host_state.params),
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
    "num_devices": len(devices),
    "host": platform.node(),
    "cpu_count": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }


def _add_torch_figures(result: dict, torch_apart, torch_times: list[float]) -> None:
  batch = result["batch"]
  result["torch_version"] = torch_apart.info["torch_version"]
  result["torch_threads"] = torch_apart.info["threads"]
  result["torch_images_per_sec"] = batch / min(torch_times)
  result["torch_images_per_sec_median"] = batch / statistics.median(torch_times)
  result["torch_ratio"] = result["images_per_sec"] / result["torch_images_per_sec"]


def run_benchmark(
  model: str,
  batch: int,
  image_size: int,
  precision: str = "auto",
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
  config=None,
) -> dict[str, Any]:
  """Benchmarks the train step that ``config`` (default: the digits recipe) trains with ``model``,
  ``batch`` and ``precision``; returns the report dict (see module doc)."""
  parallelism = tuple(parallelism)
  _check_arguments(parallelism, precision, compare, jsonl)
  precision = config_lib.precision_for_platform(precision, jax.default_backend())
  setup = set_up(
    bench_config(model, batch, precision, config, seed), image_size, overrides, num_classes
  )
  n_dev = len(jax.local_devices())
  host_batch, host_eval_batch = host_batches(setup, n_dev)
  paths = {
    name: _compile_path(name, setup, host_batch, host_eval_batch, n_dev) for name in parallelism
  }
  for path in paths.values():
    _one_step(path)  # first execution (allocations, thread pools) is not timed
  torch_apart = None
  if compare == "torch":
    torch_apart = reference.TorchApart(
      model,
      batch,
      image_size,
      precision=precision,
      num_classes=setup.num_classes,
      overrides=overrides,
    )
  torch_times = _time_bare_steps(paths, steps, torch_apart)
  n_loop = loop_steps or steps
  if loop:
    _time_loop(paths, setup, n_loop, loop_rounds)
  window = (loop_rounds, n_loop) if loop else None
  flops = peaks.train_step_flops(models.count_macs(setup.net, image_size), batch)
  device_kind = str(jax.local_devices()[0].device_kind)
  if peak_tflops is None and (device_peak := peaks.peak_tflops(device_kind, precision)):
    peak_tflops = device_peak * n_dev
  per_path = {
    name: _path_figures(p, batch, flops, peak_tflops, window) for name, p in paths.items()
  }
  del paths  # the device states
  result = _result(setup, precision, overrides, steps, parallelism, per_path, peak_tflops, compare)
  if loop:
    result["loop_steps"], result["loop_rounds"] = n_loop, loop_rounds
  if torch_apart:
    _add_torch_figures(result, torch_apart, torch_times)
  if jsonl:
    report.append_result(jsonl, result)
  return result
