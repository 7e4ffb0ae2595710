"""``train_step`` and ``eval_step``: pure functions run on every device over axis ``"batch"``.

``train.parallel`` compiles them with ``jax.pmap`` or with ``jax.jit`` + ``jax.shard_map`` over a
mesh (``config.parallelism``); the functions are the same either way.

Each device sees ``[per_device, ...]`` of the global batch. Gradients are averaged across all
replicas (every device of every host) with ``lax.pmean``; BatchNorm statistics are averaged too when
the model was built with ``bn_axis_name=AXIS`` (cross-replica BN), otherwise each replica keeps its
own until ``sync_batch_stats``.

Beyond the paper, each off unless configured: mixup/cutmix on the replica's share of the batch
(``train.mixing``), a sigmoid BCE loss, stochastic layers fed the ``"dropout"`` rng, and an
exponential moving average of the variables (``TrainState.ema``). Every draw comes from the step's
``rng``: a function of the seed, the step and the replica, so a resumed run draws the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from resnet_jax.train import mixing
from resnet_jax.train import optim
from resnet_jax.train.state import TrainState

AXIS = "batch"
LOSSES = ("softmax_ce", "bce")


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = (
    optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    if label_smoothing
    else jax.nn.one_hot(labels, num_classes)
  )
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def binary_cross_entropy(logits, targets, target_threshold: float = 0.0):
  """timm's BinaryCrossEntropy: sigmoid BCE per class against soft ``targets`` [N, K], mean over
  classes and examples; ``target_threshold`` > 0 first sets targets above it to 1, the rest to 0."""
  targets = targets.astype(jnp.float32)
  if target_threshold > 0:
    targets = (targets > target_threshold).astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean()


def _inputs_and_loss(batch, rng, *, num_classes, label_smoothing, mix, loss, bce_target_threshold):
  """The images the model sees, ``loss(logits)`` and the class each example counts as for the
  train error (the label, or with mixing the argmax of its soft target)."""
  images, labels = batch["image"], batch["label"]
  if mix is not None and mix.enabled:
    images, targets = mixing.mix(rng, images, labels, num_classes, mix)
    labels = jnp.argmax(targets, -1)
  elif loss == "softmax_ce":
    # The paper's path, unchanged: integer labels, optax's smoothing.
    return (
      images,
      lambda logits: cross_entropy(logits, labels, num_classes, label_smoothing),
      labels,
    )
  else:
    targets = mixing.smooth_one_hot(labels, num_classes, label_smoothing)
  if loss == "bce":
    return (
      images,
      lambda logits: binary_cross_entropy(logits, targets, bce_target_threshold),
      labels,
    )
  return (
    images,
    lambda logits: optax.softmax_cross_entropy(logits.astype(jnp.float32), targets),
    labels,
  )


def ema_update(ema, params, batch_stats, decay: float):
  """``decay * ema + (1 - decay) * new`` for every parameter and BN statistic."""
  new = {"params": params, "batch_stats": batch_stats}
  return jax.tree_util.tree_map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def _apply_gradients(
  state, grads, batch_stats, grads_finite, train_error, *, tx, schedule, ema_decay
):
  """The state one step on (params, BN statistics, optimizer state, average) and the step's rate.

  ``train_error`` is the step's own minibatch error over all replicas: the ResNet-110 warm-up in
  the optimizer state (``optim.train_error_warmup``) reads it; other optimizers ignore it.
  """
  lr = schedule(state.step) * state.lr_scale
  updates, opt_state = optax.with_extra_args_support(tx).update(
    grads, state.opt_state, state.params, train_error=train_error, step=state.step
  )
  params = optax.apply_updates(state.params, jax.tree_util.tree_map(lambda u: -lr * u, updates))
  lr = lr * optim.warmup_lr_multiplier(opt_state)  # the rate the step applied, warm-up included
  if state.loss_scale is not None:
    # fp16: an overflowing step is skipped (the loss scale shrinks instead). Skipped entirely:
    # its BN statistics may come from overflowed activations, and a skipped step should leave
    # nothing behind that a later step reads.
    keep = lambda new, old: jax.tree_util.tree_map(
      lambda n, o: jnp.where(grads_finite, n, o), new, old
    )
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    batch_stats = keep(batch_stats, state.batch_stats)
  ema = state.ema
  if ema is not None:
    # From the kept variables: a skipped fp16 step moves the average toward unchanged ones.
    ema = ema_update(ema, params, batch_stats, ema_decay)
  new_state = state.replace(
    step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema
  )
  return new_state, lr


def train_step(
  state: TrainState,
  batch,
  rng,
  *,
  model,
  tx,
  schedule,
  num_classes: int,
  label_smoothing: float = 0.0,
  loss: str = "softmax_ce",
  bce_target_threshold: float = 0.0,
  mix: mixing.MixConfig | None = None,
  ema_decay: float = 0.0,
):
  """One optimizer step on this replica's share of the batch; returns the new state and metrics.

  ``rng`` is this replica's key: one half draws the batch's mixup/cutmix, the other feeds the
  model's stochastic layers (stochastic depth) as ``rngs={"dropout": ...}``; a model without any
  ignores it. ``mix``: a ``mixing.MixConfig`` (None or disabled: no mixing). ``ema_decay`` is
  used when ``state.ema`` holds an average.
  """
  mix_rng, dropout_rng = jax.random.split(rng)
  images, loss_of, labels = _inputs_and_loss(
    batch,
    mix_rng,
    num_classes=num_classes,
    label_smoothing=label_smoothing,
    mix=mix,
    loss=loss,
    bce_target_threshold=bce_target_threshold,
  )

  def loss_fn(params):
    logits, new_vars = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_rng},
    )
    return loss_of(logits).mean(), (logits, new_vars["batch_stats"])

  if state.loss_scale is not None:
    loss_scale, grads_finite, (loss, (logits, batch_stats)), grads = (
      state.loss_scale.value_and_grad(loss_fn, has_aux=True, axis_name=AXIS)(state.params)
    )
  else:
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    loss_scale, grads_finite = None, jnp.array(True)

  # The global minibatch's error, computed before the update so the warm-up can read it.
  top1_error = lax.pmean(jnp.mean(jnp.argmax(logits, -1) != labels), AXIS)
  new_state, lr = _apply_gradients(
    state,
    grads,
    batch_stats,
    grads_finite,
    top1_error,
    tx=tx,
    schedule=schedule,
    ema_decay=ema_decay,
  )
  new_state = new_state.replace(loss_scale=loss_scale)
  metrics = lax.pmean(
    {"train_loss": loss, "learning_rate": lr, "grad_norm": optax.global_norm(grads)}, AXIS
  )
  return new_state, {**metrics, "train_top1_error": top1_error}


def _view_averaged_probs(state: TrainState, images, model):
  """Softmax averaged over the views axis: [B, V, H, W, C] -> [B, classes] (10-crop, §3.4)."""
  b, v = images.shape[:2]
  logits = model.apply(
    {"params": state.params, "batch_stats": state.batch_stats},
    images.reshape((b * v,) + images.shape[2:]),
    train=False,
  )
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probs.reshape(b, v, -1).mean(axis=1)


def metrics_from_probs(probs, labels, mask):
  """Sums over the batch (masked padding excluded): NLL, top-1 and top-5 correct, count."""
  mask = mask.astype(jnp.float32)
  nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0] + 1e-12)
  top5 = lax.top_k(probs, min(5, probs.shape[-1]))[1]
  return {
    "loss_sum": jnp.sum(nll * mask),
    "top1_correct": jnp.sum((jnp.argmax(probs, -1) == labels) * mask),
    "top5_correct": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
    "count": jnp.sum(mask),
  }


def eval_step(state: TrainState, batch, *, model):
  """Summed metrics of one eval batch over all replicas; padded examples (mask 0) count for nothing."""
  probs = _view_averaged_probs(state, batch["image"], model)
  return lax.psum(metrics_from_probs(probs, batch["label"], batch["mask"]), AXIS)


def predict_step(state: TrainState, batch, *, model):
  """Per-example class probabilities (for scores averaged over several passes, e.g. scales)."""
  return _view_averaged_probs(state, batch["image"], model)


def sync_batch_stats(state: TrainState) -> TrainState:
  """Averages per-replica BN statistics so every replica (and every checkpoint) agrees."""
  state = state.replace(batch_stats=lax.pmean(state.batch_stats, AXIS))
  if state.ema is not None:
    ema = {**state.ema, "batch_stats": lax.pmean(state.ema["batch_stats"], AXIS)}
    state = state.replace(ema=ema)
  return state


def summarize_eval(sums) -> dict:
  count = max(float(sums["count"]), 1.0)
  return {
    "eval_loss": float(sums["loss_sum"]) / count,
    "eval_top1_error": 1.0 - float(sums["top1_correct"]) / count,
    "eval_top5_error": 1.0 - float(sums["top5_correct"]) / count,
    "eval_count": int(round(float(sums["count"]))),
  }
