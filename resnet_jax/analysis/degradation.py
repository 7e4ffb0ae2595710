"""Degradation (paper Fig. 1, 4, 6; Table 6): plain and residual nets of increasing depth, one recipe.

Trains ``plain{d}`` and ``resnet{d}`` for each depth and seed with the same recipe
(``analysis.recipes.recipe``; by default ``paper``, the paper's CIFAR recipe on the digits) and
writes ``degradation.json`` with the raw numbers of every run, then the report from it:
``degradation.png`` (training error dashed, test error solid, against iterations; one panel for
the plain nets and one for the residual nets as in Fig. 6; per net the mean over seeds as a line
and the min-max over seeds as a band) and ``degradation.md`` (final errors per net: mean and
min-max over seeds, every run, and the paper's four degradation conditions checked).

Curves: the training error is the training-mode error of the minibatches, averaged over each
logging window (the paper's dashed lines); the test error is the whole test split in inference
mode at each evaluation. The final training error is exact: the whole training split in inference
mode (centre view, BN running statistics) from the final checkpoint.

Runs go to ``OUT/runs/<model>_seed<k>``: a finished run (DONE) is skipped, an interrupted one
resumes from its checkpoint, so an interrupted reproduction resumes with the same command. Each
run's ``command`` in the json re-runs that run alone into another ``--out``. ``report_only``
regenerates the figure and Markdown from ``OUT/degradation.json`` alone.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from typing import Any, Sequence

import numpy as np

from resnet_jax import faults
from resnet_jax import metrics as metrics_lib
from resnet_jax import storage
from resnet_jax.analysis import recipes, report

FAMILIES = ("plain", "resnet")
# --depths by the paper's figure: Fig. 1's pair (the default) and Fig. 6's CIFAR series.
FIGURE_DEPTHS = {"fig1": (20, 56), "fig6": (20, 32, 44, 56)}
RESULT_FILE = "degradation.json"
TRAIN_ERROR_FILE = "final_train_error.json"  # in each run's workdir, once measured
# In each run's workdir, written by the invocation that finished training it: report.provenance(),
# the convolution path it ran and its wall time.
PROVENANCE_FILE = "provenance.json"
CONDITIONS = (
  "every plain-deep seed ends with a higher training error than every plain-shallow seed",
  "every resnet-deep seed ends with a lower training error than every plain-deep seed",
  "resnet-deep's mean training error is not above resnet-shallow's",
  "resnet-deep's mean test error is below plain-deep's",
)


def _curves(workdir: str) -> dict[str, list[list]]:
  train, test = [], []
  for rec in metrics_lib.read_metrics(workdir):
    if "train_top1_error" in rec:
      train.append((int(rec["step"]), float(rec["train_top1_error"])))
    if "eval_top1_error" in rec:
      test.append((int(rec["step"]), float(rec["eval_top1_error"])))
  dedup = lambda pts: [list(p) for p in sorted(dict(pts).items())]  # a resumed run may log twice
  return {"train": dedup(train), "test": dedup(test)}


def member_name(model: str, seed: int) -> str:
  """The workdir name of one run under ``OUT/runs``."""
  return f"{model}_seed{seed}"


def member_args(settings: dict[str, Any], model: str, seed: int, out: str = "DIR") -> list[str]:
  """``analyze degradation``'s flags that train this one run alone into ``out``."""
  fam = "plain" if model.startswith("plain") else "resnet"
  args = [
    f"--dataset={settings['dataset']}",
    f"--recipe={settings['recipe']}",
    f"--steps={settings['steps']}",
    f"--width={settings['width']:g}",
    f"--batch_size={settings['batch_size']}",
    f"--evals={settings['evals']}",
  ]
  if settings.get("conv_impl"):
    args.append(f"--conv_impl={settings['conv_impl']}")
  args += [f"--depths={recipes.depth_of(model)}", f"--families={fam}", f"--seeds={seed}"]
  return args + [f"--out={out}"]


def member_command(settings: dict[str, Any], model: str, seed: int, out: str = "DIR") -> str:
  """The command that trains this one run alone into ``out`` and writes the same json there."""
  args = member_args(settings, model, seed, out)
  return "resnet-jax analyze degradation " + " ".join(shlex.quote(a) for a in args)


