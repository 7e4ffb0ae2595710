"""Every config key the training program reads, its default, and its one meaning.

Experiment files in ``configs/`` start from ``base_config()`` and only choose values: each file is
the record of its experiment. ``validate`` rejects bad values with one line naming the key and the
fix, before anything compiles. ``config_file`` finds the experiment files the wheel ships.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

# The experiment files: the wheel ships the checkout's configs/ as resnet_jax/configs/ (setup.py);
# in a checkout (an editable install) they are the configs/ folder beside the package.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG_DIRS = (
  os.path.join(_PACKAGE_DIR, "configs"),
  os.path.join(os.path.dirname(_PACKAGE_DIR), "configs"),
)

# What `resnet-jax train` and a sweep member without a config file run.
DEFAULT_EXPERIMENT = "digits"


def base_config() -> ml_collections.ConfigDict:
  """Every key with its default, in groups: model, data, optimisation, schedule, the later
  recipes' ingredients, bookkeeping. Each key is documented once, where its group sets it."""
  c = ml_collections.ConfigDict()
  _model_keys(c)
  _data_keys(c)
  _optimisation_keys(c)
  _schedule_keys(c)
  _beyond_the_paper(c)
  _bookkeeping_keys(c)
  return c


def _model_keys(c: ml_collections.ConfigDict) -> None:
  """The network (resnet_jax.models registry), its numerics and how it is spread over devices."""
  c.model = "resnet20"  # registry name; `resnet-jax models` lists them.
  # ResNet fields passed to get_model; '' keeps the registry's default for that model.
  c.model_overrides = ml_collections.ConfigDict(
    {
      "shortcut": "",  # 'A' | 'B' | 'C' | 'none' (paper §3.3, Table 3).
      "stride_on": "",  # '3x3' (v1.5, torchvision) | '1x1' (the paper's v1).
      "zero_init_last_bn": False,
      "width_multiplier": 1.0,  # scales every width (narrow nets for quick studies).
      "stage_sizes": (),  # blocks per stage, e.g. (1, 1, 1) for a 6n+2 net with n=1.
      # Compile each stage's repeated block once (nn.scan): a 1202-layer net compiles in seconds
      # instead of minutes. Checkpoints then hold the stacked layout (resnet.to_unrolled).
      "scan_blocks": False,
      "remat": False,  # recompute block activations in the backward pass (memory).
      # How convolutions run on the CPU (GPU/TPU always lower plain convolutions): 'auto' = oneDNN
      # where the extra 'resnet-jax[cpu]' and g++ are installed (fp32), else 'xla'; 'xla' = lax.conv
      # (1x1 as matmuls); 'onednn' = oneDNN inside the step (falls back to lax.conv with a warning
      # where it cannot run). Parameters and checkpoints are the same for all three.
      "conv_impl": "auto",
      # Stochastic depth (Huang et al. 2016; timm's drop_path_rate): the last block drops its
      # residual branch per example with this probability in training, earlier blocks linearly
      # less, kept branches scaled by 1 / (1 - rate); the identity at eval. In [0, 1); 0 = off.
      "drop_path_rate": 0.0,
    }
  )
  # 'fp32' | 'bf16' (bf16 compute, fp32 params) | 'fp16' (+ loss scaling) | 'auto': bf16 on GPU
  # and TPU, fp32 on CPU, chosen when the run starts (for_platform); config.json records the choice.
  c.precision = "fp32"
  c.cross_replica_bn = (
    True  # BN statistics over the global batch (else per replica, synced at evals).
  )
  c.init_from = ""  # workdir of a converted/pretrained checkpoint to start from.
  # How the step runs on every device of every process (resnet_jax.train.parallel): 'pmap' (the
  # state copied per device, batches [devices, per_device, ...]) or 'jit' (jax.jit + shard_map over
  # a Mesh: global arrays, replicated state, Orbax saving them without a gather). Same numbers;
  # a checkpoint of either resumes under the other. 'jit' needs cross_replica_bn=True.
  c.parallelism = "pmap"


def _optimisation_keys(c: ml_collections.ConfigDict) -> None:
  """Batch, length and optimizer; resnet_jax.train.optim's docstring documents each key."""
  c.global_batch_size = 128
  # Examples per evaluation batch over all devices; 0 = global_batch_size. Inference keeps no
  # activations for a backward pass, so a larger batch fits and a split is read in fewer steps.
  c.eval_batch_size = 0
  c.num_train_steps = 1000
  c.optimizer = "sgd"  # 'sgd' | 'lamb' | 'lars' | 'adamw'
  c.learning_rate = 0.1
  c.lr_reference_batch = 0  # > 0: the rate scales by global_batch_size / this
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.weight_decay_on_norm_and_bias = True  # 'sgd' only; the other optimizers never decay them


