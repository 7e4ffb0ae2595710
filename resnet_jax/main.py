"""The ``resnet-jax`` command: one front door, absl flags in, one function call per subcommand out.

  resnet-jax                      lists the subcommands (as does --help)
  resnet-jax COMMAND --help       that command's flags and their defaults
  python -m resnet_jax.main ...   the same without the console script; flags with no COMMAND train

Every subcommand is one entry of ``COMMANDS``: its purpose, an example, the function that defines
its absl flags and the handler that runs it. Only the chosen command's flags are defined, so
``--help`` lists exactly those, and nothing heavy (JAX, TensorFlow) is imported before a handler
needs it. Bad input ends with one line on stderr naming the problem and the fix, and exit status 2.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import sys
import textwrap
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from resnet_jax import host
from resnet_jax import runtime
from resnet_jax.train import config as config_lib

PROG = "resnet-jax"
HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


class UsageError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Command:
  """One subcommand. ``define_flags(flag_values, args)`` defines its flags (``args``: its raw
  arguments, for a command whose flags depend on a positional, like ``analyze NAME``);
  ``handler(flag_values, positionals)`` runs it once they are parsed."""

  purpose: str
  example: str
  define_flags: Callable[[flags.FlagValues, Sequence[str]], None]
  handler: Callable[[flags.FlagValues, list[str]], None]
  usage: str = "[--flag=value ...]"
  details: str = ""


def _require(flag_values: flags.FlagValues, name: str):
  value = flag_values[name].value
  if value is None:
    raise UsageError(f"--{name} is required")
  return value


def _no_positionals(positionals: list[str]) -> None:
  if positionals:
    raise UsageError(f"unexpected arguments {positionals}")


# --- train / eval -------------------------------------------------------------------------------


# train/config.py is itself a config file: its get_config() is the default experiment (digits), which
# an installed wheel has too, so `train` and a sweep without a config file need no configs/ folder.
DEFAULT_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train", "config.py")


def _define_run_flags(fv: flags.FlagValues, with_mode: bool, args: Sequence[str]) -> None:
  config_flags.DEFINE_config_file(
    "config",
    DEFAULT_CONFIG_FILE if with_mode else None,
    "Experiment config file (configs/NAME.py); override keys with --config.key=value."
    + (" Default: the built-in digits experiment." if with_mode else ""),
    lock_config=True,
    flag_values=fv,
    sys_argv=["", *args],  # which --config.key overrides to define, also on the default
  )
  flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and plots.", flag_values=fv
  )
  if with_mode:
    flags.DEFINE_enum(
      "mode",
      "train",
      ["train", "eval"],
      "Train (resuming if possible) or evaluate a checkpoint (the same as `resnet-jax eval`).",
      flag_values=fv,
    )
  flags.DEFINE_integer(
    "eval_step", None, "Checkpoint step to evaluate (default: latest).", flag_values=fv
  )
  flags.DEFINE_enum(
    "eval_method",
    None,
    ["center", "ten_crop", "full_conv"],
    "Test-time method of an evaluation (default: config.eval_method).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax", "xla"),
    "Persistent XLA compilation cache: a restarted or resumed run skips recompiling ('' = off; "
    "JAX_COMPILATION_CACHE_DIR takes precedence).",
    flag_values=fv,
  )
  _define_cpu_devices(fv)


def _define_cpu_devices(fv: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "cpu_devices",
    "auto",
    "On a CPU-only machine: split the host into this many single-threaded XLA devices and run data "
    "parallel over them ('auto' = one per core, lowered until it divides the batch, or one device "
    "with conv_impl=onednn; 1 = one device using every core). Ignored on GPU/TPU, in multi-process "
    "runs and when XLA_FLAGS sets it.",
    flag_values=fv,
  )


def _cpu_devices(requested: str, conv_impl: str) -> str:
  """--cpu_devices, with 'auto' meaning one device when oneDNN runs the convolutions
  (``conv_impl`` 'onednn', or 'auto' with oneDNN installed: host.onednn_convolutions).

  The split exists because XLA's convolutions use two cores badly; oneDNN spreads each convolution
  over every core itself, and one device spares the cross-device BatchNorm sync at every layer, so
  one device is the faster there (docs/benchmarks.md).
  """
  return "1" if requested == "auto" and host.onednn_convolutions(conv_impl) else requested


def _train_or_eval(fv: flags.FlagValues, mode: str) -> None:
  if mode == "eval" and not fv["config"].present:  # the default experiment is for training
    raise UsageError("--config is required (the config the run was trained with)")
  config = fv.config
  workdir = _require(fv, "workdir")
  _check_before_start(config, workdir)
  split = runtime.start(
    cpu_devices=_cpu_devices(fv.cpu_devices, config.model_overrides.get("conv_impl", "")),
    batch_sizes=[config.global_batch_size, config_lib.eval_batch_size(config)],
    compilation_cache=fv.compilation_cache,
    distributed=True,
  )
  if split > 1:
    logging.info("CPU split into %d single-threaded devices (--cpu_devices)", split)
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  if mode == "eval":
    result = loop.evaluate(config, workdir, step=fv.eval_step, method=fv.eval_method)
  else:
    result = loop.train_and_evaluate(config, workdir)
  shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}
  print(f"{mode} finished: {shown}")
  if mode == "eval":
    print(f"result in {workdir}: {loop.eval_result_file(result['method'], result['step'])}")
  else:
    curves = ", curves.png" if "curves" in result else ""
    print(f"results in {workdir}: metrics.jsonl, tensorboard/, checkpoints/{curves}")


def _check_before_start(config, workdir: str) -> None:
  """Refuses a bad config key, model name or bucket before `runtime.start` spends seconds loading
  TensorFlow and starting the devices. The loop checks again with what needs those (the dataset
  registry, the device count): it also runs inside other commands (sweeps, analyses)."""
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  config_lib.validate(config, known_models=models.list_models(), known_datasets=None)
  storage.check_access(workdir, "--workdir", write=True)  # eval writes its eval_*.json there too
  if config.init_from:
    storage.check_access(config.init_from, "config.init_from")


def _train(fv, positionals):
  _no_positionals(positionals)
  _train_or_eval(fv, fv.mode)


def _eval(fv, positionals):
  _no_positionals(positionals)
  _train_or_eval(fv, "eval")


# --- models -------------------------------------------------------------------------------------


def _models(fv, positionals):
  del fv
  _no_positionals(positionals)
  from resnet_jax.models import flops  # pylint: disable=g-import-not-at-top

  print(flops.format_model_table())


# --- bench --------------------------------------------------------------------------------------


def _define_bench_flags(fv: flags.FlagValues) -> None:
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
  _define_cpu_devices(fv)


def _override_value(text: str):
  """``--override`` values as Python literals (0.25, (1, 1, 1), true/false); anything else a string."""
  lowered = {"true": "True", "false": "False"}.get(text.lower(), text)
  try:
    return ast.literal_eval(lowered)
  except (ValueError, SyntaxError):
    return text


def _bench(fv, positionals):
  _no_positionals(positionals)
  runtime.start()
  from resnet_jax import bench  # pylint: disable=g-import-not-at-top

  model = _require(fv, "model")
  overrides = {}
  for field_value in fv.override:
    if "=" not in field_value:
      raise UsageError(f"--override={field_value}: give FIELD=VALUE, e.g. scan_blocks=true")
    key, value = field_value.split("=", 1)
    overrides[key] = _override_value(value)
  if fv.inference:  # one device using every core: batch 1 cannot be split
    report = bench.inference_benchmark(
      model, tuple(sorted({1, fv.batch_size})), fv.image_size, fv.steps, fv.loop_rounds, fv.jsonl
    )
    print(bench.format_inference_report(report))
    return
  runtime.split_cpu_into_devices(
    _cpu_devices(fv.cpu_devices, overrides.get("conv_impl", "")), [fv.batch_size]
  )
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


# --- convert ------------------------------------------------------------------------------------


def _define_convert_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum(
    "from",
    "torchvision",
    ["torchvision", "timm"],
    "Whose state dict --src is, in that library's own key layout (timm: also its resnet*d, "
    "seresnet*, seresnext* names).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "model", None, "Model name, as the source names it (`resnet-jax models`).", flag_values=fv
  )
  flags.DEFINE_string("src", None, "The .pth state dict to import (torch.save).", flag_values=fv)
  flags.DEFINE_string(
    "workdir", None, "Where the step-0 checkpoint goes (a training workdir).", flag_values=fv
  )


def _convert(fv, positionals):
  _no_positionals(positionals)
  runtime.import_tensorflow()  # quietly, before the checkpoint code loads it
  from resnet_jax import weights  # pylint: disable=g-import-not-at-top

  print(
    weights.convert_command(
      fv["from"].value, _require(fv, "model"), _require(fv, "src"), _require(fv, "workdir")
    )
  )


# --- predict and export -------------------------------------------------------------------------


def _define_serving_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "workdir",
    None,
    "A training run's workdir (its config.json and latest checkpoint) or `convert`'s.",
    flag_values=fv,
  )
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Only if the workdir's own config.json should not be used: the run's config file.",
    lock_config=True,
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "eval_method",
    "center",
    ["center", "ten_crop"],
    "Test-time views: the centre crop, or 10 crops with their softmax averaged (paper §3.4).",
    flag_values=fv,
  )


def _define_predict_flags(fv: flags.FlagValues) -> None:
  _define_serving_flags(fv)
  flags.DEFINE_integer("top_k", 5, "Classes listed per image.", flag_values=fv)
  flags.DEFINE_string(
    "output", None, "JSON lines file, one line per image (default: stdout).", flag_values=fv
  )


def _predict(fv, positionals):
  workdir = _require(fv, "workdir")
  runtime.start()
  from resnet_jax import serving  # pylint: disable=g-import-not-at-top

  serving.predict_command(
    lambda: serving.load(workdir, config=fv.config),
    positionals,
    top_k=fv.top_k,
    method=fv.eval_method,
    output=fv.output,
  )


def _define_export_flags(fv: flags.FlagValues) -> None:
  _define_serving_flags(fv)
  flags.DEFINE_enum(
    "format",
    None,
    ["stablehlo", "savedmodel"],
    "stablehlo: jax.export artifact + JSON sidecar; savedmodel: TensorFlow (jax2tf), TF Serving "
    "layout OUT/<version>/.",
    flag_values=fv,
  )
  flags.DEFINE_string("out", None, "Where the exported model goes.", flag_values=fv)
  flags.DEFINE_list(
    "input_size",
    None,
    "H,W of the uint8 images the function takes (default: the run's resize side squared, e.g. "
    "256,256 for ImageNet; the crop side for 28/32 px datasets).",
    flag_values=fv,
  )


def _export(fv, positionals):
  _no_positionals(positionals)
  workdir, fmt, out = _require(fv, "workdir"), _require(fv, "format"), _require(fv, "out")
  input_size = None
  if fv.input_size:
    if len(fv.input_size) != 2 or not all(v.strip().isdigit() for v in fv.input_size):
      raise UsageError(f"--input_size={','.join(fv.input_size)}: give H,W, e.g. 256,256")
    input_size = tuple(int(v) for v in fv.input_size)
  runtime.import_tensorflow()  # quietly, before serving loads it
  from resnet_jax import serving  # pylint: disable=g-import-not-at-top

  print(
    serving.export_command(
      workdir, fmt, out, method=fv.eval_method, config=fv.config, input_size=input_size
    )
  )


# --- sweep and analyze: their flags live with their code, which tests also call -----------------


def _define_sweep_flags(fv, args):
  del args
  from resnet_jax import sweep  # pylint: disable=g-import-not-at-top  (standard library only)

  sweep.define_flags(fv)


def _sweep(fv, positionals):
  from resnet_jax import sweep  # pylint: disable=g-import-not-at-top

  status = sweep.command(fv, positionals)
  if status:
    sys.exit(status)


_NAME_AN_ANALYSIS = "name an analysis first: " + PROG + " analyze {names} --out=DIR ..."


def _define_analyze_flags(fv, args):
  """The flags of the analysis named first; a wrong name is named as such, before any flag."""
  from resnet_jax.analysis import cli  # pylint: disable=g-import-not-at-top  (no JAX at import)

  if args and not args[0].startswith("-"):
    cli.define_flags(cli.check_name(args[0]), fv)
    if cli.check_name(args[0]) in cli.TRAINING:
      _define_cpu_devices(fv)
  elif args:  # flags but no name: say so, rather than that the flags are unknown
    raise UsageError(_NAME_AN_ANALYSIS.format(names="|".join(cli.NAMES)))


def _analyze(fv, positionals):
  from resnet_jax.analysis import cli  # pylint: disable=g-import-not-at-top

  if not positionals:
    raise UsageError(_NAME_AN_ANALYSIS.format(names="|".join(cli.NAMES)))
  _no_positionals(positionals[1:])
  if "cpu_devices" in fv:  # an analysis that trains: the same CPU split as `resnet-jax train`
    conv_impl = fv["conv_impl"].value if "conv_impl" in fv else ""
    batch = fv["batch_size"].value if "batch_size" in fv else None
    runtime.start(cpu_devices=_cpu_devices(fv.cpu_devices, conv_impl), batch_sizes=[batch or 128])
  runtime.import_tensorflow()  # quietly, before the analyses' input pipeline loads it
  cli.run_analysis(cli.check_name(positionals[0]), fv)


def _analyze_details(args: Sequence[str]) -> str:
  from resnet_jax.analysis import cli  # pylint: disable=g-import-not-at-top

  return cli.USAGE


# --- the registry -------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
  "train": Command(
    "train a model from a config file, resuming from the latest checkpoint in its workdir",
    "resnet-jax train --config=configs/digits.py --workdir=runs/digits --config.seed=1",
    lambda fv, args: _define_run_flags(fv, with_mode=True, args=args),
    _train,
  ),
  "eval": Command(
    "evaluate a checkpoint of a workdir (center, ten-crop or fully-convolutional test)",
    "resnet-jax eval --config=configs/digits.py --workdir=runs/digits --eval_method=ten_crop",
    lambda fv, args: _define_run_flags(fv, with_mode=False, args=args),
    _eval,
  ),
  "models": Command(
    "list every model with its parameters and multiply-adds (no JAX, instant)",
    "resnet-jax models",
    lambda fv, args: None,
    _models,
    usage="",
  ),
  "bench": Command(
    "time compile, train step and full loop; FLOP/s, memory, ratio to PyTorch",
    "resnet-jax bench --model=resnet50 --batch_size=16 --image_size=224 --compare=torch",
    lambda fv, args: _define_bench_flags(fv),
    _bench,
  ),
  "convert": Command(
    "import torchvision or timm weights (.pth) as a step-0 checkpoint to evaluate or fine-tune",
    "resnet-jax convert --from=timm --model=resnet50d --src=resnet50d.pth --workdir=runs/r50d",
    lambda fv, args: _define_convert_flags(fv),
    _convert,
  ),
  "predict": Command(
    "classify image files or folders with a trained run or converted weights",
    "resnet-jax predict --workdir=runs/digits digit.png photos/ --top_k=3 --output=preds.jsonl",
    lambda fv, args: _define_predict_flags(fv),
    _predict,
    usage="--workdir=DIR PATH... [--flag=value ...]",
  ),
  "export": Command(
    "export uint8 images -> probabilities as StableHLO (jax.export) or a TF SavedModel",
    "resnet-jax export --workdir=runs/digits --format=savedmodel --out=runs/digits_serving",
    lambda fv, args: _define_export_flags(fv),
    _export,
  ),
  "sweep": Command(
    "run a grid of config overrides locally, or print one launch command per member",
    "resnet-jax sweep launch/sweeps/degradation.py --workdir=runs/sweep --parallel=2",
    _define_sweep_flags,
    _sweep,
    usage="SWEEP.py --workdir=ROOT [--flag=value ...] [-- --config.key=value ...]",
    details="Everything after `--` goes to every member's training command (after its overrides).",
  ),
  "analyze": Command(
    "the paper's analyses: degradation, layer responses, gradient flow, shortcuts, test time",
    "resnet-jax analyze degradation --out=runs/degradation --depths=20,32 --steps=200",
    _define_analyze_flags,
    _analyze,
    usage="NAME --out=DIR [--flag=value ...]",
    details="@analyze",  # filled from resnet_jax.analysis.cli when shown
  ),
}
DEFAULT_COMMAND = "train"  # `python -m resnet_jax.main --config=... --workdir=...`


# --- help and errors ----------------------------------------------------------------------------

_COMMON_FLAGS = textwrap.fill(
  "Every command also takes --verbosity=N (0: our INFO lines, the default; 1: third-party INFO "
  "logs and TensorFlow's C++ notices too; -1: warnings and errors only) and --flagfile=FILE.",
  width=100,
)


def overview() -> str:
  """``resnet-jax --help``: every subcommand with its purpose and an example."""
  width = max(len(n) for n in COMMANDS)
  lines = [
    "resnet-jax: deep residual networks (He et al. 2015) in JAX/Flax.",
    "",
    f"usage: {PROG} COMMAND [--flag=value ...]",
    "       python -m resnet_jax.main [COMMAND] ...   (flags with no COMMAND: train)",
    "",
    "commands:",
  ]
  for name, command in COMMANDS.items():
    lines.append(f"  {name:<{width}}  {command.purpose}")
    lines.append(f"  {'':<{width}}    e.g. {command.example}")
  lines += ["", f"`{PROG} COMMAND --help` lists that command's flags and their defaults.", ""]
  lines.append(_COMMON_FLAGS)
  return "\n".join(lines)


def command_help(name: str, args: Sequence[str]) -> str:
  """``resnet-jax NAME --help``: usage, purpose, example and only this command's flags."""
  command = COMMANDS[name]
  fv = flags.FlagValues()
  command.define_flags(fv, args)
  lines = [
    f"usage: {PROG} {name} {command.usage}".rstrip(),
    "",
    f"{command.purpose[0].upper()}{command.purpose[1:]}.",
    f"e.g. {command.example}",
  ]
  details = _analyze_details(args) if command.details == "@analyze" else command.details
  if details:
    lines += ["", details.strip("\n")]
  listed = fv.get_help(include_special_flags=False)
  # get_help heads each group with its module's name; one command has one group, so drop it.
  listed = "\n".join(l for l in listed.splitlines() if l.startswith(" ")).rstrip()
  if listed:
    lines += ["", "flags:", listed]
  lines += ["", _COMMON_FLAGS]
  return "\n".join(lines)


