"""The analyses as ``resnet-jax analyze NAME`` runs them: their names, and :func:`run_analysis`.

The command's flags (each analysis has its own) and its body are ``resnet_jax.commands.analyze``'s,
which also has ``analyze_command(name, argv)`` for tests and notebooks; :func:`run_analysis` runs
one analysis on those flags once they are parsed.
"""

from __future__ import annotations

from typing import Any

from absl import flags

NAMES = (
  "degradation",
  "layer_responses",
  "gradient_flow",
  "shortcuts",
  "test_time",
  "lesions",
  "landscape",
)
TRAINING = ("degradation", "shortcuts")  # the analyses that train


def check_name(name: str) -> str:
  """``name`` with dashes as underscores; ``ValueError`` naming the choices if it is not one."""
  if name.replace("-", "_") not in NAMES:
    raise ValueError(f"unknown analysis {name!r} (one of {', '.join(NAMES)})")
  return name.replace("-", "_")


def _ints(flag_values: flags.FlagValues, name: str) -> tuple[int, ...] | None:
  values = flag_values[name].value
  if values is None:
    return None
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    example = {"depths": "20,32,44", "seeds": "0,1,2", "scales": "28,32,40"}.get(name, "1,2,3")
    raise ValueError(f"--{name}={','.join(values)}: give whole numbers, e.g. {example}") from None


def check_degradation_flags(flag_values: flags.FlagValues) -> None:
  """degradation's --depths and --seeds, checked before anything starts: whole numbers, and
  depths a net of each family has (CIFAR 6n+2, or a registry name)."""
  from resnet_jax.analysis import recipes  # pylint: disable=g-import-not-at-top

  _ints(flag_values, "seeds")
  given = flag_values["depths"].value or []
  if len(given) == 1 and not given[0].isdigit():  # a figure's depths by name (e.g. fig6)
    return
  for depth in _ints(flag_values, "depths") or ():
    for family in flag_values["families"].value:
      try:
        recipes.resolve_model(f"{family}{depth}")
      except ValueError:
        raise ValueError(
          f"--depths: no {family}{depth}; give CIFAR depths 6n+2 (8, 14, 20, 26, 32, 44, 56, "
          "110, ...)"
        ) from None


def run_analysis(name: str, flag_values: flags.FlagValues) -> dict[str, Any]:
  """Runs analysis ``name`` with its parsed flags (``commands.analyze.define_analysis_flags``);
  prints and returns where the figure and table went."""
  if flag_values["out"].value is None:
    raise ValueError(f"--out is required (resnet-jax analyze {name} --out=DIR)")
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top

  storage.check_access(flag_values.out, "--out", write=True)
  result = _RUNNERS[name](flag_values)
  print(f"{name}: figure {result['figure']}, table {result['table']}")
  return result


def _run_dirs(a) -> list:
  from resnet_jax import analysis  # pylint: disable=g-import-not-at-top

  return analysis.run_dirs(a.runs, tuple(a.workdirs))


def _degradation(a) -> dict[str, Any]:
  from resnet_jax.analysis import degradation  # pylint: disable=g-import-not-at-top

  return degradation.run(
    a.out,
    dataset=a.dataset,
    recipe=a.recipe,
    depths=degradation.FIGURE_DEPTHS.get(",".join(a.depths)) or _ints(a, "depths"),
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


def _shortcuts(a) -> dict[str, Any]:
  from resnet_jax.analysis import shortcuts  # pylint: disable=g-import-not-at-top

  return shortcuts.run(
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


def _gradient_flow(a) -> dict[str, Any]:
  from resnet_jax.analysis import gradient_flow  # pylint: disable=g-import-not-at-top

  given = bool(a.runs or a.workdirs)
  depths = _ints(a, "depths")
  return gradient_flow.run(
    a.out,
    _run_dirs(a) if given else [],
    num_images=a.num_images,
    step=a.step,
    depths=(() if given else gradient_flow.DEPTHS) if depths is None else depths,
    seeds=_ints(a, "seeds"),
    families=tuple(a.families),
    recipe_name=a.recipe,
    dataset=a.dataset,
    width_multiplier=a.width,
  )


def _layer_responses(a) -> dict[str, Any]:
  from resnet_jax.analysis import layer_responses  # pylint: disable=g-import-not-at-top

  return layer_responses.run(a.out, _run_dirs(a), num_images=a.num_images, step=a.step)


def _lesions(a) -> dict[str, Any]:
  from resnet_jax.analysis import lesions  # pylint: disable=g-import-not-at-top

  return lesions.run(
    a.out, _run_dirs(a), num_images=a.num_images, draws=a.draws, seed=a.seed, step=a.step
  )


def _landscape(a) -> dict[str, Any]:
  from resnet_jax.analysis import landscape  # pylint: disable=g-import-not-at-top

  return landscape.run(
    a.out,
    _run_dirs(a),
    num_images=a.num_images,
    step=a.step,
    grid=a.grid,
    span=a.span,
    slice_points=a.slice_points,
    direction_seed=a.direction_seed,
    chunk=a.chunk,
  )


def _test_time(a) -> dict[str, Any]:
  from resnet_jax.analysis import multi_view  # pylint: disable=g-import-not-at-top

  return multi_view.run(
    a.out, _run_dirs(a), methods=tuple(a.methods), scales=_ints(a, "scales"), step=a.step
  )


# One runner per analysis name: what it reads of its flags and which module does the work.
_RUNNERS = {
  "degradation": _degradation,
  "shortcuts": _shortcuts,
  "gradient_flow": _gradient_flow,
  "layer_responses": _layer_responses,
  "lesions": _lesions,
  "landscape": _landscape,
  "test_time": _test_time,
}