def _schedule_keys(c: ml_collections.ConfigDict) -> None:
  """The learning-rate schedule and the host-side scale events (train.optim documents each)."""
  c.schedule = "piecewise"  # 'piecewise' | 'plateau' | 'warmup_cosine' | 'constant'
  c.lr_boundaries = ()
  c.lr_decay_factor = 0.1
  c.warmup_steps = 0
  # > 0: the ResNet-110 warm-up (§4.2), the rate scaled by this up to the first step whose own
  # minibatch training error is below warmup_until_train_error, decided on the device each step
  # (train.optim.train_error_warmup). warmup_max_steps: 0 = no cap (the paper's); N > 0 ends it at
  # step N + 1 at the latest (short tests).
  c.warmup_lr_scale = 0.0
  c.warmup_max_steps = 0
  c.warmup_until_train_error = 0.8
  c.plateau_patience = 3
  c.plateau_min_delta = 1e-3


def _bookkeeping_keys(c: ml_collections.ConfigDict) -> None:
  """Seed, logging, evaluation and checkpointing cadence, profiling."""
  c.seed = 0
  c.log_every_steps = 50
  c.eval_every_steps = 500  # also a checkpoint step (best-by-validation needs its metric).
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3  # the latest K, plus the best by validation error.
  c.async_checkpoints = True
  c.stop_after_steps = 0  # > 0: stop (with a checkpoint) after this step, e.g. for tests.
  # WORKDIR/curves.png (top-1 error and loss against step) when the run ends. Loading matplotlib
  # and drawing is a visible share of a run of seconds: sweeps of many short runs may turn it off.
  c.plot_curves = True
  # (start, stop): process 0 writes a jax.profiler trace of steps start..stop (counted from 1) to
  # WORKDIR/profile (TensorBoard's profile plugin, Perfetto); () = off. train.profiling.
  c.profile_steps = ()


def _beyond_the_paper(c: ml_collections.ConfigDict) -> None:
  """The training keys of later recipes (Bag of Tricks, ResNet strikes back, MLPerf), all off."""
  # Targets (1 - label_smoothing) * one_hot + label_smoothing / classes (Szegedy et al. 2016).
  c.label_smoothing = 0.0
  # optimizer 'lamb' | 'lars' | 'adamw' (train.optim): Adam moments and constant, LARS's eta.
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8  # torch AdamW's; timm's Lamb uses 1e-6.
  c.trust_coefficient = 0.001  # LARS only (MLPerf's 0.001); LAMB's trust ratio is unscaled.
  # 'softmax_ce' | 'bce': sigmoid binary cross-entropy per class, mean over classes and batch
  # (timm's BinaryCrossEntropy), on the same (smoothed, mixed) targets.
  c.loss = "softmax_ce"
  # 'bce' only: > 0 turns targets above it into 1 and the rest into 0 (timm's target_threshold).
  c.bce_target_threshold = 0.0
  # Mixup / CutMix per batch on device (train.mixing, timm's Mixup in batch mode): Beta(alpha, alpha)
  # for each (0 = that method off); mix a batch with probability mix_prob; with both alphas > 0,
  # cutmix with probability mix_switch_prob. The train error then compares with the target's argmax.
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0
  c.mix_prob = 1.0
  c.mix_switch_prob = 0.5
  # > 0: keep an exponential moving average of the parameters and BN statistics, updated each step
  # (ema = decay * ema + (1 - decay) * new), evaluated beside the raw model (eval_ema_*), saved in
  # the checkpoint; predict and export serve it when the run has it. 0.9998 and so on.
  c.ema_decay = 0.0


PRECISIONS = ("fp32", "bf16", "fp16", "auto")
NORMALIZATIONS = ("channel", "pixel_mean")  # data.pipeline.input_mean


def precision_for_platform(precision: str, platform: str) -> str:
  """``precision`` with 'auto' made concrete: bf16 on accelerators (their matrix units' type, half
  the memory traffic), fp32 on CPU (where XLA's bf16 convolutions are slower than fp32)."""
  if precision != "auto":
    return precision
  return "fp32" if platform == "cpu" else "bf16"


def for_platform(config, platform: str):
  """``config`` as it runs on ``platform`` (``jax.default_backend()``): 'auto' made concrete."""
  resolved = precision_for_platform(config.precision, platform)
  if resolved == config.precision:
    return config
  config = config.copy_and_resolve_references()
  config.precision = resolved
  return config


