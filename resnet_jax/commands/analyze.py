"""``resnet-jax analyze NAME --out=DIR [flags]``: one of the paper's experiments per NAME.

Each analysis has its own flags (``resnet-jax analyze NAME --help`` lists NAME's); the analyses
themselves, and :func:`resnet_jax.analysis.cli.run_analysis` that runs one on these flags, are the
``analysis`` package's. :func:`analyze_command` parses a list of flag strings and runs one, for
tests and notebooks: it raises, and never prints an error or exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import flags

from resnet_jax import runtime
from resnet_jax.analysis import cli
from resnet_jax.commands import startup
from resnet_jax.commands.usage import UsageError, no_positionals

PURPOSE = (
  "the paper's analyses: degradation, layer responses, gradient flow, shortcuts, test time; "
  "and why residual nets train: lesions, loss landscape"
)
EXAMPLE = "resnet-jax analyze degradation --out=runs/degradation --depths=20,32 --steps=200"
USAGE = "NAME --out=DIR [--flag=value ...]"
DETAILS = """analyses:
  resnet-jax analyze degradation     --out=DIR [--seeds=0,1,2] [--depths=20,56] [--recipe=paper]
                                     [--steps=N] [--width=W] [--families=plain,resnet]
                                     [--conv_impl=xla|onednn] [--report_only] [--runner=inline|sweep]
  resnet-jax analyze layer_responses --out=DIR (--runs=DIR | --workdirs=W1,W2) [--num_images=256]
  resnet-jax analyze gradient_flow   --out=DIR [--depths=20,32,44,56,110] [--seeds=0,1,2]
                                     [--runs=DIR | --workdirs=W1,W2] [--num_images=128]
  resnet-jax analyze shortcuts       --out=DIR [--model=resnet20] [--options=A,B,C] [--steps=N]
  resnet-jax analyze test_time       --out=DIR (--runs=DIR | --workdirs=W1) [--methods=...]
  resnet-jax analyze lesions         --out=DIR (--runs=DIR | --workdirs=W1,W2) [--draws=5]
  resnet-jax analyze landscape       --out=DIR (--runs=DIR | --workdirs=W1,W2) [--grid=21]
                                     [--num_images=256] [--slice_points=51]"""

_NAME_AN_ANALYSIS = "name an analysis first: resnet-jax analyze {names} --out=DIR ..."


def define_flags(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  """The flags of the analysis named first; a wrong name is named as such, before any flag."""
  if args and not args[0].startswith("-"):
    name = cli.check_name(args[0])
    define_analysis_flags(name, flag_values)
    startup.define_cpu_devices(flag_values)
  elif args:  # flags but no name: say so, rather than that the flags are unknown
    raise UsageError(_NAME_AN_ANALYSIS.format(names="|".join(cli.NAMES)))


def run(flag_values: flags.FlagValues, positionals: Sequence[str]) -> None:
  if not positionals:
    raise UsageError(_NAME_AN_ANALYSIS.format(names="|".join(cli.NAMES)))
  no_positionals(positionals[1:])
  name = cli.check_name(positionals[0])
  if name == "degradation":
    cli.check_degradation_flags(flag_values)  # before seconds of TensorFlow and device start-up
  # The CPU split of `resnet-jax train`: the analyses that train run their steps over it, and
  # lesions and landscape spread their evaluations over it (analysis.inputs.across_devices).
  if name in cli.TRAINING:
    batch = flag_values["batch_size"].value
  else:
    batch = flag_values["num_images"].value if "num_images" in flag_values else None
  startup.start(flag_values, batch_sizes=[batch or 128])
  runtime.import_tensorflow()  # quietly, before the analyses' input pipeline loads it
  cli.run_analysis(name, flag_values)


def errors() -> tuple[type[Exception], ...]:
  return startup.run_errors()


def analyze_command(name: str, argv: Sequence[str] = ()) -> dict[str, Any]:
  """Parses ``argv`` (flags of analysis ``name``) and runs it: see ``cli.run_analysis``. Bad names,
  flags or values: ``ValueError``; missing runs: ``FileNotFoundError``."""
  name = cli.check_name(name)
  flag_values = flags.FlagValues()
  define_analysis_flags(name, flag_values)
  try:
    rest = flag_values([f"resnet-jax analyze {name}", *argv])[1:]
  except flags.Error as e:
    raise ValueError(f"{e} (resnet-jax analyze {name} --help lists its flags)") from None
  if rest:
    raise ValueError(f"unexpected arguments {rest}")
  return cli.run_analysis(name, flag_values)


def define_analysis_flags(name: str, flag_values: flags.FlagValues) -> None:
  """The absl flags of analysis ``name`` (only those it reads)."""
  fv = flag_values
  flags.DEFINE_string("out", None, "Output directory (figures, tables, runs/).", flag_values=fv)
  if name in cli.TRAINING:
    _define_training_flags(name, fv)
  if name == "degradation":
    _define_degradation_flags(fv)
  if name == "shortcuts":
    flags.DEFINE_string("model", "resnet20", "Model whose shortcuts are compared.", flag_values=fv)
    flags.DEFINE_list("options", ["A", "B", "C"], "Shortcut options to train.", flag_values=fv)
  if name in ("layer_responses", "gradient_flow", "test_time", "lesions", "landscape"):
    flags.DEFINE_string(
      "runs",
      None,
      "Directory of training workdirs (e.g. the degradation command's OUT/runs).",
      flag_values=fv,
    )
    flags.DEFINE_list("workdirs", [], "Comma-separated training workdirs.", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=fv)
  if name in ("layer_responses", "gradient_flow"):
    flags.DEFINE_integer(
      "num_images",
      256 if name == "layer_responses" else 128,
      "Test images the statistics are taken over.",
      flag_values=fv,
    )
  if name == "gradient_flow":
    _define_gradient_flow_flags(fv)
  if name == "lesions":
    flags.DEFINE_integer(
      "num_images", 10000, "Test images (at most the whole test split).", flag_values=fv
    )
    flags.DEFINE_integer("draws", 5, "Random sets of k deleted blocks, per k.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the random sets.", flag_values=fv)
  if name == "landscape":
    _define_landscape_flags(fv)
  if name == "test_time":
    flags.DEFINE_list(
      "methods", ["center", "ten_crop", "full_conv"], "Test-time methods.", flag_values=fv
    )
    flags.DEFINE_list(
      "scales",
      None,
      "full_conv shorter sides (default: the config's; 28,32,40 on digits).",
      flag_values=fv,
    )


def _define_gradient_flow_flags(fv: flags.FlagValues) -> None:
  """The at-initialisation sweep of ``gradient_flow`` (nets built from the degradation recipe)."""
  flags.DEFINE_list(
    "depths",
    None,
    "Depths of the at-initialisation sweep (default: 20,32,44,56,110 without --runs/--workdirs, "
    "none with them).",
    flag_values=fv,
  )
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the sweep's nets.", flag_values=fv)
  flags.DEFINE_list("families", ["plain", "resnet"], "Families of the sweep.", flag_values=fv)
  flags.DEFINE_enum(
    "recipe", "paper", ["paper", "digits"], "The degradation recipe of the sweep.", flag_values=fv
  )
  flags.DEFINE_string("dataset", "digits", "Dataset of the sweep's batch.", flag_values=fv)
  flags.DEFINE_float(
    "width", None, "Width multiplier of the sweep's nets (default: the recipe's).", flag_values=fv
  )


def _define_landscape_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer(
    "num_images", 256, "Training images (a fixed subset) the loss is taken over.", flag_values=fv
  )
  # 21: both 56-layer nets of the reproduction within 15 minutes on 2 cores (docs/analyses.md).
  flags.DEFINE_integer("grid", 21, "Points per side of the 2-D grid.", flag_values=fv)
  flags.DEFINE_float("span", 1.0, "The grid covers [-span, span]^2.", flag_values=fv)
  flags.DEFINE_integer("slice_points", 51, "Points of the 1-D slice.", flag_values=fv)
  flags.DEFINE_integer("direction_seed", 0, "Seed of the two random directions.", flag_values=fv)
  flags.DEFINE_integer(
    "chunk", 25, "Grid points per compiled batch (and per resumable write).", flag_values=fv
  )


def _define_training_flags(name: str, fv: flags.FlagValues) -> None:
  """The flags of the analyses that train (degradation, shortcuts)."""
  flags.DEFINE_string(
    "dataset", "digits", "digits (offline) or cifar10 (the paper's recipe).", flag_values=fv
  )
  flags.DEFINE_integer(
    "steps",
    None,
    "Training iterations (default: the recipe's; cifar10 64000).",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "width",
    None if name == "degradation" else 1.0,
    "Width multiplier of every layer (1.0 = the paper's widths 16-32-64"
    + ("; default: the recipe's, 1.0 for --recipe=paper)." if name == "degradation" else ")."),
    flag_values=fv,
  )
  if name == "shortcuts":
    flags.DEFINE_integer("seed", 0, "Random seed of every run.", flag_values=fv)
  flags.DEFINE_integer(
    "batch_size", None, "Global batch size (default: the recipe's).", flag_values=fv
  )
  flags.DEFINE_integer(
    "evals",
    4,
    "Test-error evaluations per run (points on the curve).",
    flag_values=fv,
  )


def _define_degradation_flags(fv: flags.FlagValues) -> None:
  """The flags only ``degradation`` reads (besides those it shares with ``shortcuts``)."""
  flags.DEFINE_list(
    "depths",
    ["20", "56"],
    "Depths, e.g. 20,32,44,56,110; 'fig6' = Fig. 6's 20,32,44,56 (default: Fig. 1's 20,56).",
    flag_values=fv,
  )
  flags.DEFINE_list("families", ["plain", "resnet"], "Families to train.", flag_values=fv)
  flags.DEFINE_list(
    "seeds", ["0", "1", "2"], "Random seeds: one run per net and seed.", flag_values=fv
  )
  flags.DEFINE_enum(
    "recipe",
    "paper",
    ["paper", "digits"],
    "On the digits: paper = the paper's CIFAR recipe (batch 128, lr 0.1 /10 at 50%/75%, "
    "momentum 0.9, wd 1e-4, pad-4 crop, no flip, no warm-up; 1000 iterations, 16-32-64 filters); "
    "digits = the "
    "default experiment's (warm-up + cosine).",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "conv_impl",
    "auto",
    ["xla", "onednn", "auto"],
    "Convolution implementation of every run. auto = oneDNN where the [cpu] extra is installed: "
    "measured faster than XLA's split CPU for these narrow nets at batch 128 (docs/analyses.md).",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "report_only",
    False,
    "Only rewrite degradation.png/.md from OUT/degradation.json (no training).",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "runner",
    "inline",
    ["inline", "sweep"],
    "inline: each run is its own `command` (the one degradation.json records), --parallel at a "
    "time, each on its share of the CPUs (1 = one after another in this process); sweep: the "
    "sweep machinery (cifar10 config files, --parallel at a time).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "parallel",
    2,
    "Runs at a time. On a 2-core machine 2 runs pinned to a core each train 1.45x as many steps "
    "an hour as one run on both cores (docs/analyses.md).",
    flag_values=fv,
  )
