"""``train_and_evaluate(config, workdir)``: the one training loop, and ``evaluate`` for ``--mode=eval``.

Data flow: ``data`` yields per-host batches shaped ``[local_devices, per_device, ...]`` ->
``steps.train_step`` on every device of every host (``parallel``: pmap, or jit over a mesh, by
``config.parallelism``) -> ``metrics`` (process 0 only) and ``checkpoint`` (every process). The
step number fixes the data position and the rng, so a run restored from step k continues exactly as
if it had never stopped.

``_train`` is the loop on one screen; its pieces share one ``_Run`` (the replicated state, the step,
the learning-rate controller, the writers): ``_set_up`` restores or creates the state and compiles
the steps, then ``_step``, ``_log_train_metrics``, ``_evaluate`` and ``_save`` run on their
schedules until the last step (``_finish_training``) or a signal (``preemption``,
``_stop_for_preemption``) ends it, and ``_close`` makes the result.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import data as data_lib
from resnet_jax import distributed
from resnet_jax import faults
from resnet_jax import metrics as metrics_lib
from resnet_jax import models
from resnet_jax import runs
from resnet_jax import storage
from resnet_jax.runs import CHECKPOINT_DIR, CONFIG_FILE, DONE_FILE, build_model
from resnet_jax.runs import checkpoint_meta as _checkpoint_meta
from resnet_jax.runs import expect_meta as _expect_meta
from resnet_jax.train import config as config_lib
from resnet_jax.train import mixing
from resnet_jax.train import optim
from resnet_jax.train import parallel
from resnet_jax.train import preemption as preemption_lib
from resnet_jax.train import profiling
from resnet_jax.train import state as state_lib
from resnet_jax.train import steps


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/inf loss; the run stops and keeps its last good checkpoint."""


def check_config(config):
  """Every check that can fail before data is read or anything compiles."""
  config_lib.validate(
    config, known_models=models.list_models(), known_datasets=data_lib.list_datasets()
  )
  devices = jax.device_count()
  for key in ("global_batch_size", "eval_batch_size"):
    if config[key] % devices:
      raise ValueError(
        f"config.{key}={config[key]} is not divisible by the {devices} devices; choose a "
        f"multiple of {devices}"
      )


def _data_kwargs(config) -> dict[str, Any]:
  return {
    "data_dir": config.data_dir or None,
    "image_size": config.image_size or None,
    "normalization": config.get("normalization", "channel"),
  }


def _eval_data_kwargs(config) -> dict[str, Any]:
  """The test-time input: its own resolution and crop ratio where the config sets them, centred as
  in training (a per-pixel mean is the training split's)."""
  return {
    "data_dir": config.data_dir or None,
    "image_size": config.eval_image_size or config.image_size or None,
    "crop_ratio": config.eval_crop_ratio or None,
    "normalization": config.get("normalization", "channel"),
    "mean_split": config.train_split or None,
  }


# The paper's full_conv scales (§3.4) for its 224 px crop.
PAPER_SCALES = (224, 256, 384, 480, 640)


