"""Optimizer and learning-rate schedules from the config (optax).

The learning rate at step t is ``schedule(t) * lr_scale * warm-up multiplier``:

* ``schedule`` is a pure optax schedule of the step (piecewise ÷10, linear warm-up + cosine, constant);
* ``lr_scale`` is a scalar kept in the train state and changed by the host only on an event a step
  function cannot see: the validation error reaching a plateau (÷10, the paper's ImageNet recipe,
  §3.4). Keeping it in the state means a resumed run continues with exactly the rate the
  interrupted one had;
* the warm-up multiplier is the ResNet-110 warm-up (§4.2: 0.01 until the training error is below
  80 %). Every step decides it on the device from its own minibatch error (over all replicas), in
  the optimizer state (:func:`train_error_warmup`), with no host round trip. Only configs with the
  warm-up have it: the optimizer state of every other config is laid out as before.

Config keys read here:
  optimizer            'sgd' (momentum, optional Nesterov; the paper's), 'lamb' (You et al. 2019; timm's
                       ResNet strikes back), 'lars' (You et al. 2017; MLPerf's large-batch ResNet-50)
                       or 'adamw' (Loshchilov & Hutter: decay decoupled from the adaptive step).
                       For lamb, lars and adamw, BN scale/bias and biases get neither weight decay nor
                       a trust ratio, as timm (``param_groups_weight_decay``) and MLPerf do; the
                       learning rate multiplies the whole update; for 'lars' after momentum, as in
                       timm's Lars and torch SGD (optax.lars scales before its momentum, which
                       differs only while the rate changes).
  b1, b2, eps          Adam moments and denominator constant of 'lamb' and 'adamw'.
  trust_coefficient    LARS's eta: trust ratio = eta * ||w|| / ||g + wd * w|| per kernel (optax.lars).
  learning_rate        base rate for a global batch of ``lr_reference_batch`` (0: no scaling).
  lr_reference_batch   the rate is multiplied by global_batch_size / lr_reference_batch (256 for ImageNet).
  momentum, nesterov   SGD momentum (torch semantics: v = m*v + g; p -= lr*v).
  weight_decay         L2 coefficient added to the gradient before momentum (the paper's 1e-4).
  weight_decay_on_norm_and_bias  'sgd' only: whether BN scale/bias and dense biases are decayed too
                       (the paper did); the other optimizers never decay them.
  schedule             'piecewise' | 'plateau' | 'warmup_cosine' | 'constant'.
  lr_boundaries        steps at which 'piecewise' divides the rate by 1/lr_decay_factor.
  lr_decay_factor      0.1 in the paper.
  warmup_steps         linear warm-up length for 'warmup_cosine'.
  warmup_lr_scale      > 0 enables the ResNet-110 warm-up: the rate is scaled by this (0.1 -> 0.01)
                       up to the first step whose own training top-1 error (its minibatch, all
                       replicas) is below ``warmup_until_train_error`` (0.8); that step and every
                       later one run at the full rate.
  warmup_max_steps     0 (the paper's: no cap) or a cap: step warmup_max_steps + 1 runs at the full
                       rate whatever its error (short tests).
  plateau_patience     evaluations without improvement before 'plateau' divides the rate.
  plateau_min_delta    the improvement in validation error that counts as progress.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

SCHEDULES = ("piecewise", "plateau", "warmup_cosine", "constant")
OPTIMIZERS = ("sgd", "lamb", "lars", "adamw")


def base_learning_rate(config) -> float:
  """The config's rate, linearly scaled by global batch / reference batch (Goyal et al.)."""
  if config.lr_reference_batch:
    return config.learning_rate * config.global_batch_size / config.lr_reference_batch
  return config.learning_rate


