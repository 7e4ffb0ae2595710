"""``resnet-jax analyze NAME --out=DIR [flags]``: one paper experiment per NAME.

  resnet-jax analyze degradation     --out=DIR [--seeds=0,1,2] [--depths=20,56] [--recipe=paper]
                                     [--steps=N] [--width=W] [--families=plain,resnet]
                                     [--conv_impl=xla|onednn] [--report_only] [--runner=inline|sweep]
  resnet-jax analyze layer_responses --out=DIR (--runs=DIR | --workdirs=W1,W2) [--num_images=256]
  resnet-jax analyze gradient_flow   --out=DIR (--runs=DIR | --workdirs=W1,W2) [--num_images=128]
  resnet-jax analyze shortcuts       --out=DIR [--model=resnet20] [--options=A,B,C] [--steps=N]
  resnet-jax analyze test_time       --out=DIR (--runs=DIR | --workdirs=W1) [--methods=...]

absl flags, spelled like every other command's; ``resnet-jax analyze NAME --help`` lists NAME's.
The front door (``resnet_jax.main``) is the only command line: it defines NAME's flags with
:func:`define_flags` and calls :func:`run_analysis`. :func:`analyze_command` does both for a list of
flag strings, for tests and notebooks; it raises, and never prints an error or exits.
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import flags

NAMES = ("degradation", "layer_responses", "gradient_flow", "shortcuts", "test_time")
TRAINING = ("degradation", "shortcuts")  # the analyses that train (and take --cpu_devices)
USAGE = "analyses:\n" + __doc__.split("\n\n")[1]


def check_name(name: str) -> str:
  """``name`` with dashes as underscores; ``ValueError`` naming the choices if it is not one."""
  if name.replace("-", "_") not in NAMES:
    raise ValueError(f"unknown analysis {name!r} (one of {', '.join(NAMES)})")
  return name.replace("-", "_")


def define_flags(name: str, flag_values: flags.FlagValues) -> None:
  """The absl flags of analysis ``name`` (only those it reads)."""
  fv = flag_values
  flags.DEFINE_string("out", None, "Output directory (figures, tables, runs/).", flag_values=fv)
  if name in ("degradation", "shortcuts"):
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
      + ("; default: the recipe's, 0.25 for --recipe=paper)." if name == "degradation" else ")."),
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
  if name == "degradation":
    _define_degradation_flags(fv)
  if name == "shortcuts":
    flags.DEFINE_string("model", "resnet20", "Model whose shortcuts are compared.", flag_values=fv)
    flags.DEFINE_list("options", ["A", "B", "C"], "Shortcut options to train.", flag_values=fv)
  if name in ("layer_responses", "gradient_flow", "test_time"):
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


def _define_degradation_flags(fv: flags.FlagValues) -> None:
  """The flags only ``degradation`` reads (besides those it shares with ``shortcuts``)."""
  flags.DEFINE_list("depths", ["20", "56"], "Depths, e.g. 20,32,44,56,110.", flag_values=fv)
  flags.DEFINE_list("families", ["plain", "resnet"], "Families to train.", flag_values=fv)
  flags.DEFINE_list(
    "seeds", ["0", "1", "2"], "Random seeds: one run per net and seed.", flag_values=fv
  )
  flags.DEFINE_enum(
    "recipe",
    "paper",
    ["paper", "digits"],
    "On the digits: paper = the paper's CIFAR recipe (batch 128, lr 0.1 /10 at 50%/75%, "
    "momentum 0.9, wd 1e-4, pad-4 crop, no flip; 400 iterations, width x0.25); digits = the "
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
    "inline: runs one after another in this process; sweep: the sweep machinery (cifar10 "
    "config files, --parallel at a time).",
    flag_values=fv,
  )
  flags.DEFINE_integer("parallel", 1, "Runs at a time with --runner=sweep.", flag_values=fv)


def _ints(flag_values: flags.FlagValues, name: str) -> tuple[int, ...] | None:
  values = flag_values[name].value
  if values is None:
    return None
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{name}={','.join(values)}: give whole numbers, e.g. 20,32,44") from None


def analyze_command(name: str, argv: Sequence[str] = ()) -> dict[str, Any]:
  """Parses ``argv`` (flags of analysis ``name``) and runs it: see :func:`run_analysis`. Bad names,
  flags or values: ``ValueError``; missing runs: ``FileNotFoundError``."""
  name = check_name(name)
  flag_values = flags.FlagValues()
  define_flags(name, flag_values)
  try:
    rest = flag_values([f"resnet-jax analyze {name}", *argv])[1:]
  except flags.Error as e:
    raise ValueError(f"{e} (resnet-jax analyze {name} --help lists its flags)") from None
  if rest:
    raise ValueError(f"unexpected arguments {rest}")
  return run_analysis(name, flag_values)


def run_analysis(name: str, flag_values: flags.FlagValues) -> dict[str, Any]:
  """Runs analysis ``name`` with the parsed flags of :func:`define_flags`; prints and returns where
  the figure and table went."""
  a = flag_values
  if a["out"].value is None:
    raise ValueError(f"--out is required (resnet-jax analyze {name} --out=DIR)")
  from resnet_jax import analysis as A  # pylint: disable=g-import-not-at-top
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  storage.check_access(a.out, "--out", write=True)

  if name == "degradation":
    from resnet_jax.analysis import degradation  # pylint: disable=g-import-not-at-top

    result = degradation.run(
      a.out,
      dataset=a.dataset,
      recipe=a.recipe,
      depths=_ints(a, "depths"),
      families=tuple(a.families),
      seeds=_ints(a, "seeds"),
      steps=a.steps,
      width_multiplier=a.width,
      batch_size=a.batch_size,
      evals=a.evals,
      conv_impl=a.conv_impl,
      runner=a.runner,
      parallel=a.parallel,
      report_only=a.report_only,
    )
  elif name == "shortcuts":
    from resnet_jax.analysis import shortcuts  # pylint: disable=g-import-not-at-top

    result = shortcuts.run(
      a.out,
      model=a.model,
      options=tuple(a.options),
      dataset=a.dataset,
      steps=a.steps,
      width_multiplier=a.width,
      seed=a.seed,
      batch_size=a.batch_size,
      evals=a.evals,
    )
  else:
    workdirs = A.run_dirs(a.runs, tuple(a.workdirs))
    if name == "layer_responses":
      from resnet_jax.analysis import layer_responses  # pylint: disable=g-import-not-at-top

      result = layer_responses.run(a.out, workdirs, num_images=a.num_images, step=a.step)
    elif name == "gradient_flow":
      from resnet_jax.analysis import gradient_flow  # pylint: disable=g-import-not-at-top

      result = gradient_flow.run(a.out, workdirs, num_images=a.num_images, step=a.step)
    else:
      from resnet_jax.analysis import multi_view  # pylint: disable=g-import-not-at-top

      result = multi_view.run(
        a.out, workdirs, methods=tuple(a.methods), scales=_ints(a, "scales"), step=a.step
      )
  print(f"{name}: figure {result['figure']}, table {result['table']}")
  return result