def full_conv_scales(config) -> tuple[int, ...]:
  """The shorter sides ``full_conv`` evaluates at: ``config.eval_scales``, or if that is empty,
  scales relative to the eval crop side s (``eval_image_size``, ``image_size`` or the dataset's).

  Datasets whose images are resized down to the crop (ImageNet, image folders) get the paper's
  scales times s/224 (exactly the paper's at 224). Datasets stored at their crop size (28/32 px
  digits, MNIST, CIFAR; no resize before the crop) get s and the next two multiples of 8 above it,
  28 -> (28, 32, 40), 32 -> (32, 40, 48): at most 1.5x, not 640/224 = 2.9x upsampling of an
  image that has no more detail to give.
  """
  if config.eval_scales:
    return tuple(int(s) for s in config.eval_scales)
  info = data_lib.dataset_info(config.dataset)
  size = config.eval_image_size or config.image_size or info.image_size
  if info.resize_size:
    return tuple(int(round(k * size / PAPER_SCALES[0])) for k in PAPER_SCALES)
  above = (size // 8 + 1) * 8
  return (size, above, above + 8)


class Evaluator:
  """Runs one test-time method over the whole eval split; counts every example exactly once."""

  def __init__(self, config, model, par: parallel.DataParallel | None = None):
    self.config = config
    self.scales = full_conv_scales(config)
    self.par = par = par or parallel.create(config.parallelism)
    R, S = parallel.REPLICATED, parallel.SHARDED  # noqa: N806
    self._p_eval = par.compile(functools.partial(steps.eval_step, model=model), (R, S), R)
    self._p_predict = par.compile(functools.partial(steps.predict_step, model=model), (R, S), S)
    self._p_metrics = par.compile(
      lambda p, l, m: jax.lax.psum(steps.metrics_from_probs(p, l, m), steps.AXIS), (S, S, S), R
    )

  def _batches(self, method, scale=None):
    c = self.config
    return data_lib.eval_batches(
      c.dataset,
      global_batch_size=config_lib.eval_batch_size(c),
      method=method,
      scale=scale,
      split=c.eval_split or None,
      train_augment=c.train_augment or None,  # the views follow the run's own training
      **_eval_data_kwargs(c),
    )

  def __call__(self, replicated_state, method: str = "center") -> dict[str, float]:
    if method != "full_conv":
      total = None
      for batch in self.par.prefetch(self._batches(method)):
        sums = self.par.fetch(self._p_eval(replicated_state, batch))
        total = sums if total is None else jax.tree_util.tree_map(np.add, total, sums)
      return steps.summarize_eval(total)
    # Fully-convolutional multi-scale (§3.4): softmax scores averaged over scales, per example.
    # Eval order is deterministic, so the k-th batch of every scale holds the same examples.
    summed, labels, masks = [], [], []
    for i, scale in enumerate(self.scales):
      for j, batch in enumerate(self.par.prefetch(self._batches("full_conv", scale))):
        probs = self._p_predict(replicated_state, batch)
        if i == 0:
          summed.append(probs)
          labels.append(batch["label"])
          masks.append(batch["mask"])
        else:
          summed[j] = summed[j] + probs
    total = None
    for probs, label, mask in zip(summed, labels, masks):
      sums = self.par.fetch(self._p_metrics(probs / len(self.scales), label, mask))
      total = sums if total is None else jax.tree_util.tree_map(np.add, total, sums)
    return steps.summarize_eval(total)


def _write_json(path, obj):
  storage.write_atomically(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns final metrics."""
  check_config(config)
  config = config_lib.for_platform(config, jax.default_backend())
  info = data_lib.dataset_info(config.dataset)
  model = build_model(config, info.num_classes)
  primary = distributed.is_primary()
  workdir = storage.check_access(workdir, "--workdir", write=True)
  if config.init_from:
    storage.check_access(config.init_from, "config.init_from")
    runs.checkpoint_dir(config.init_from, "config.init_from")  # refused before any folder is made
  check_resume(config, workdir)
  made = _folders_to_make(workdir)
  if not storage.is_object_store(workdir):  # a bucket has no folders to make
    workdir.mkdir(parents=True, exist_ok=True)

  ckpt = checkpoint_lib.Checkpointer(
    workdir / CHECKPOINT_DIR,
    keep_last=config.keep_checkpoints,
    async_save=config.async_checkpoints,
  )
  lost = None
  try:
    return _train(config, workdir, ckpt, info, model, primary)
  except Exception as e:  # noqa: BLE001 - each is re-raised, as it is or as the peer it lost
    lost = _peer_lost(e, ckpt.committed_step)
    if lost is None:
      raise
    raise lost from None
  finally:
    # Also on errors: an open manager's background threads would die noisily at exit. Not after a
    # lost peer: Orbax would wait at its barriers for the lost process.
    if lost is None:
      ckpt.close()
    _remove_if_empty(made)


def _folders_to_make(workdir) -> list:
  """The workdir and its checkpoints/ where they do not exist yet, innermost first."""
  if storage.is_object_store(workdir):
    return []
  made, path = [workdir / CHECKPOINT_DIR], workdir
  while not path.exists() and path != path.parent:
    made.append(path)
    path = path.parent
  return [p for p in made if not p.exists()]


def _remove_if_empty(folders) -> None:
  """Removes the folders a run made and left empty (a refusal before its first save): a refusal
  leaves the workdir as it found it. A folder holding anything stays."""
  for folder in folders:
    try:
      if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    except OSError:
      pass


def check_resume(config, workdir) -> None:
  """Refuses to resume a run (its config.json and a checkpoint exist) with another schedule
  (``config_lib.check_resume``); says so when it trains on to another ``num_train_steps``."""
  if not (workdir / CONFIG_FILE).exists() or runs.latest_step(workdir) is None:
    return
  trained = json.loads((workdir / CONFIG_FILE).read_text())
  config_lib.check_resume(config, trained, str(workdir))
  if trained.get("num_train_steps") != config.num_train_steps:
    logging.info(
      "num_train_steps %s -> %s: config.schedule=%r does not read it, so the run trains on to "
      "the new length; config.json records it",
      trained.get("num_train_steps"),
      config.num_train_steps,
      config.schedule,
    )


def _peer_lost(error: Exception, last_good_step: int | None) -> faults.PeerLostError | None:
  """What a failure of a multi-process run amounts to when a collective with a lost process
  failed (its line names ``last_good_step``, the last committed checkpoint); None for anything
  else. The collective's error comes as a ``JaxRuntimeError`` from a step, or as another type when
  Orbax's threads re-raise it during a save. The run's own refusals (a checkpoint it cannot write
  or read, a diverged loss) already say what happened."""
  if isinstance(error, (checkpoint_lib.CheckpointError, NonFiniteLossError)):
    return None
  return faults.peer_lost_error(error, last_good_step)


@dataclasses.dataclass
class _Run:
  """What the pieces of the loop share, in one place: the state they read and change.

  ``state`` is the train state replicated over the devices; ``step`` the number of steps it has
  taken. ``pending`` holds the metrics of steps not yet logged, still on the devices: fetching
  them waits for those steps, so it happens only at a log step or a save.
  """

  config: Any
  workdir: Any
  primary: bool
  par: parallel.DataParallel
  ckpt: checkpoint_lib.Checkpointer
  controller: optim.LearningRateController
  state: Any
  step: int
  final_step: int  # num_train_steps, or stop_after_steps if that comes first
  p_train_step: Callable
  p_sync: Callable
  p_params_finite: Callable
  evaluator: Evaluator
  writer: metrics_lib.MetricWriter
  progress: metrics_lib.Progress
  throughput: metrics_lib.Throughput
  pending: list[tuple[int, Any]] = dataclasses.field(default_factory=list)
  last_good_checkpoint: int | None = None
  last_eval: dict[str, float] = dataclasses.field(default_factory=dict)
  preempted: bool = False
  profiler: profiling.Profiler | None = None


def _train(config, workdir, ckpt, info, model, primary) -> dict[str, Any]:
  """The loop: step, log, evaluate and save on schedule, stop at the end or for a signal."""
  run, batches = _set_up(config, workdir, ckpt, info, model, primary)
  with preemption_lib.Preemption(ckpt) as preemption:
    try:
      while run.step < run.final_step:
        _step(run, batches)
        step = run.step
        if step % config.log_every_steps == 0:
          _log_train_metrics(run)
        is_eval = step % config.eval_every_steps == 0 and step < run.final_step
        with run.throughput.paused():  # evaluation and checkpoints are not training time
          if is_eval:
            _evaluate(run)
          if is_eval or (step % config.checkpoint_every_steps == 0 and step < run.final_step):
            _save(run, run.last_eval if is_eval else None)
        if preemption.reached(step) and step < run.final_step:
          _stop_for_preemption(run)
          break
      if not run.preempted:
        _finish_training(run)
      ckpt.wait()
    finally:
      run.progress.close()
      run.profiler.stop()
  return _close(run)


def _set_up(config, workdir, ckpt, info, model, primary) -> tuple[_Run, Iterator]:
  """Restores (or creates) the state and compiles the steps; returns the run and its batches."""
  # Shapes come from the data itself: the first batch of the step we start from.
  start_step = ckpt.latest_step() or 0
  # Tell the preemption protocol where we are early: a SIGTERM during start-up stops every
  # process at start_step + 1 (it would otherwise agree on step 1, already behind a resumed run).
  ckpt.reached_preemption(start_step)
  train_iter = data_lib.train_batches(
    config.dataset,
    global_batch_size=config.global_batch_size,
    seed=config.seed,
    start_step=start_step,
    augment=config.train_augment or None,
    split=config.train_split or None,
    randaugment=config.randaugment,
    random_erasing=config.random_erasing,
    **_data_kwargs(config),
  )
  first = next(train_iter)
  image_shape = first["image"].shape[2:]
  # One trace of model.init serves the optimizer's mask and the checkpoint template.
  abstract_variables = state_lib.abstract_variables(model, image_shape)
  tx = optim.create_optimizer(config, abstract_variables["params"])
  par = parallel.create(config.parallelism)
  state, controller = _initial_state(
    config, ckpt, par, model, tx, image_shape, abstract_variables, start_step
  )
  if primary:
    _write_json(workdir / CONFIG_FILE, config.to_dict())
    logging.info(
      "model %s: %d parameters; %d devices over %d processes; data %s, global batch %d; workdir %s",
      _model_shown(config),
      state_lib.count_params(state.params),
      jax.device_count(),
      jax.process_count(),
      config.dataset,
      config.global_batch_size,
      workdir,
    )
  compiled = compile_steps(config, par, model, tx, info.num_classes)
  evaluator = Evaluator(config, model, par)
  writer = metrics_lib.MetricWriter(workdir, enabled=primary, resume_step=start_step)
  progress = metrics_lib.Progress(config.num_train_steps, start_step, enabled=primary)
  state = par.replicate(state)
  if info.storage == "synthetic":  # one random batch put on the devices once: steps read no input
    batches = itertools.repeat(par.put_batch(first))
  else:
    batches = par.prefetch(itertools.chain([first], train_iter), 2)
  run = _Run(
    config=config,
    workdir=workdir,
    primary=primary,
    par=par,
    ckpt=ckpt,
    controller=controller,
    state=state,
    step=start_step,
    final_step=min(config.num_train_steps, config.stop_after_steps or config.num_train_steps),
    **compiled,
    evaluator=evaluator,
    writer=writer,
    progress=progress,
    throughput=metrics_lib.Throughput(config.global_batch_size),
    profiler=profiling.Profiler(config.profile_steps, workdir, enabled=primary),
    last_good_checkpoint=start_step or None,
  )
  return run, _compile_before_the_first_collective(run, batches)


def _compile_before_the_first_collective(run, batches):
  """Many processes: compiles the train step ahead of its first call, then waits for every process
  to have compiled it, so that all reach the step's first collective within seconds of each other.

  The ahead-of-time executable is not what the call runs (pmap calls take this process's shards),
  but the persistent compile cache holds it, so the first call loads it instead of compiling.
  """
  if jax.process_count() == 1:
    return batches
  first = next(batches)
  logging.info("compiling the train step (%d processes)", jax.process_count())
  run.p_train_step.lower(run.state, first).compile()
  distributed.meet_after_compiling("train_step")
  return itertools.chain([first], batches)


def _model_shown(config) -> str:
  """``config.model``, and the net it is where the overrides make it another depth."""
  net = runs.net_name(config)
  stages = tuple(config.model_overrides.stage_sizes)
  return (
    config.model if net == config.model else f"{net} = {config.model} with stage_sizes {stages}"
  )


def _initial_state(config, ckpt, par, model, tx, image_shape, abstract_variables, start_step):
  """The state to start from and its learning-rate controller: restored from the checkpoint at
  ``start_step``, or (at step 0) freshly initialised, from ``config.init_from`` if it is set."""
  controller = optim.LearningRateController.from_config(config)
  if start_step:
    template = state_lib.abstract_train_state(
      model,
      tx,
      image_shape,
      controller.lr_scale,
      config.precision == "fp16",
      variables=abstract_variables,
      use_ema=config.ema_decay > 0,
    )
    # Either parallelism restores the other's checkpoint: both write the same single-copy state.
    state, meta = _restore(config, ckpt, par, template)
    logging.info("resumed from %s at step %d", ckpt.directory, start_step)
    return state, optim.LearningRateController.from_json(meta["lr_controller"])
  state = fresh_state(config, model, tx, image_shape, controller.lr_scale)
  if config.init_from:
    state = _initialise_from(state, config.init_from)
  return state, controller


def fresh_state(config, model, tx, image_shape, lr_scale: float = 1.0):
  """The train state of ``config`` at step 0, initialised from ``config.seed`` (on one device)."""
  return jax.jit(
    functools.partial(
      state_lib.create_train_state,
      model,
      tx,
      image_shape=image_shape,
      lr_scale=lr_scale,
      use_loss_scale=config.precision == "fp16",
      use_ema=config.ema_decay > 0,
    )
  )(jax.random.key(config.seed))


def compile_steps(config, par, model, tx, num_classes) -> dict[str, Callable]:
  """The train step, the BN-statistics sync, and the check that parameters are finite.

  ``bench`` times the train step this returns, so it times what ``config`` trains.
  """
  replicated = parallel.REPLICATED
  finite = lambda tree: jnp.all(
    jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)])
  )
  return {
    "p_train_step": par.train_step(
      steps.train_step,
      seed=config.seed + 1,
      model=model,
      tx=tx,
      schedule=optim.create_schedule(config),
      num_classes=num_classes,
      label_smoothing=config.label_smoothing,
      loss=config.loss,
      bce_target_threshold=config.bce_target_threshold,
      mix=mix_config(config),
      ema_decay=config.ema_decay,
    ),
    "p_sync": par.compile(steps.sync_batch_stats, (replicated,), replicated),
    "p_params_finite": par.compile(finite, (replicated,), replicated),
  }


def mix_config(config) -> mixing.MixConfig:
  """The config's mixup/cutmix (timm's Mixup arguments); label smoothing goes into its targets."""
  return mixing.MixConfig(
    mixup_alpha=config.mixup_alpha,
    cutmix_alpha=config.cutmix_alpha,
    mix_prob=config.mix_prob,
    switch_prob=config.mix_switch_prob,
    label_smoothing=config.label_smoothing,
  )


def _restore(config, ckpt, par, template, step=None):
  """The state at ``step`` (default: the latest) and its meta, in one read: into the template of
  the fields the checkpoint saved (``state_lib.checkpoint_template``), then as ``template``'s config
  keeps it: a moving average it does not ask for is dropped, one it asks for but the checkpoint
  lacks starts from the restored variables."""
  saved = ckpt.saved_fields(step)
  state, meta = ckpt.restore(
    state_lib.checkpoint_template(template, saved),
    step,
    expect_meta=_expect_meta(config),
    sharding=par.restore_sharding,
  )
  if saved.get("ema") and template.ema is None:
    logging.info("config.ema_decay is 0: the checkpoint's moving average is not used")
  elif not saved.get("ema") and template.ema is not None:
    logging.info("the checkpoint has no moving average: it starts from the restored variables")
  return state_lib.from_checkpoint(template, state), meta


def _step(run: _Run, batches: Iterator):
  """One train step; its metrics stay on the devices until the next log step."""
  with run.profiler.step(run.step + 1):
    with run.throughput.waiting():
      batch = next(batches)
    run.state, step_metrics = run.p_train_step(run.state, batch)
  run.step += 1
  run.profiler.after_step(run.step, step_metrics)
  run.throughput.step()
  run.pending.append((run.step, step_metrics))


def _log_train_metrics(run: _Run):
  """Writes the means of the pending steps' metrics and the window's throughput."""
  if not run.pending:
    return
  _check_finite(run)
  fetched = [run.par.fetch(m) for _, m in run.pending]
  run.pending = []
  means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  means.update(run.throughput.window())
  # (The ResNet-110 warm-up is decided by every step on the device: optim.train_error_warmup.)
  run.writer.write(run.step, means)
  shown = ("train_loss", "train_top1_error", "learning_rate", *metrics_lib.THROUGHPUT_KEYS)
  run.progress.update(run.step, {k: means[k] for k in shown if k in means})


def _set_lr_scale(run: _Run):
  """Puts the controller's learning-rate scale into the replicated state."""
  value = run.par.replicate(jnp.asarray(run.controller.lr_scale, jnp.float32))
  run.state = run.state.replace(lr_scale=value)


def _evaluate(run: _Run) -> dict[str, float]:
  """Center-crop evaluation at this step; the plateau rule of the learning rate reads it."""
  run.state = run.p_sync(run.state)
  run.last_eval = _evaluate_with_ema(run.evaluator, run.state, "center")
  run.writer.write(run.step, run.last_eval)
  if run.controller.after_eval(run.config, run.last_eval["eval_top1_error"]):
    _set_lr_scale(run)
    logging.info(
      "validation plateau at step %d: learning rate scale now %g",
      run.step,
      run.controller.lr_scale,
    )
  logging.info("eval at step %d: %s", run.step, {k: round(v, 4) for k, v in run.last_eval.items()})
  return run.last_eval


def _evaluate_with_ema(evaluator: Evaluator, state, method: str) -> dict[str, float]:
  """The raw model's metrics, and the moving average's as ``eval_ema_*`` when the state has one.
  Checkpoint ranking and the plateau rule read the raw model's."""
  result = evaluator(state, method)
  if state.ema is not None:
    ema = evaluator(state.ema_state(), method)
    result.update({f"eval_ema_{k[5:]}": v for k, v in ema.items() if k != "eval_count"})
  return result


def _last_good(run: _Run) -> str:
  step = run.last_good_checkpoint
  return f"Last good checkpoint: {'step ' + str(step) if step else 'none'}."


def _check_finite(run: _Run):
  """Stops the run at the first pending step whose loss is not finite (nothing is saved)."""
  for s, m in run.pending:
    loss = float(run.par.fetch(m["train_loss"]))
    if not math.isfinite(loss):
      raise NonFiniteLossError(
        f"loss became {loss} at step {s}; stopped without saving. {_last_good(run)} "
        f"Lower config.learning_rate or use config.precision='fp32'"
      )


def _save(run: _Run, eval_metrics: dict[str, float] | None = None):
  """Checkpoints this step, after checking that what it would save is finite."""
  _check_finite(run)
  # The losses seen so far were computed before the last update: check what would be saved too.
  if not bool(run.par.fetch(run.p_params_finite(run.state.params))):
    raise NonFiniteLossError(
      f"parameters became non-finite by step {run.step}; stopped without saving. "
      f"{_last_good(run)} Lower config.learning_rate or use config.precision='fp32'"
    )
  run.state = run.p_sync(run.state)
  run.writer.flush()  # every record up to this step is durable before the checkpoint that covers it
  run.ckpt.save(
    run.step,
    run.par.checkpoint_state(run.state),
    _checkpoint_meta(run.config, run.controller),
    metrics=eval_metrics or None,
  )
  run.last_good_checkpoint = run.step


def _stop_for_preemption(run: _Run):
  """Saves the step at which every process stops for a signal (unless saved already)."""
  if run.last_good_checkpoint != run.step:
    _save(run)
  run.preempted = True
  logging.warning("preempted: saved step %d; rerun the same command to resume", run.step)


def _finish_training(run: _Run):
  """The last log window, the final evaluation, and its checkpoint."""
  _log_train_metrics(run)
  final = _evaluate(run)
  if run.last_good_checkpoint != run.step:
    _save(run, final)


def _close(run: _Run) -> dict[str, Any]:
  """The result; a run that reached num_train_steps also gets its test-time evaluation (if
  config.eval_method is not 'center'), its curves (config.plot_curves) and the DONE file."""
  config, step = run.config, run.step
  result = {"step": step, "preempted": run.preempted, **run.last_eval}
  if run.preempted or step < config.num_train_steps:
    run.writer.close()
    return result
  if config.eval_method != "center":
    test_time = run.evaluator(run.state, config.eval_method)
    test_time = {f"{config.eval_method}_{k}": v for k, v in test_time.items()}
    run.writer.write(step, test_time)
    result.update(test_time)
  run.writer.close()
  if run.primary:
    if config.plot_curves:
      title = f"{config.model} on {config.dataset}"
      result["curves"] = metrics_lib.plot_curves(run.workdir, title=title)
    _write_json(run.workdir / DONE_FILE, result)
  return result


def _initialise_from(state, init_dir: str):
  """Params and BN statistics from another checkpoint; a head of a different shape stays fresh.

  ``init_dir``: the workdir of ``resnet-jax convert`` (a weights checkpoint) or of a training run
  (its latest checkpoint). Every leaf whose path and shape match is copied; other mismatches raise
  ``runs.RunError`` listing them (see ``runs.merge_into``, which also adapts an RGB stem to
  1-channel input). The optimizer state stays as initialised.
  """
  params, batch_stats, _ = runs.initialise_from(state.params, state.batch_stats, init_dir)
  if state.ema is not None:  # the average starts from the imported weights, not the fresh ones
    state = state.replace(ema=state_lib.initial_ema(params, batch_stats))
  return state.replace(params=params, batch_stats=batch_stats)


def eval_result_file(method: str, step: int) -> str:
  """The file in the workdir where :func:`evaluate` writes its result."""
  return f"eval_{method}_step{step}.json"


def evaluate(config, workdir: str, step: int | None = None, method: str | None = None):
  """Evaluates a checkpoint of ``workdir`` (latest, or ``step``) with a test-time method."""
  check_config(config)
  config = config_lib.for_platform(config, jax.default_backend())
  method = method or config.eval_method
  info = data_lib.dataset_info(config.dataset)
  model = build_model(config, info.num_classes)
  workdir = storage.check_access(workdir, "--workdir", write=True)  # eval_*.json goes here
  ckpt_dir = workdir / CHECKPOINT_DIR
  if not ckpt_dir.is_dir():
    raise checkpoint_lib.CheckpointError(
      f"no checkpoints in {workdir}: train first, or pass the --workdir of a trained run"
    )
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir, read_only=True, async_save=False)
  first = next(
    iter(
      data_lib.eval_batches(
        config.dataset,
        global_batch_size=config_lib.eval_batch_size(config),
        method="center",
        split=config.eval_split or None,
        **_eval_data_kwargs(config),
      )
    )
  )
  image_shape = first["image"].shape[3:]
  abstract_variables = state_lib.abstract_variables(model, image_shape)  # traced once, used twice
  tx = optim.create_optimizer(config, abstract_variables["params"])
  template = state_lib.abstract_train_state(
    model,
    tx,
    image_shape,
    use_loss_scale=config.precision == "fp16",
    variables=abstract_variables,
    use_ema=config.ema_decay > 0,
  )
  par = parallel.create(config.parallelism)
  try:
    saved = ckpt.all_steps()
    if step is not None and step not in saved:
      raise checkpoint_lib.CheckpointError(
        f"no checkpoint at step {step} in {workdir}; its steps: "
        f"{', '.join(map(str, saved)) or 'none'} (--eval_step=N, or leave it out for the latest)"
      )
    used_step = step if step is not None else ckpt.latest_step()
    if used_step is not None and ckpt.read_meta(used_step).get("kind") == "weights":
      # A converted (e.g. torchvision) checkpoint holds only params and BN statistics.
      state = jax.jit(
        functools.partial(state_lib.create_train_state, model, tx, image_shape=image_shape)
      )(jax.random.key(0))
      state = _initialise_from(state, workdir)
    else:
      state, _ = _restore(config, ckpt, par, template, step)
  finally:
    ckpt.close()
  state = par.replicate(state)
  evaluator = Evaluator(config, model, par)
  result = {"step": used_step, "method": method, **_evaluate_with_ema(evaluator, state, method)}
  if distributed.is_primary():
    _write_json(workdir / eval_result_file(method, used_step), result)
  return result