def final_train_error(config, workdir: str) -> float:
  """Error over the whole training split, inference mode, final checkpoint (cached in the run)."""
  cached_path = report.output_path(workdir, TRAIN_ERROR_FILE)
  cached = storage.location(cached_path)
  if cached.exists():
    return float(json.loads(cached.read_text())["top1_error"])
  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  c = config.copy_and_resolve_references()
  c.eval_split = data_lib.dataset_info(c.dataset).train_split
  result = loop.evaluate(c, workdir, method="center")
  # evaluate() names its file by method and step only; this one is of the training split.
  written = storage.location(workdir) / loop.eval_result_file("center", result["step"])
  if written.exists():
    written.unlink()
  record = {"split": c.eval_split, "step": result["step"], "top1_error": result["eval_top1_error"]}
  report.write_json(cached_path, record)
  return float(result["eval_top1_error"])


def _settings(dataset, recipe, steps, width, batch_size, evals, conv_impl) -> dict[str, Any]:
  """The recipe's resolved knobs, recorded in the json and used to build each run's command."""
  probe = recipes.recipe(
    "resnet20",
    dataset=dataset,
    steps=steps,
    width_multiplier=width,
    batch_size=batch_size,
    evals=evals,
    name=recipe,
  )
  return {
    "dataset": dataset,
    "recipe": recipe,
    "steps": int(probe.num_train_steps),
    "width": float(probe.model_overrides.get("width_multiplier", 1.0)),
    "batch_size": int(probe.global_batch_size),
    "evals": int(evals),
    "conv_impl": conv_impl or str(probe.model_overrides.get("conv_impl", "")),
    "learning_rate": float(probe.learning_rate),
    "lr_boundaries": [int(b) for b in probe.lr_boundaries],
    "schedule": str(probe.schedule),
    "momentum": float(probe.momentum),
    "weight_decay": float(probe.weight_decay),
    "warmup_steps": int(probe.warmup_steps),
    "train_augment": str(probe.train_augment),
  }


def _config(settings: dict[str, Any], model: str, seed: int):
  overrides = {"model_overrides.conv_impl": settings["conv_impl"]}
  return recipes.recipe(
    model,
    dataset=settings["dataset"],
    steps=settings["steps"],
    width_multiplier=settings["width"],
    seed=seed,
    batch_size=settings["batch_size"],
    evals=settings["evals"],
    overrides=overrides if settings["conv_impl"] else None,
    name=settings["recipe"],
  )


def _conv_impl_run(config) -> str:
  """The convolution path ``config`` runs here ('xla' or 'onednn'; 'auto' resolved)."""
  import jax  # pylint: disable=g-import-not-at-top

  from resnet_jax.models import conv_impl as conv_impl_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top

  precision = config_lib.precision_for_platform(config.precision, jax.default_backend())
  return conv_impl_lib.resolve(
    config.model_overrides.get("conv_impl", ""), fp32=precision == "fp32"
  )


def _write_provenance(config, workdir: str, wall_time_s: float | None) -> None:
  record = {
    "provenance": report.provenance(),
    "conv_impl": _conv_impl_run(config),
    "wall_time_s": wall_time_s,
  }
  report.write_json(report.output_path(workdir, PROVENANCE_FILE), record)


def _read_provenance(workdir: str) -> dict[str, Any]:
  """The run's provenance record; all None for a run trained before runs recorded one."""
  path = storage.location(report.output_path(workdir, PROVENANCE_FILE))
  if path.exists():
    return json.loads(path.read_text())
  return {"provenance": None, "conv_impl": None, "wall_time_s": None}


def _record(settings, model: str, seed: int, config, workdir: str) -> dict[str, Any]:
  curves = _curves(workdir)
  return {
    # Where and how this run was trained: commit, package versions, platform, CPU, devices, the
    # convolution path and the wall time of the invocation that finished it (training and the
    # final evaluations; a resumed run counts only its last invocation).
    **_read_provenance(workdir),
    "model": model,
    "family": "plain" if model.startswith("plain") else "resnet",
    "depth": recipes.depth_of(model),
    "seed": seed,
    "steps": settings["steps"],
    "command": member_command(settings, model, seed),
    "final_train_error": final_train_error(config, workdir),
    "final_test_error": curves["test"][-1][1] if curves["test"] else None,
    "train_error": curves["train"],
    "test_error": curves["test"],
    "workdir": member_name(model, seed),
  }