def create_schedule(config) -> optax.Schedule:
  """The step-only part of the learning rate, as an optax schedule."""
  base = base_learning_rate(config)
  kind = config.schedule
  if kind == "piecewise":
    return optax.piecewise_constant_schedule(
      base, {int(b): config.lr_decay_factor for b in config.lr_boundaries}
    )
  if kind in ("plateau", "constant"):
    return optax.constant_schedule(base)
  if kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=base,
      warmup_steps=config.warmup_steps,
      decay_steps=max(config.num_train_steps, config.warmup_steps + 1),
      end_value=0.0,
    )
  raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def _decay_mask(params, include_norm_and_bias: bool):
  """True for leaves that receive weight decay: conv/dense kernels, optionally everything."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
    {path: include_norm_and_bias or path[-1] == "kernel" for path in flat}
  )


def create_optimizer(config, params) -> optax.GradientTransformation:
  """The update rule without the learning rate (the train step applies -lr itself).

  Each rule is its optax alias (``optax.lamb``, ``optax.lars``, ``optax.adamw``) without the
  learning rate, with weight decay and trust ratio masked to the kernels. With the ResNet-110
  warm-up (``warmup_lr_scale`` > 0) the rule is chained with :func:`train_error_warmup`, whose
  ``update`` needs the step's ``train_error`` and ``step`` (``steps.train_step`` passes them).
  """
  rule = _update_rule(config, params)
  if config.warmup_lr_scale > 0:
    warmup = train_error_warmup(
      config.warmup_lr_scale, config.warmup_until_train_error, config.warmup_max_steps
    )
    return optax.chain(rule, warmup)
  return rule


def _update_rule(config, params) -> optax.GradientTransformation:
  """The config's optimizer, its layout the one checkpoints of runs without warm-up hold."""
  name = config.optimizer
  if name == "sgd":
    # L2 on the gradient before momentum, as in the paper's (Caffe/Torch) SGD. The chain's layout
    # is what checkpoints of sgd runs hold: keep it.
    decay = optax.add_decayed_weights(
      config.weight_decay, mask=_decay_mask(params, config.weight_decay_on_norm_and_bias)
    )
    return optax.chain(decay, optax.trace(decay=config.momentum, nesterov=config.nesterov))
  kernels = _decay_mask(params, include_norm_and_bias=False)
  decay = optax.add_decayed_weights(config.weight_decay, mask=kernels)
  if name == "lamb":
    adam = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
    # timm's Lamb adapts only the groups it decays, so norm and bias keep the plain Adam step.
    return optax.chain(adam, decay, optax.masked(optax.scale_by_trust_ratio(), kernels))
  if name == "lars":
    trust = optax.scale_by_trust_ratio(trust_coefficient=config.trust_coefficient)
    return optax.chain(
      decay,
      optax.masked(trust, kernels),
      optax.trace(decay=config.momentum, nesterov=config.nesterov),
    )
  if name == "adamw":
    adam = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
    # The empty first link keeps the Adam state at index 1 of the chain, where runs written
    # before decay was decoupled saved it, so their checkpoints still restore.
    return optax.chain(optax.identity(), adam, decay)
  raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class WarmupState(NamedTuple):
  """The warm-up's multiplier of the learning rate: ``warmup_lr_scale`` until the warm-up ends,
  1.0 from then on (it never goes back)."""

  lr_multiplier: jnp.ndarray


def train_error_warmup(
  lr_scale: float, until_train_error: float, max_steps: int = 0
) -> optax.GradientTransformationExtraArgs:
  """The ResNet-110 warm-up (§4.2) as an optax link: scales the updates by ``lr_scale`` up to the
  first step whose ``train_error`` is below ``until_train_error``, by 1 from that step on.

  ``update`` takes the step's ``train_error`` (its minibatch's top-1 error, the same on every
  replica) and ``step`` (steps taken before it). ``max_steps`` > 0 ends the warm-up at step
  ``max_steps + 1`` at the latest; 0 is the paper's rule, no cap.
  """

  def init(params):
    del params
    return WarmupState(lr_multiplier=jnp.asarray(lr_scale, jnp.float32))

  def update(updates, state, params=None, *, train_error, step, **extra_args):
    del params, extra_args
    over = train_error < until_train_error
    if max_steps > 0:
      over = over | (step >= max_steps)
    multiplier = jnp.where(over, jnp.float32(1.0), state.lr_multiplier)
    updates = jax.tree_util.tree_map(lambda u: u * multiplier.astype(u.dtype), updates)
    return updates, WarmupState(lr_multiplier=multiplier)

  return optax.GradientTransformationExtraArgs(init, update)


def warmup_lr_multiplier(opt_state) -> jnp.ndarray | float:
  """The multiplier :func:`train_error_warmup` holds in ``opt_state``; 1.0 without a warm-up."""
  is_warmup = lambda node: isinstance(node, WarmupState)
  for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_warmup):
    if is_warmup(node):
      return node.lr_multiplier
  return 1.0


@dataclasses.dataclass
class LearningRateController:
  """The host-side event that changes ``lr_scale``: a validation plateau (the warm-up lives on the
  device, in the optimizer state: :func:`train_error_warmup`).

  Its fields are saved with every checkpoint so that a resumed run makes the same decisions.
  """

  best_eval_error: float = float("inf")
  evals_since_best: int = 0
  lr_scale: float = 1.0

  @classmethod
  def from_config(cls, config) -> "LearningRateController":
    del config  # every run starts at the full scale
    return cls()

  def after_eval(self, config, eval_error: float) -> bool:
    """Divides the rate when validation error has not improved for ``plateau_patience`` evals."""
    if config.schedule != "plateau":
      return False
    if eval_error < self.best_eval_error - config.plateau_min_delta:
      self.best_eval_error = eval_error
      self.evals_since_best = 0
      return False
    self.evals_since_best += 1
    if self.evals_since_best >= config.plateau_patience:
      self.evals_since_best = 0
      self.lr_scale *= config.lr_decay_factor
      return True
    return False

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    if d["best_eval_error"] == float("inf"):
      d["best_eval_error"] = None
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "LearningRateController":
    d = dict(d)
    # Runs written when the warm-up was a host event saved its flag here; the optimizer state
    # holds it now.
    d.pop("warmup_active", None)
    if d.get("best_eval_error") is None:
      d["best_eval_error"] = float("inf")
    return cls(**d)