def unknown_command(name: str) -> str:
  close = difflib.get_close_matches(name, list(COMMANDS), n=3, cutoff=0.5)
  hint = f"did you mean {' or '.join(close)}? " if close else ""
  return f"unknown command {name!r}; {hint}({PROG} --help lists the commands)"


# The errors a user can act on besides ValueError, KeyError and FileNotFoundError, by the module
# that raises them. One whose module was never imported cannot have been raised: importing it only
# to name it would load Orbax, JAX or TensorFlow after a refusal made before they load.
_RUN_ERRORS = (
  ("resnet_jax.checkpoint", "CheckpointError"),
  ("resnet_jax.distributed", "DistributedInitError"),
  ("resnet_jax.distributed", "PeerLostError"),
  ("resnet_jax.train.loop", "NonFiniteLossError"),
)


def _known_errors() -> tuple[type[Exception], ...]:
  loaded = [getattr(sys.modules[m], name) for m, name in _RUN_ERRORS if m in sys.modules]
  return (ValueError, KeyError, FileNotFoundError, *loaded)


def main(command: Command, argv: list[str]) -> None:
  """Runs ``command`` on the parsed flags; ``argv`` is absl's rest (program name, positionals)."""
  # Before anything heavy loads; --verbosity=1 lets every library's INFO lines through.
  runtime.setup(verbose=logging.get_verbosity() > logging.INFO)
  try:
    command.handler(flags.FLAGS, argv[1:])
  except _known_errors() as e:  # one line, no traceback: the user can act on it
    logging.flush()
    runtime.exit_with_error(e.args[0] if isinstance(e, KeyError) and e.args else e)
  runtime.spare_the_final_collection()