def _train_inline(out, settings, members) -> dict[tuple[str, int], tuple[Any, str]]:
  from resnet_jax import runs  # pylint: disable=g-import-not-at-top

  runs_dir = report.output_path(out, "runs")
  done = {}
  for model, seed in members:
    config = _config(settings, model, seed)
    workdir = report.output_path(runs_dir, member_name(model, seed))
    trained_here = not runs.is_done(workdir)
    start = time.monotonic()
    recipes.train(config, workdir)
    if not runs.is_done(workdir):  # stopped (preempted, SIGTERM) with a checkpoint saved
      raise faults.RunStoppedError(
        f"{workdir} stopped before its last step: run the same command again to resume it"
      )
    if trained_here:
      final_train_error(config, workdir)  # the final evaluation counts in the run's wall time
      _write_provenance(config, workdir, time.monotonic() - start)
    done[(model, seed)] = (config, workdir)
  return done


def cpu_shares(parallel: int) -> list[list[int]]:
  """This process's CPUs dealt into ``parallel`` disjoint shares (fewer if CPUs are fewer)."""
  cpus = sorted(os.sched_getaffinity(0))
  return [cpus[i :: min(parallel, len(cpus))] for i in range(min(parallel, len(cpus)))]


def _train_parallel(out, settings, members, parallel):
  """Each unfinished run as its own ``command`` in a child process, ``parallel`` at a time, each
  pinned to its share of the CPUs: on 2 cores two one-core runs train 1.45x the steps an hour of
  one run on both (small convolutions scale poorly across cores). A child that fails stops the
  rest; SIGTERM or Ctrl-C reaches every child, which saves and stops, so the same command resumes."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from resnet_jax import runs  # pylint: disable=g-import-not-at-top

  runs_dir = report.output_path(out, "runs")
  done = lambda m: runs.is_done(report.output_path(runs_dir, member_name(*m)))
  todo = [m for m in members if not done(m)]
  todo.sort(key=lambda m: -recipes.depth_of(m[0]))  # deepest first: the slots end together
  logs = report.output_path(out, "logs") if not storage.is_object_store(out) else None
  if logs:
    os.makedirs(logs, exist_ok=True)
  free = cpu_shares(parallel)
  running: dict[Any, tuple[tuple[str, int], list[int], Any]] = {}

  signalled = []

  def stop_children(signum, frame):  # pylint: disable=unused-argument
    if signum is not None:
      signalled.append(signum)
    todo.clear()  # start nothing more; each child saves its checkpoint and stops
    for _, _, child in running.values():
      child.send_signal(signal.SIGTERM)

  previous = signal.signal(signal.SIGTERM, stop_children)
  try:
    while todo or running:
      while todo and free:
        member, cpus = todo.pop(0), free.pop(0)
        name = member_name(*member)
        log = os.path.join(logs, name + ".log") if logs else os.devnull
        argv = [sys.executable, "-m", "resnet_jax.main", "analyze", "degradation"]
        with open(log, "ab") as log_file:  # the child holds its own copy of the descriptor
          child = subprocess.Popen(
            argv + member_args(settings, *member, out),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda cpus=cpus: os.sched_setaffinity(0, cpus),
          )
        running[child.pid] = (member, cpus, child)
        where = f", log {log}" if logs else ""
        print(f"degradation: {name} started on CPUs {cpus}{where}", flush=True)
      pid, status = os.wait()
      if pid not in running:
        continue
      member, cpus, child = running.pop(pid)
      child.returncode = os.waitstatus_to_exitcode(status)
      free.append(cpus)
      if child.returncode != 0 and not signalled:
        stop_children(None, None)
        for _, _, other in running.values():
          other.wait()
        raise faults.RunStoppedError(
          f"{member_name(*member)} exited with status {child.returncode} (its log: {logs}); the "
          "other runs saved and stopped: run the same command again to resume"
        )
      state = "done" if child.returncode == 0 else "stopped"
      print(f"degradation: {member_name(*member)} {state}", flush=True)
  except KeyboardInterrupt:
    for _, _, child in running.values():
      child.wait()
    raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  unfinished = [member_name(*m) for m in members if not done(m)]
  if unfinished:
    raise faults.RunStoppedError(
      f"stopped with {len(unfinished)} runs unfinished ({', '.join(unfinished)}); their "
      "checkpoints stay: run the same command again to resume"
    )
  return _train_inline(out, settings, members)  # every run is done: this only reads them back


def _train_with_sweep(out, settings, members, parallel):
  """The paper's cifar10 config files as a generated sweep, ``parallel`` runs at a time."""
  if storage.is_object_store(out):
    raise ValueError(
      f"runner='sweep' imports the sweep file it writes into --out={out}: use a "
      "local --out (or runner='inline', which works on a bucket)"
    )
  if settings["dataset"] != "cifar10" or settings["width"] != 1.0:
    raise ValueError(
      "runner='sweep' runs the paper's cifar10 config files unchanged: use "
      "dataset='cifar10' and width 1 (or runner='inline')"
    )
  from resnet_jax import sweep  # pylint: disable=g-import-not-at-top

  common = {
    "num_train_steps": settings["steps"],
    "lr_boundaries": tuple(settings["lr_boundaries"]),
    "eval_every_steps": max(1, settings["steps"] // settings["evals"]),
    "checkpoint_every_steps": max(1, settings["steps"] // settings["evals"]),
    "global_batch_size": settings["batch_size"],
  }
  members_py = [{"config": f"configs/cifar10_{m}.py", "seed": s} for m, s in members]
  text = (
    '"""Generated by resnet_jax.analysis.degradation."""\n\n'
    f"OVERRIDES = {common!r}\n\n\n"
    f"def get_sweep():\n  return {members_py!r}\n"
  )
  sweep_file = report.write_text(report.output_path(out, "degradation_sweep.py"), text)
  runs_dir = report.output_path(out, "runs")
  sweep.run_sweep(sweep_file, runs_dir, parallel=parallel)
  done = {}
  for (model, seed), m in zip(members, sweep.load_sweep(sweep_file)):
    workdir = report.output_path(runs_dir, m.name)
    from resnet_jax import runs  # pylint: disable=g-import-not-at-top

    config = runs.read_config(workdir)
    if not storage.location(report.output_path(workdir, PROVENANCE_FILE)).exists():
      _write_provenance(config, workdir, None)  # this machine; the sweep's processes timed none
    done[(model, seed)] = (config, workdir)
  return done


def run(
  out: str,
  *,
  dataset: str = "digits",
  recipe: str = "paper",
  depths: Sequence[int] = (20, 56),
  families: Sequence[str] = FAMILIES,
  seeds: Sequence[int] = (0, 1, 2),
  steps: int | None = None,
  width_multiplier: float | None = None,
  batch_size: int | None = None,
  evals: int = 4,
  conv_impl: str = "",
  runner: str = "inline",
  parallel: int = 1,
  report_only: bool = False,
) -> dict[str, Any]:
  """Trains every (family, depth, seed) run, writes ``degradation.json`` and the report from it
  into ``out``; ``report_only`` only rewrites the report from ``out/degradation.json``.
  Returns ``{'runs': [...], 'figure': path, 'table': path}``."""
  if report_only:
    return report_from_json(out)
  for f in families:
    if f not in FAMILIES:
      raise ValueError(f"family {f!r}: choose from {FAMILIES}")
  if runner not in ("inline", "sweep"):
    raise ValueError(f"runner must be 'inline' or 'sweep', got {runner!r}")
  if len(set(depths)) < 2:  # a member's own command (one net, one seed) is this too
    print(f"degradation: {_ONE_DEPTH.format(depths=','.join(map(str, depths)))}")
  settings = _settings(dataset, recipe, steps, width_multiplier, batch_size, evals, conv_impl)
  members = [(f"{f}{d}", s) for f in families for d in depths for s in seeds]
  if runner == "sweep":
    trained = _train_with_sweep(out, settings, members, parallel)
  elif parallel > 1 and len(members) > 1:
    trained = _train_parallel(out, settings, members, parallel)
  else:
    trained = _train_inline(out, settings, members)
  records = [_record(settings, m, s, *trained[(m, s)]) for m, s in members]
  result = {"settings": settings, "runs": records}
  report.write_json(report.output_path(out, RESULT_FILE), result)
  return {**result, **report_result(out, result)}


def report_from_json(out: str) -> dict[str, Any]:
  """Figure and Markdown from ``out/degradation.json`` alone (no training, no checkpoints)."""
  path = storage.location(report.output_path(out, RESULT_FILE))
  if not path.exists():
    raise FileNotFoundError(f"{path}: run the degradation analysis first (no --report_only)")
  result = json.loads(path.read_text())
  return {**result, **report_result(out, result)}


def report_result(out: str, result: dict[str, Any]) -> dict[str, str]:
  """Writes ``degradation.png`` and ``degradation.md`` from the json's content."""
  figure = report.save_figure(_figure(result), report.output_path(out, "degradation.png"))
  table = report.write_text(report.output_path(out, "degradation.md"), markdown(result))
  return {"figure": figure, "table": table}


# --- the report --------------------------------------------------------------------------------


def summarize(runs_: Sequence[dict]) -> list[dict[str, Any]]:
  """Per net (family, depth): seeds, and mean/min/max of the final train and test errors."""
  nets = sorted({(r["family"], r["depth"]) for r in runs_})
  rows = []
  for fam, depth in nets:
    mine = [r for r in runs_ if r["family"] == fam and r["depth"] == depth]
    row = {"model": mine[0]["model"], "family": fam, "depth": depth}
    row["seeds"] = [r["seed"] for r in mine]
    for k in ("final_train_error", "final_test_error"):
      v = np.array([r[k] for r in mine if r[k] is not None], float)
      row[k] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    rows.append(row)
  return rows


def conditions(runs_: Sequence[dict]) -> list[tuple[str, bool | None]]:
  """The paper's four degradation conditions at the shallowest and deepest depth run; ``None``
  where a net they need is missing."""
  depths = sorted({r["depth"] for r in runs_})
  lo, hi = depths[0], depths[-1]
  pick = lambda fam, d, k: [r[k] for r in runs_ if r["family"] == fam and r["depth"] == d]
  tr, te = "final_train_error", "final_test_error"
  p_lo, p_hi, r_lo, r_hi = (
    pick(f, d, tr) for f, d in (("plain", lo), ("plain", hi), ("resnet", lo), ("resnet", hi))
  )
  checks = [
    (p_hi and p_lo, lambda: min(p_hi) > max(p_lo)),
    (r_hi and p_hi, lambda: max(r_hi) < min(p_hi)),
    (r_hi and r_lo, lambda: np.mean(r_hi) <= np.mean(r_lo)),
    (
      pick("resnet", hi, te) and pick("plain", hi, te),
      lambda: np.mean(pick("resnet", hi, te)) < np.mean(pick("plain", hi, te)),
    ),
  ]
  texts = [c.replace("deep", str(hi)).replace("shallow", str(lo)) for c in CONDITIONS]
  return [(t, bool(f()) if have and lo != hi else None) for t, (have, f) in zip(texts, checks)]


def _band(curves: Sequence[Sequence[Sequence[float]]]):
  """``(steps, mean, min, max)`` over the runs' curves, at the steps every run logged."""
  common = sorted(set.intersection(*[{int(s) for s, _ in c} for c in curves]))
  vals = np.array([[dict((int(s), e) for s, e in c)[s] for s in common] for c in curves])
  return np.array(common), vals.mean(0), vals.min(0), vals.max(0)


def _plot_family(ax, fam, runs_, color):
  for depth in sorted({r["depth"] for r in runs_ if r["family"] == fam}):
    mine = [r for r in runs_ if r["family"] == fam and r["depth"] == depth]
    for key, style, lw in (("train_error", "--", 1.2), ("test_error", "-", 2.0)):
      curves = [r[key] for r in mine if r[key]]
      if not curves:
        continue
      steps, mean, lo, hi = _band(curves)
      label = f"{fam}-{depth}" if key == "test_error" else None
      ax.plot(steps, 100 * mean, style, color=color[depth], lw=lw, label=label)
      ax.fill_between(steps, 100 * lo, 100 * hi, color=color[depth], alpha=0.15, lw=0)
  ax.set_title(f"{'Plain' if fam == 'plain' else 'ResNet'} ({len(mine)} seeds per net)")
  ax.set_xlabel("iteration")
  ax.set_ylabel("error (%)")
  ax.grid(alpha=0.3)
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

  handles, labels = ax.get_legend_handles_labels()
  handles += [Line2D([], [], color="gray", ls="--"), Line2D([], [], color="gray", ls="-")]
  labels += ["training error (dashed)", "test error (solid)"]
  ax.legend(handles, labels, fontsize=8)


def _figure(result: dict[str, Any]):
  plt = report.pyplot()
  runs_ = result["runs"]
  fams = [f for f in FAMILIES if any(r["family"] == f for r in runs_)]
  fig, axes = plt.subplots(1, len(fams), figsize=(6 * len(fams), 4.5), sharey=True, squeeze=False)
  depths = sorted({r["depth"] for r in runs_})
  palette = ["tab:orange", "tab:red", "tab:purple", "tab:blue", "tab:green", "tab:brown"]
  color = {d: palette[i % len(palette)] for i, d in enumerate(depths)}
  for ax, fam in zip(axes[0], fams):
    _plot_family(ax, fam, runs_, color)
  s = result.get("settings", {})
  fig.suptitle(
    f"{s.get('dataset', '')}, {s.get('recipe', '')} recipe, width x{s.get('width', 1):g}: "
    "mean over seeds (line), min-max (band)"
  )
  return fig


def _range(d: dict[str, float]) -> str:
  return f"{100 * d['mean']:.2f} ({100 * d['min']:.2f}-{100 * d['max']:.2f})"


_ONE_DEPTH = (
  "one depth ({depths}): the paper's conditions compare a shallower net with a deeper one, so "
  "they are not checked; give two depths or more to check them, e.g. --depths=20,56"
)


def markdown(result: dict[str, Any]) -> str:
  """The report's Markdown: recipe, final errors per net, every run, the four conditions."""
  s, runs_ = result.get("settings", {}), result["runs"]
  steps = sorted({r["steps"] for r in runs_})
  head = (
    f"Degradation on {s.get('dataset', '?')}: recipe {s.get('recipe', '?')}, "
    f"{', '.join(map(str, steps))} iterations, batch {s.get('batch_size', '?')}, "
    f"width x{s.get('width', 1):g}, lr {s.get('learning_rate', '?')} /10 at "
    f"{s.get('lr_boundaries', '?')}, momentum {s.get('momentum', '?')}, weight decay "
    f"{s.get('weight_decay', '?')}, augmentation {s.get('train_augment', '?')}.\n\n"
    "Final errors in %, mean over seeds (min-max). Training error: the whole training split, "
    "inference mode, final checkpoint. Test error: the whole test split.\n\n"
  )
  nets = report.markdown_table(
    ["net", "seeds", "train error", "test error"],
    [
      [r["model"], len(r["seeds"]), _range(r["final_train_error"]), _range(r["final_test_error"])]
      for r in summarize(runs_)
    ],
  )
  each = report.markdown_table(
    ["net", "seed", "train error", "test error"],
    [
      [r["model"], r["seed"], report.pct(r["final_train_error"]), report.pct(r["final_test_error"])]
      for r in sorted(runs_, key=lambda r: (r["family"], r["depth"], r["seed"]))
    ],
  )
  mark = {True: "holds", False: "FAILS", None: "not run"}
  conds = "".join(f"- {text}: **{mark[ok]}**\n" for text, ok in conditions(runs_))
  depths = sorted({r["depth"] for r in runs_})
  if len(depths) < 2:
    conds = _ONE_DEPTH.format(depths=",".join(map(str, depths))) + "\n"
  return head + nets + "\nEvery run:\n\n" + each + "\nThe paper's conditions:\n\n" + conds
