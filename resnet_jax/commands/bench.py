"""``resnet-jax bench --model=NAME``: times compile, the train step and the full loop (FLOP/s, memory,
ratio to PyTorch); ``--inference`` times CPU inference instead."""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Sequence

from absl import flags

from resnet_jax import runtime
from resnet_jax.commands import startup
from resnet_jax.commands.usage import UsageError, no_positionals, require

PURPOSE = "time compile, train step and full loop; FLOP/s, memory, ratio to PyTorch"
EXAMPLE = "resnet-jax bench --model=resnet50 --batch_size=16 --image_size=224 --compare=torch"
USAGE = "[--flag=value ...]"
DETAILS = ""


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  del args
  fv = flag_values
  flags.DEFINE_string("model", None, "Model name (`resnet-jax models`).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 16, "Global batch size.", flag_values=fv)
  flags.DEFINE_integer("image_size", 224, "Image side in pixels.", flag_values=fv)
  flags.DEFINE_enum(
    "precision",
    "auto",
    ["auto", "fp32", "bf16"],
    "Compute precision; auto: bf16 on GPU/TPU, fp32 on CPU.",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "compare", None, ["torch"], "Also time the same net in PyTorch eager.", flag_values=fv
  )
  flags.DEFINE_float("peak_tflops", None, "Device peak TFLOP/s, for MFU.", flag_values=fv)
  flags.DEFINE_integer("steps", 5, "Timed steps of the bare train step.", flag_values=fv)
  _define_loop_flags(fv)
  flags.DEFINE_multi_string(
    "override",
    [],
    "ResNet field=value, repeatable (e.g. scan_blocks=true, remat=true, matmul_1x1=false).",
    flag_values=fv,
  )
  flags.DEFINE_string("jsonl", "runs/bench.jsonl", "Results file (appended).", flag_values=fv)
  flags.DEFINE_multi_enum(
    "parallelism",
    ["pmap", "jit"],
    ["pmap", "jit"],
    "Data-parallel paths to time side by side, interleaved (train.parallel); repeatable.",
    flag_values=fv,
  )
  flags.DEFINE_boolean(
    "inference",
    False,
    "CPU inference instead of training, at batch 1 and --batch_size, fp32: our jit eval step vs "
    "the exported SavedModel run by TensorFlow vs PyTorch eager eval() (interleaved --loop_rounds "
    "times, best of --steps calls each).",
    flag_values=fv,
  )
  startup.define_cpu_devices(fv)


def _define_loop_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_boolean(
    "loop",
    True,
    "Also time the full training loop (real input pipeline, metrics, checkpoints).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "loop_steps",
    None,
    "Steps in each full-loop window (default: --steps); every window holds one asynchronous "
    "checkpoint, so longer windows amortise it as training does.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "loop_rounds", 3, "Bare and full-loop windows alternate this many times.", flag_values=fv
  )


def _override_value(text: str):
  """``--override`` values as Python literals (0.25, (1, 1, 1), true/false); anything else a string."""
  lowered = {"true": "True", "false": "False"}.get(text.lower(), text)
  try:
    return ast.literal_eval(lowered)
  except (ValueError, SyntaxError):
    return text


def _overrides(fields: Sequence[str]) -> dict:
  overrides = {}
  for field_value in fields:
    if "=" not in field_value:
      raise UsageError(f"--override={field_value}: give FIELD=VALUE, e.g. scan_blocks=true")
    key, value = field_value.split("=", 1)
    overrides[key] = _override_value(value)
  return overrides


def _check_counts(fv: flags.FlagValues) -> None:
  """Sizes and counts that must be positive (``--batch_size=0`` once divided by zero 21 s in)."""
  for name in ("batch_size", "image_size", "steps", "loop_rounds", "loop_steps"):
    value = fv[name].value
    if value is not None and value < 1:
      raise UsageError(f"--{name}={value}: must be at least 1")


def _check_overrides(model: str, overrides: dict) -> None:
  """Refuses an unknown model or field, and a value of the wrong kind for its field (a word for a
  number, ``width_multiplier=abc``), before anything starts."""
  from resnet_jax.models import registry  # pylint: disable=g-import-not-at-top
  from resnet_jax.models.resnet import ResNet  # pylint: disable=g-import-not-at-top

  # The field values the overrides replace: the network's own defaults, then the model's.
  defaults = {f.name: f.default for f in dataclasses.fields(ResNet)}
  defaults.update(registry.model_config(model))
  for key, value in overrides.items():
    default = defaults.get(key)
    if isinstance(default, bool):
      wrong = not isinstance(value, bool)
      want = "true or false"
    elif isinstance(default, (int, float)):
      wrong = isinstance(value, bool) or not isinstance(value, (int, float))
      want = "a number"
    elif isinstance(default, (tuple, list)):
      wrong = not isinstance(value, (tuple, list))
      want = "a tuple, e.g. (1, 1, 1, 1)"
    else:
      wrong = False
    if wrong:
      raise UsageError(f"--override={key}={value}: {key} takes {want}")
  registry.model_config(model, **overrides)  # an unknown field, a drop_path_rate out of range


def _check_jsonl(path: str) -> None:
  """``--jsonl`` must be appendable now, not after the benchmark has run (a bucket is checked by
  the benchmark itself, ``storage.check_access``). Creates nothing."""
  if not path or "://" in path:
    return
  if os.path.isdir(path):
    raise UsageError(f"--jsonl={path} is a folder; give a file path, e.g. {path}/bench.jsonl")
  if os.path.exists(path):
    if not os.access(path, os.W_OK):
      raise UsageError(f"--jsonl={path} is not writable; choose a writable path")
    return
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UsageError(f"--jsonl={path}: cannot create it under {parent}; choose a writable path")


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  no_positionals(positionals)
  fv = flag_values
  model, overrides = require(fv, "model"), _overrides(fv.override)
  _check_counts(fv)
  _check_overrides(model, overrides)
  _check_jsonl(fv.jsonl)
  if fv.inference:  # one device using every core: batch 1 cannot be split
    runtime.start()
    from resnet_jax import bench  # pylint: disable=g-import-not-at-top

    report = bench.inference_benchmark(
      model, tuple(sorted({1, fv.batch_size})), fv.image_size, fv.steps, fv.loop_rounds, fv.jsonl
    )
    print(bench.format_inference_report(report))
    return
  startup.start(fv, batch_sizes=[fv.batch_size])
  from resnet_jax import bench  # pylint: disable=g-import-not-at-top

  report = bench.run_benchmark(
    model,
    fv.batch_size,
    fv.image_size,
    fv.precision,
    compare=fv.compare,
    peak_tflops=fv.peak_tflops,
    steps=fv.steps,
    jsonl=fv.jsonl,
    overrides=overrides,
    loop=fv.loop,
    loop_steps=fv.loop_steps,
    loop_rounds=fv.loop_rounds,
    parallelism=tuple(fv.parallelism),
  )
  print(bench.format_report(report))


def errors() -> tuple[type[Exception], ...]:
  return startup.run_errors()