def run(argv: Sequence[str] | None = None) -> None:
  """Console script: ``resnet-jax [COMMAND] --flags``."""
  argv = list(sys.argv if argv is None else argv)
  args = argv[1:]
  if not args or args[0] in HELP_ARGS or args[0] == "help":
    topic = args[1] if len(args) > 1 and args[0] == "help" else None
    _show_help(topic if topic in COMMANDS else None, args[2:])
  name = DEFAULT_COMMAND if args[0].startswith("-") else args.pop(0)
  if name not in COMMANDS:
    runtime.exit_with_error(unknown_command(name))
  command = COMMANDS[name]
  own = args[: args.index("--")] if "--" in args else args
  if any(a in HELP_ARGS for a in own):
    _show_help(name, [a for a in own if a not in HELP_ARGS])
  try:
    command.define_flags(flags.FLAGS, args)
  except ValueError as e:  # e.g. an analysis name that is not one
    runtime.exit_with_error(e)
  app.run(
    lambda rest: main(command, rest),
    argv=[f"{PROG} {name}", *args],
    flags_parser=lambda a: _parse_flags(name, a),
  )


def _show_help(name: str | None, args: Sequence[str]) -> NoReturn:
  """Prints the overview (no ``name``) or command ``name``'s help, and exits."""
  try:
    print(command_help(name, args) if name else overview())
  except ValueError as e:  # `analyze NOSUCH --help`
    runtime.exit_with_error(e)
  sys.exit(0)


def _parse_flags(name: str, argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or --config.key (unknown, or a wrong type) is one line, not a
  traceback or a page of usage."""
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      flags.FLAGS.config.get("model")  # a config file that failed to load raises here, not mid-run
    return remaining
  except flags.Error as e:
    message = f"{e} ({PROG} {name} --help lists its flags)"
  except OSError as e:
    message = (
      f"--config: {str(e).splitlines()[-1].strip()} (give the path of a configs/NAME.py file)"
    )
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    text = str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\", "")
    message = "bad --config override: " + text.strip("'\"").replace("''", "'")
  runtime.exit_with_error(" ".join(message.split()))


if __name__ == "__main__":
  run()