def _data_keys(c: ml_collections.ConfigDict) -> None:
  """The input keys (resnet_jax.data registry and pipeline), in base_config's order."""
  c.dataset = "digits"
  c.data_dir = ""  # tfds data_dir ('' = tfds default, ~/tensorflow_datasets).
  c.train_split = ""  # '' = the dataset's default train split.
  c.eval_split = ""  # '' = the dataset's default eval split.
  c.train_augment = ""  # '' = the dataset's default ('paper', 'inception', 'cifar', 'digits').
  c.eval_method = "center"  # 'center' | 'ten_crop' | 'full_conv' (paper §3.4).
  # How inputs are centred (data.pipeline.input_mean), both then divided by the dataset's
  # per-channel std: 'channel' = the dataset's per-channel mean (registry constants; eval does
  # not depend on the train split); 'pixel_mean' = the per-pixel mean image of train_split, the
  # paper's "per-pixel mean subtracted" (§3.4, §4.2), for datasets held in memory (digits, mnist,
  # cifar10/100). docs/recipes.md says which each config uses.
  c.normalization = "channel"
  # Shorter sides for 'full_conv'; () = chosen from the eval image size (train.loop.full_conv_scales:
  # the paper's 224, 256, 384, 480, 640 at a 224 crop; 28, 32, 40 on 28 px digits).
  c.eval_scales = ()
  c.image_size = 0  # 0 = the dataset's native training crop.
  # Testing at another resolution than training (ResNet strikes back A3 trains at 160, tests at
  # 224): eval_image_size 0 = image_size. eval_crop_ratio (timm's crop_pct) > 0: the shorter side
  # is resized to floor(eval size / ratio) before the centre crop; 0 = the dataset's rule (256/224
  # of the crop for ImageNet-sized images, no resize for the 28/32 px datasets).
  c.eval_image_size = 0
  c.eval_crop_ratio = 0.0
  # timm's RandAugment string, e.g. 'rand-m7-mstd0.5-inc1' (resnet_jax.data.randaugment documents
  # it), applied per training example before normalisation; '' = off.
  c.randaugment = ""
  # Probability of random erasing per training example (timm's per-pixel mode, after
  # normalisation); 0 = off.
  c.random_erasing = 0.0


def validate(config, *, known_models, known_datasets) -> None:
  """Raises ``ValueError`` with one line naming the bad key and how to fix it.

  ``known_datasets=None`` leaves the dataset unchecked (the front door's check before TensorFlow,
  which the dataset registry imports, has loaded).
  """
  # The owners of the choices (JAX, not TensorFlow: the front door validates before TF loads).
  from resnet_jax.models import conv_impl as conv_impl_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import optim  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import steps  # pylint: disable=g-import-not-at-top

  def bad(key, why):
    raise ValueError(f"config.{key}={config[key]!r}: {why}")

  if config.model not in known_models:
    import difflib  # pylint: disable=g-import-not-at-top

    close = difflib.get_close_matches(config.model, known_models, n=4)
    bad(
      "model",
      f"unknown model; close matches: {', '.join(close) or 'none'} (`resnet-jax models` lists all)",
    )
  _validate_drop_path_rate(config.model_overrides.get("drop_path_rate", 0.0))
  _validate_net_shape(config.model_overrides)
  if known_datasets is not None and config.dataset not in known_datasets:
    bad("dataset", f"unknown dataset; known: {', '.join(sorted(known_datasets))}")
  if config.precision not in PRECISIONS:
    bad("precision", f"must be one of {', '.join(PRECISIONS)}")
  profile = tuple(config.get("profile_steps", ()))
  if profile and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
    bad("profile_steps", "give () for off or (start, stop) with 1 <= start <= stop")
  if config.optimizer not in optim.OPTIMIZERS:
    bad("optimizer", f"unknown optimizer; choose one of {', '.join(optim.OPTIMIZERS)}")
  if config.loss not in steps.LOSSES:
    bad("loss", f"unknown loss; choose one of {', '.join(steps.LOSSES)}")
  for key in ("ema_decay", "bce_target_threshold", "b1", "b2"):
    if not 0 <= config[key] < 1:
      bad(key, "must be in [0, 1)")
  for key in ("mix_prob", "mix_switch_prob"):
    if not 0 <= config[key] <= 1:
      bad(key, "must be in [0, 1]")
  if config.schedule not in optim.SCHEDULES:
    bad("schedule", f"unknown schedule; choose one of {', '.join(optim.SCHEDULES)}")
  if config.parallelism not in parallel.PARALLELISMS:
    bad("parallelism", f"must be {_either(parallel.PARALLELISMS)}")
  if config.parallelism == "jit" and not config.cross_replica_bn:
    bad(
      "parallelism",
      "per-replica BatchNorm statistics differ between devices, so they are not one replicated "
      "array; use cross_replica_bn=True or parallelism='pmap'",
    )
  if config.normalization not in NORMALIZATIONS:
    bad("normalization", f"must be {_either(NORMALIZATIONS)}")
  if config.eval_method not in ("center", "ten_crop", "full_conv"):
    bad("eval_method", "must be one of center, ten_crop, full_conv")
  _validate_data_augments(config, bad)
  _validate_ranges(config, bad)
  if not 0 < config.lr_decay_factor <= 1:
    bad("lr_decay_factor", "must be in (0, 1]")
  if list(config.lr_boundaries) != sorted(config.lr_boundaries):
    bad("lr_boundaries", "must be increasing steps")
  conv_impl = config.model_overrides.get("conv_impl", "")
  if conv_impl not in ("", *conv_impl_lib.CONV_IMPLS):
    raise ValueError(
      f"config.model_overrides.conv_impl={conv_impl!r}: must be {_either(conv_impl_lib.CONV_IMPLS)} "
      "(oneDNN needs pip install 'resnet-jax[cpu]')"
    )


