"""``resnet-jax analyze NAME --out=DIR [flags]``: one paper experiment per NAME.

  resnet-jax analyze degradation     --out=DIR [--dataset=digits] [--depths=20,32,44] [--steps=N]
                                     [--width=1.0] [--families=plain,resnet] [--runner=inline|sweep]
  resnet-jax analyze layer_responses --out=DIR (--runs=DIR | --workdirs=W1,W2) [--num-images=256]
  resnet-jax analyze gradient_flow   --out=DIR (--runs=DIR | --workdirs=W1,W2) [--num-images=128]
  resnet-jax analyze shortcuts       --out=DIR [--model=resnet20] [--options=A,B,C] [--steps=N]
  resnet-jax analyze test_time       --out=DIR (--runs=DIR | --workdirs=W1) [--methods=...]

``main`` passes everything after NAME untouched (absl must not parse it), like ``sweep``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

NAMES = ("degradation", "layer_responses", "gradient_flow", "shortcuts", "test_time")


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(t) for t in text.split(",") if t.strip())


def _strs(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


def _parser(name: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"resnet-jax analyze {name}", description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output directory (figures, tables, runs/)")
  if name in ("degradation", "shortcuts"):
    p.add_argument("--dataset", default="digits", help="digits (offline) or cifar10 (paper recipe)")
    p.add_argument(
      "--steps",
      type=int,
      default=None,
      help="training iterations (default: the recipe's; cifar10 64000)",
    )
    p.add_argument(
      "--width",
      type=float,
      default=1.0,
      help="width multiplier of every layer (1.0 = paper widths 16-32-64)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
      "--evals",
      type=int,
      default=8 if name == "degradation" else 4,
      help="test-error evaluations per run (points on the curve)",
    )
  if name == "degradation":
    p.add_argument("--depths", type=_ints, default=(20, 32, 44), help="e.g. 20,32,44,56,110")
    p.add_argument("--families", type=_strs, default=("plain", "resnet"))
    p.add_argument(
      "--runner",
      choices=("inline", "sweep"),
      default="inline",
      help="inline: runs one after another in this process; sweep: the sweep "
      "machinery (cifar10 config files, --parallel at a time)",
    )
    p.add_argument("--parallel", type=int, default=1)
  if name == "shortcuts":
    p.add_argument("--model", default="resnet20")
    p.add_argument("--options", type=_strs, default=("A", "B", "C"))
  if name in ("layer_responses", "gradient_flow", "test_time"):
    p.add_argument(
      "--runs",
      default=None,
      help="directory of training workdirs (e.g. the degradation command's OUT/runs)",
    )
    p.add_argument("--workdirs", type=_strs, default=(), help="comma-separated training workdirs")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  if name in ("layer_responses", "gradient_flow"):
    p.add_argument("--num-images", type=int, default=256 if name == "layer_responses" else 128)
  if name == "test_time":
    p.add_argument("--methods", type=_strs, default=("center", "ten_crop", "full_conv"))
    p.add_argument(
      "--scales",
      type=_ints,
      default=None,
      help="full_conv shorter sides (default: the config's; 28,32,40 on digits)",
    )
  return p


def analyze_command(name: str, argv: Sequence[str] = ()) -> dict[str, Any]:
  """Runs analysis ``name`` with command-line options ``argv``; prints and returns where the
  figure and table went. Bad options: ``SystemExit(2)`` from argparse; bad values: ``ValueError``;
  missing runs: ``FileNotFoundError``."""
  name = name.replace("-", "_")
  if name not in NAMES:
    raise ValueError(f"unknown analysis {name!r}; choose one of {', '.join(NAMES)}")
  a = _parser(name).parse_args(list(argv))
  from resnet_jax import analysis as A  # pylint: disable=g-import-not-at-top

  if name == "degradation":
    from resnet_jax.analysis import degradation  # pylint: disable=g-import-not-at-top

    result = degradation.run(
      a.out,
      dataset=a.dataset,
      depths=a.depths,
      families=a.families,
      steps=a.steps,
      width_multiplier=a.width,
      seed=a.seed,
      batch_size=a.batch_size,
      evals=a.evals,
      runner=a.runner,
      parallel=a.parallel,
    )
  elif name == "shortcuts":
    from resnet_jax.analysis import shortcuts  # pylint: disable=g-import-not-at-top

    result = shortcuts.run(
      a.out,
      model=a.model,
      options=a.options,
      dataset=a.dataset,
      steps=a.steps,
      width_multiplier=a.width,
      seed=a.seed,
      batch_size=a.batch_size,
      evals=a.evals,
    )
  else:
    workdirs = A.run_dirs(a.runs, a.workdirs)
    if name == "layer_responses":
      from resnet_jax.analysis import layer_responses  # pylint: disable=g-import-not-at-top

      result = layer_responses.run(a.out, workdirs, num_images=a.num_images, step=a.step)
    elif name == "gradient_flow":
      from resnet_jax.analysis import gradient_flow  # pylint: disable=g-import-not-at-top

      result = gradient_flow.run(a.out, workdirs, num_images=a.num_images, step=a.step)
    else:
      from resnet_jax.analysis import test_time  # pylint: disable=g-import-not-at-top

      result = test_time.run(a.out, workdirs, methods=a.methods, scales=a.scales, step=a.step)
  print(f"{name}: figure {result['figure']}, table {result['table']}")
  return result


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m resnet_jax.analysis.cli NAME --out=DIR ...``"""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__)
    return 0 if argv else 2
  from resnet_jax.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top

  try:
    analyze_command(argv[0], argv[1:])
  except (ValueError, FileNotFoundError, CheckpointError) as e:  # one line the user can act on
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
