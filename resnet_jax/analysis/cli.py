"""The analyses as ``resnet-jax analyze NAME`` runs them: their names, and :func:`run_analysis`.

The command's flags (each analysis has its own) and its body are ``resnet_jax.commands.analyze``'s,
which also has ``analyze_command(name, argv)`` for tests and notebooks; :func:`run_analysis` runs
one analysis on those flags once they are parsed.
"""

from __future__ import annotations

from typing import Any

from absl import flags

NAMES = ("degradation", "layer_responses", "gradient_flow", "shortcuts", "test_time")
TRAINING = ("degradation", "shortcuts")  # the analyses that train (and take --cpu_devices)


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
    raise ValueError(f"--{name}={','.join(values)}: give whole numbers, e.g. 20,32,44") from None


def run_analysis(name: str, flag_values: flags.FlagValues) -> dict[str, Any]:
  """Runs analysis ``name`` with its parsed flags (``commands.analyze.define_analysis_flags``);
  prints and returns where the figure and table went."""
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