def _either(choices) -> str:
  """``'a', 'b' or 'c'``: an owner's tuple of choices in an error line."""
  quoted = [repr(c) for c in choices]
  return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def _validate_ranges(config, bad) -> None:
  """The numeric keys that must be positive, or at least not negative."""
  for key in (
    "learning_rate",
    "global_batch_size",
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
  ):
    if not config[key] > 0:
      bad(key, "must be positive")
  for key in (
    "eval_batch_size",
    "weight_decay",
    "momentum",
    "label_smoothing",
    "warmup_steps",
    "warmup_lr_scale",
    "warmup_max_steps",
    "mixup_alpha",
    "cutmix_alpha",
    "eps",
    "trust_coefficient",
  ):
    if config[key] < 0:
      bad(key, "must not be negative")


def _validate_net_shape(overrides) -> None:
  """Widths, block counts and block kinds no net can have (a negative width trains a net of a few
  hundred parameters), refused with the key's full name before anything is built."""
  from resnet_jax.models import blocks  # pylint: disable=g-import-not-at-top

  for key, allowed in (("shortcut", blocks.SHORTCUTS), ("stride_on", blocks.STRIDE_ON)):
    value = overrides.get(key, "")
    if value not in ("", *allowed):
      raise ValueError(
        f"config.model_overrides.{key}={value!r}: must be {_either(allowed)} (or '' for the "
        "model's own)"
      )
  width = overrides.get("width_multiplier", 1.0)
  if not (isinstance(width, (int, float)) and width > 0):
    raise ValueError(
      f"config.model_overrides.width_multiplier={width!r}: must be positive (1.0 = the model's "
      "widths, 0.25 = a quarter of every layer's channels)"
    )
  for key in ("stage_sizes", "stage_widths"):
    values = overrides.get(key, ())
    if values and not all(isinstance(v, int) and v > 0 for v in values):
      raise ValueError(
        f"config.model_overrides.{key}={tuple(values)!r}: must be positive whole numbers, one "
        "per stage (or () for the model's own)"
      )
  stem = overrides.get("stem_width", "")
  if stem not in ("", None) and not (isinstance(stem, int) and stem > 0):
    raise ValueError(f"config.model_overrides.stem_width={stem!r}: must be a positive whole number")


def _validate_drop_path_rate(rate) -> None:
  """Stochastic depth's rate, refused with the key's full name before any model is built."""
  from resnet_jax.models import architecture  # pylint: disable=g-import-not-at-top

  try:
    architecture.check_drop_path_rate(rate)
  except (TypeError, ValueError):
    raise ValueError(
      f"config.model_overrides.drop_path_rate={rate!r}: must be in [0, 1) (the last block's "
      "probability of dropping its residual branch; 0 = off)"
    ) from None


