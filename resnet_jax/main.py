"""The ``resnet-jax`` command: absl flags in, one function call per subcommand out.

  python -m resnet_jax.main --config=configs/digits.py --workdir=runs/digits [--config.key=value]
  resnet-jax train|eval --config=... --workdir=...
  resnet-jax models
  resnet-jax sweep SWEEP.py --workdir=ROOT [--parallel=N] [--emit=tpu|slurm|local]
  resnet-jax bench --model=resnet50 --batch=16 --image_size=224 [--precision=bf16] [--compare=torch]
  resnet-jax convert --from=torchvision --model=resnet50 --src=FILE.pth --workdir=DIR
  resnet-jax analyze degradation|layer_responses|gradient_flow|shortcuts|test_time --out=DIR ...

Bad input ends with one line on stderr naming the problem and the fix, and exit status 2.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

# TensorFlow (tf.data only) prints start-up banners at INFO; keep its warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

SUBCOMMANDS = ("train", "eval", "models", "bench", "convert")
# Subcommands with their own argument parsers: every argument after the name is theirs.
PASSTHROUGH = ("sweep", "analyze")

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config file (configs/NAME.py); override keys with --config.key=value.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_MODE = flags.DEFINE_enum(
  "mode", "train", ["train", "eval"], "Train (resuming if possible) or evaluate a checkpoint."
)
_EVAL_STEP = flags.DEFINE_integer(
  "eval_step", None, "Checkpoint step for --mode=eval (default: latest)."
)
_EVAL_METHOD = flags.DEFINE_enum(
  "eval_method",
  None,
  ["center", "ten_crop", "full_conv"],
  "Test-time method for --mode=eval (default: config.eval_method).",
)


_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax", "xla"),
  "Persistent XLA compilation cache: a restarted or resumed run skips recompiling ('' = off; "
  "JAX_COMPILATION_CACHE_DIR takes precedence).",
)

_CPU_DEVICES = flags.DEFINE_string(
  "cpu_devices",
  "auto",
  "On a CPU-only machine: split the host into this many single-threaded XLA devices and train data "
  "parallel over them ('auto' = one per core, lowered until it divides the batch; 1 = one device "
  "using every core). Ignored on GPU/TPU, in multi-process runs and when XLA_FLAGS sets it.",
)

# bench and convert.
_MODEL = flags.DEFINE_string("model", None, "bench/convert: model name (`resnet-jax models`).")
_BATCH = flags.DEFINE_integer("batch", 16, "bench: batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "bench: image side in pixels.")
_PRECISION = flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "bench: precision.")
_COMPARE = flags.DEFINE_enum("compare", None, ["torch"], "bench: also time PyTorch eager.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "bench: device peak, for MFU.")
_STEPS = flags.DEFINE_integer("steps", 5, "bench: timed steps.")
_JSONL = flags.DEFINE_string("jsonl", "runs/bench.jsonl", "bench: results file (appended).")
_FROM = flags.DEFINE_enum("from", "torchvision", ["torchvision"], "convert: source format.")
_SRC = flags.DEFINE_string("src", None, "convert: the .pth state dict to import.")


class UsageError(ValueError):
  pass


def _require(flag, name):
  if flag.value is None:
    raise UsageError(f"--{name} is required")
  return flag.value


def _train_or_eval(mode: str):
  from resnet_jax import distributed  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  config = _require(_CONFIG, "config")
  workdir = _require(_WORKDIR, "workdir")
  if _COMPILATION_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE.value)
  split = distributed.split_cpu_into_devices(_CPU_DEVICES.value, [config.global_batch_size])
  if split > 1:
    logging.info("CPU split into %d single-threaded devices (--cpu_devices)", split)
  distributed.initialize()
  if mode == "eval":
    result = loop.evaluate(config, workdir, step=_EVAL_STEP.value, method=_EVAL_METHOD.value)
  else:
    result = loop.train_and_evaluate(config, workdir)
  shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}
  print(f"{mode} finished: {shown}")
  print(f"results in {workdir}: metrics.jsonl, tensorboard/, checkpoints/, curves.png")


def _models():
  from resnet_jax.models import flops  # pylint: disable=g-import-not-at-top

  print(flops.format_model_table())


def _dispatch(argv):
  command = argv[0]
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")
  if command in ("train", "eval"):
    mode = "eval" if command == "eval" else _MODE.value
    return _train_or_eval(mode)
  if command == "models":
    return _models()
  if command == "bench":
    from resnet_jax import bench  # pylint: disable=g-import-not-at-top
    from resnet_jax import distributed  # pylint: disable=g-import-not-at-top

    distributed.split_cpu_into_devices(_CPU_DEVICES.value, [_BATCH.value])
    report = bench.run_benchmark(
      _require(_MODEL, "model"),
      _BATCH.value,
      _IMAGE_SIZE.value,
      _PRECISION.value,
      compare=_COMPARE.value,
      peak_tflops=_PEAK_TFLOPS.value,
      steps=_STEPS.value,
      jsonl=_JSONL.value,
    )
    print(bench.format_report(report))
    return None
  if command == "convert":
    from resnet_jax import weights  # pylint: disable=g-import-not-at-top

    print(
      weights.convert_command(
        flags.FLAGS["from"].value,
        _require(_MODEL, "model"),
        _require(_SRC, "src"),
        _require(_WORKDIR, "workdir"),
      )
    )
    return None
  raise UsageError(f"unknown command {command!r}; choose one of {', '.join(SUBCOMMANDS)}")


def _known_errors():
  from resnet_jax.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from resnet_jax.distributed import DistributedInitError  # pylint: disable=g-import-not-at-top
  from resnet_jax.train.loop import NonFiniteLossError  # pylint: disable=g-import-not-at-top

  return (
    ValueError,
    KeyError,
    CheckpointError,
    NonFiniteLossError,
    FileNotFoundError,
    DistributedInitError,
  )


def main(argv):
  command = argv[1:] or ["train"]
  try:
    _dispatch(command)
  except _known_errors() as e:  # one line, no traceback: the user can act on it
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # After a failed read, Orbax/TensorStore background threads can print tracebacks at any moment
    # until the process ends, burying the one line that matters: point the process's stderr at
    # /dev/null, write the line to the real one, and exit without interpreter shutdown.
    real_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.write(real_stderr, f"error: {message}\n".encode())
    os._exit(2)  # pylint: disable=protected-access


class _QuietLibraries(pylogging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the run log; its warnings still show."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def run():
  """Console script: ``resnet-jax [SUBCOMMAND] --flags``; the subcommand may come first."""
  argv = list(sys.argv)
  if len(argv) > 1 and argv[1] in PASSTHROUGH:
    # A sweep passes its members' --config.x flags through untouched, so absl must not parse them.
    if argv[1] == "sweep":
      from resnet_jax import sweep  # pylint: disable=g-import-not-at-top

      sys.exit(sweep.cli(argv[2:]))
    from resnet_jax.analysis import cli  # pylint: disable=g-import-not-at-top

    sys.exit(cli.main(argv[2:]))
  if len(argv) > 1 and argv[1] in SUBCOMMANDS:
    command = argv.pop(1)
    argv.append(command)  # absl leaves positional arguments in argv for main
  logging.get_absl_handler().addFilter(_QuietLibraries())
  app.run(main, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl's parser, but a bad --config.key (unknown, or a wrong type) is one line, not a traceback."""
  try:
    remaining = flags.FLAGS(argv)
    if flags.FLAGS["config"].present:
      _CONFIG.value.get("model")  # a config file that failed to load raises here, not mid-run
    return remaining
  except flags.Error as e:
    message = str(e)
  except OSError as e:
    message = (
      f"--config: {str(e).splitlines()[-1].strip()} (give the path of a configs/NAME.py file)"
    )
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    text = str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\", "")
    message = "bad --config override: " + text.strip("'\"").replace("''", "'")
  message = " ".join(message.split())
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  run()