def _validate_data_augments(config, bad) -> None:
  """The input keys' checks: RandAugment strings parse here, not in a tf.data thread mid-run."""
  if config.randaugment:
    from resnet_jax.data import randaugment  # pylint: disable=g-import-not-at-top

    try:
      randaugment.parse(config.randaugment)
    except ValueError as e:
      bad("randaugment", str(e))
  if not 0 <= config.random_erasing <= 1:
    bad("random_erasing", "must be a probability in [0, 1]")
  if config.eval_image_size < 0:
    bad("eval_image_size", "must be 0 (= image_size) or a side in pixels")
  if not 0 <= config.eval_crop_ratio <= 1:
    bad("eval_crop_ratio", "must be 0 (the dataset's rule) or a crop fraction in (0, 1]")


# The keys that decide the learning rate of every step: a run resumes only with the values it
# started with, or the steps after the resume would follow another schedule than those before.
SCHEDULE_KEYS = (
  "schedule",
  "learning_rate",
  "lr_reference_batch",
  "global_batch_size",
  "lr_boundaries",
  "lr_decay_factor",
  "warmup_steps",
  "warmup_lr_scale",
  "warmup_max_steps",
  "warmup_until_train_error",
  "plateau_patience",
  "plateau_min_delta",
)


def check_resume(config, trained: Mapping[str, Any], workdir: str) -> None:
  """Refuses to resume run ``workdir``, trained with config ``trained`` (its config.json), with
  other schedule keys (:data:`SCHEDULE_KEYS`); ``num_train_steps`` counts where the schedule reads
  it (``warmup_cosine``). A schedule that does not read it (constant, piecewise, plateau) may train
  the run on to another length: config.json then records the new one."""
  keys = list(SCHEDULE_KEYS)
  if not (config.warmup_lr_scale > 0 or trained.get("warmup_lr_scale", 0) > 0):
    # Without the ResNet-110 warm-up its cap and threshold decide nothing (the cap's default
    # changed from 400 to 0 when the warm-up moved onto the device).
    keys = [k for k in keys if k not in ("warmup_max_steps", "warmup_until_train_error")]
  if "warmup_cosine" in (config.schedule, trained.get("schedule")):
    keys.append("num_train_steps")
  as_stored = lambda value: json.loads(json.dumps(value, default=str))  # tuples as lists
  differ = [
    f"{k} {as_stored(trained[k])} -> {as_stored(config[k])}"
    for k in keys
    if k in trained and k in config and as_stored(trained[k]) != as_stored(config[k])
  ]
  if differ:
    raise ValueError(
      f"--workdir={workdir} was trained with another schedule ({'; '.join(differ)}): resuming "
      "would change the learning rate of the steps to come. Train these settings in a new "
      "--workdir, or resume with the run's own (its config.json)"
    )


def eval_batch_size(config) -> int:
  """Examples per evaluation batch over all devices (``config.eval_batch_size``, 0 = training's)."""
  return config.eval_batch_size or config.global_batch_size


def config_file(name_or_path: str) -> str:
  """The file ``--config`` names: a path as given, else a shipped experiment's name
  (``cifar10_resnet110`` or ``cifar10_resnet110.py``), found in an installed wheel too.

  ml_collections' ``:argument`` suffix is kept. A name nothing matches comes back unchanged, so the
  loader's "not found" names what the user typed.
  """
  path, colon, argument = name_or_path.partition(":")
  if path and not os.path.exists(path) and os.path.basename(path) == path:
    stem = path.removesuffix(".py")
    for folder in _CONFIG_DIRS:
      shipped = os.path.join(folder, stem + ".py")
      if os.path.isfile(shipped):
        return shipped + colon + argument
  return name_or_path


def with_config_files(argv: Sequence[str]) -> list[str]:
  """``argv`` with the value of ``--config`` (``--config=NAME`` or ``--config NAME``) made a file
  by :func:`config_file`: the flag's loader only opens paths."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg == "--":  # the rest are positional arguments
      break
    flag, equals, value = arg.partition("=")
    if flag in ("--config", "-config"):
      if equals:
        argv[i] = flag + equals + config_file(value)
      elif i + 1 < len(argv):
        argv[i + 1] = config_file(argv[i + 1])
  return argv


def default_config_file() -> str:
  """The default experiment's file (:data:`DEFAULT_EXPERIMENT`), checkout or installed wheel."""
  return config_file(DEFAULT_EXPERIMENT)


def load(name_or_path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file (:func:`config_file` resolves a shipped name), unlocked;
  ``FILE:ARG`` calls ``get_config("ARG")``, as ``--config=FILE:ARG`` does (e.g. a CIFAR-10
  config's ``:holdout``)."""
  path, _, argument = config_file(name_or_path).partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file {name_or_path!r} (a path, or a name in configs/)")
  spec = importlib.util.spec_from_file_location(os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()
