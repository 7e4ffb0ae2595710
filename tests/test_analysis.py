"""resnet_jax.analysis: statistics checked against independent computations on tiny nets, and every
command end to end at tiny scale (a few steps, width x0.25) producing its PNG and table."""

import functools
import json
import os
import shlex
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import analysis as A
from resnet_jax import models
from resnet_jax import runs as resnet_runs
from resnet_jax.analysis import degradation, gradient_flow, layer_responses, shortcuts
from resnet_jax.commands.analyze import analyze_command
from resnet_jax.checkpoint import CheckpointError
from resnet_jax.models import blocks

pytestmark = pytest.mark.e2e

NUM_CLASSES = 10


@functools.cache  # each net initialised (two compiles) once for the file
def _tiny(name):
  # 8-layer CIFAR nets (one block per stage) at 2-4-8 channels on 8x8 single-channel images.
  model = models.get_model(
    name, num_classes=NUM_CLASSES, width_multiplier=0.125, stage_sizes=(1, 1, 1)
  )
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  v = jax.jit(lambda rng, x: model.init(rng, x, train=False))(jax.random.key(0), x)
  # Non-trivial BN statistics, as after training.
  _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  return model, {"params": v["params"], "batch_stats": upd["batch_stats"]}, x


def _captured(model, v, x, train):
  """Every module's output (``capture_intermediates``), in one compiled program: run op by op, each
  operation of the net is compiled on its own (seconds in all)."""

  def apply(v, x):
    mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
    _, inter = model.apply(v, x, train=train, capture_intermediates=True, mutable=mutable)
    return inter["intermediates"]

  return jax.device_get(jax.jit(apply)(v, x))


def _norm(tree):
  """The L2 norm over every leaf, in float64 numpy: independent of optax, and not op by op."""
  leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in leaves)))


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_response_std_equals_independent_capture(name):
  model, v, x = _tiny(name)
  layers = layer_responses.three_by_three_bns(v["params"])
  # 3x3 layers: the stem and two per block (3 blocks) = 7 = depth - 1 (the head is not 3x3).
  assert len(layers) == 7
  assert layers[0] == ("stem_bn",) and layers[1] == ("stage1_block0", "bn1")
  assert layers[-1] == ("stage3_block0", "bn2")
  stds = dict(layer_responses.response_stds(model, v, x))
  # Independent: capture every module's output, pick the BN after stage2_block0/conv2.
  inter = _captured(model, v, x, train=False)
  bn = np.asarray(inter["stage2_block0"]["bn2"]["__call__"][0], np.float64)
  np.testing.assert_allclose(stds["stage2_block0/bn2"], np.std(bn), rtol=1e-6)
  # ... and from first principles: BN(conv(...)) in inference mode.
  blk_in = np.asarray(inter["stage2_block0"]["conv2"]["__call__"][0], np.float64)
  p = jax.device_get(v["params"]["stage2_block0"]["bn2"])
  s = jax.device_get(v["batch_stats"]["stage2_block0"]["bn2"])
  manual = (blk_in - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]
  np.testing.assert_allclose(stds["stage2_block0/bn2"], np.std(manual), rtol=1e-4)


def test_bottleneck_picks_only_3x3_bn():
  model = models.get_model("resnet50", num_classes=10, width_multiplier=1 / 16)
  params = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3))), jax.random.key(0))[
    "params"
  ]
  layers = layer_responses.three_by_three_bns(params)
  assert len(layers) == 16 and all(l[-1] == "bn2" for l in layers)  # 7x7 stem is not 3x3


def _rest_of_net(model, params, stats, x, start: int):
  """Hand-built: blocks ``start..`` of a CIFAR ResNet-20 applied one by one, pool, head."""
  names = gradient_flow.block_names(params)
  for name in names[start:]:
    i, j = (int(g) for g in gradient_flow._BLOCK.match(name).groups())
    planes = max(1, int(round(model.stage_widths[i - 1] * model.width_multiplier)))
    blk = blocks.BasicBlock(
      planes=planes, stride=2 if (i > 1 and j == 0) else 1, shortcut=model.shortcut
    )
    x, _ = blk.apply(
      {"params": params[name], "batch_stats": stats[name]}, x, train=True, mutable=["batch_stats"]
    )
  x = jnp.mean(x, axis=(1, 2))
  return x @ params["head"]["kernel"] + params["head"]["bias"]


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_gradient_norms_equal_hand_built_loss(name):
  model, v, x = _tiny(name)
  labels = jnp.arange(x.shape[0]) % NUM_CLASSES
  g = gradient_flow.gradient_norms(model, v, x, labels, NUM_CLASSES)
  assert len(g["blocks"]) == 3

  def xent(logits):
    return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, NUM_CLASSES)).mean()

  # Parameters: jax.grad of the plain training loss.
  def loss_p(params):
    logits, _ = model.apply(
      {"params": params, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
    )
    return xent(logits)

  loss, gp = jax.jit(jax.value_and_grad(loss_p))(v["params"])
  for k, n in enumerate(g["blocks"]):
    np.testing.assert_allclose(g["param_grad_norm"][k], _norm(gp[n]), rtol=1e-4)
  np.testing.assert_allclose(g["loss"], float(loss), rtol=1e-5)

  # Block inputs: the block's input captured, the rest of the net rebuilt by hand, jax.grad.
  inter = _captured(model, v, x, train=True)
  block_ins = [np.maximum(inter["stem_bn"]["__call__"][0], 0)]  # the stem's ReLU
  block_ins += [inter[n]["__call__"][0] for n in g["blocks"][:-1]]

  # The three blocks' gradients in one compiled program.
  @jax.jit
  def input_grads(block_ins):
    rest = lambda z, k: xent(_rest_of_net(model, v["params"], v["batch_stats"], z, k))  # noqa: E731
    return [jax.grad(rest)(z, k) for k, z in enumerate(block_ins)]

  for k, gx in enumerate(input_grads(block_ins)):
    np.testing.assert_allclose(g["input_grad_norm"][k], _norm(gx), rtol=1e-4)


def test_cli_rejects_unknown_analysis(tmp_path):
  with pytest.raises(ValueError, match="unknown analysis"):
    analyze_command("nope", [f"--out={tmp_path}"])
  with pytest.raises(ValueError, match="--out is required"):
    analyze_command("degradation", [])
  with pytest.raises(ValueError, match="Did you mean: num_images"):  # one spelling
    analyze_command("layer_responses", [f"--out={tmp_path}", "--num-images=8"])


def test_recipe_scales_cifar_boundaries():
  c = A.recipe("resnet20", dataset="cifar10", steps=640)
  assert c.lr_boundaries == (320, 480) and c.num_train_steps == 640
  assert (c.train_split, c.eval_split) == ("train", "test")  # Table 6: all 50k, the test split
  c = A.recipe(
    "plain20", steps=10, width_multiplier=0.5, overrides={"model_overrides.shortcut": "B"}
  )
  assert c.model_overrides.width_multiplier == 0.5 and c.model_overrides.shortcut == "B"
  c = A.recipe("plain14", steps=10)
  assert c.model == "plain20" and tuple(c.model_overrides.stage_sizes) == (2, 2, 2)
  assert A.display_name(c) == "plain14" and A.depth_of(c) == 14 and A.is_plain(c)
  with pytest.raises(ValueError, match="6n\\+2"):
    A.recipe("resnet9")


def _assert_outputs(out, stem):
  assert os.path.getsize(os.path.join(out, f"{stem}.png")) > 1000
  text = open(os.path.join(out, f"{stem}.md")).read()
  assert text.count("|") > 10
  return text


def _check_runs_reads_back(workdir):
  """resnet_jax.runs reads a finished run back: config, DONE, checkpoints by step, and refuses a
  config of another architecture."""
  assert resnet_runs.is_run(workdir) and resnet_runs.is_done(workdir)
  assert resnet_runs.final_metrics(workdir)["step"] == 4
  assert resnet_runs.latest_step(workdir) == 4
  run = resnet_runs.load(workdir)
  assert run.step == 4 and not run.is_converted
  assert (
    run.config.model == "resnet20" and tuple(run.config.model_overrides.stage_sizes) == (1,) * 3
  )
  assert A.display_name(run.config) == "resnet8" and run.model.num_classes == 10
  assert resnet_runs.load(workdir, step=2).step == 2
  with pytest.raises(CheckpointError, match="no checkpoint at step 3"):
    resnet_runs.load(workdir, step=3)
  other = resnet_runs.read_config(workdir)
  other.model_overrides.shortcut = "C"
  with pytest.raises(resnet_runs.RunError, match="another architecture"):
    resnet_runs.load(workdir, config=other)


def _check_degradation_json(out, models_seeds):
  result = json.load(open(os.path.join(out, "degradation.json")))
  got = result["runs"]
  assert [(r["model"], r["seed"]) for r in got] == models_seeds
  for r in got:
    assert r["steps"] == 4 and r["command"].startswith("resnet-jax analyze degradation ")
    assert 0.0 <= r["final_train_error"] <= 1.0 and 0.0 <= r["final_test_error"] <= 1.0
    assert [s for s, _ in r["train_error"]] == [1, 2, 3, 4]  # training-mode, every log window
    assert [s for s, _ in r["test_error"]] == [2, 4] and r["test_error"][-1][1] == r[
      "final_test_error"
    ]
    # Provenance per run: where, with what and how long it was trained.
    assert r["conv_impl"] in ("xla", "onednn") and r["wall_time_s"] > 0
    prov = r["provenance"]
    for key in ("commit", "platform", "cpu_model", "device_count", "process_count"):
      assert key in prov, key
    assert prov["device_count"] >= 1 and prov["process_count"] == 1
    packages = ("resnet-jax", "jax", "jaxlib", "flax", "optax", "tensorflow-datasets")
    assert all(prov["versions"][p] for p in packages), prov["versions"]
    tensorflow = prov["versions"].get("tensorflow-cpu") or prov["versions"].get("tensorflow")
    assert tensorflow, prov["versions"]  # the installed wheel is tensorflow-cpu
  return result


def test_commands_end_to_end(tmp_path, capsys):
  out = str(tmp_path)
  tiny = ["--steps=4", "--width=0.25", "--batch_size=32", "--evals=2"]
  deg = os.path.join(out, "deg")
  # resnet8 first, alone (one run trains in this process): the whole command then finds it done and
  # skips it, and trains plain8 the --parallel way (default 2: each run the command of its own, in a
  # child process on its share of the CPUs), one process start instead of two.
  analyze_command(
    "degradation", [f"--out={deg}", "--depths=8", "--families=resnet", "--seeds=1", *tiny]
  )
  capsys.readouterr()
  # One seed: the report's statistics over seeds are held by the committed 3-seed report's test.
  res = analyze_command("degradation", [f"--out={deg}", "--depths=8", "--seeds=1", *tiny])
  printed = capsys.readouterr().out
  assert "plain8_seed1 started on CPUs" in printed and "resnet8_seed1 started" not in printed
  text = _assert_outputs(deg, "degradation")
  assert "| plain8 | 1 |" in text and "| resnet8 | 1 |" in text  # one seed each
  members = [("plain8", 1), ("resnet8", 1)]
  result = _check_degradation_json(deg, members)
  assert len(res["runs"]) == 2
  # The final training error is the whole training split (4,000 digits) in inference mode.
  cached = json.load(open(os.path.join(deg, "runs", "resnet8_seed1", "final_train_error.json")))
  assert (
    cached["split"] == "train" and cached["top1_error"] == result["runs"][1]["final_train_error"]
  )

  # A member's command re-runs it alone into another --out and writes the same json shape there:
  # plain8's, trained in the child process, re-run here.
  member = result["runs"][0]
  args = shlex.split(member["command"])[3:]
  assert args[-1] == "--out=DIR"
  alone = os.path.join(out, "alone")
  analyze_command("degradation", [*args[:-1], f"--out={alone}"])
  (again,) = _check_degradation_json(alone, [("plain8", 1)])["runs"]
  assert again["command"] == member["command"]
  assert again["final_train_error"] == pytest.approx(member["final_train_error"], abs=0.01)

  # --report_only: the figure and Markdown from the json alone (no runs, no checkpoints).
  shutil.move(os.path.join(deg, "runs"), os.path.join(out, "runs_elsewhere"))
  os.remove(os.path.join(deg, "degradation.md"))
  analyze_command("degradation", [f"--out={deg}", "--report_only"])
  assert _assert_outputs(deg, "degradation") == text
  shutil.move(os.path.join(out, "runs_elsewhere"), os.path.join(deg, "runs"))

  # shortcuts trains after an in-process training and evaluation: where a step with 2-thread oneDNN
  # calls stalled in 6 of 12 runs (docs/DEVELOPING.md, "The stall").
  res = analyze_command("shortcuts", [f"--out={out}/sc", "--model=resnet8", "--options=B", *tiny])
  _assert_outputs(f"{out}/sc", "shortcuts")
  (b,) = res["rows"]
  assert b["test_top1_error"] is not None and b["step"] == 4

  runs = os.path.join(deg, "runs")
  _check_runs_reads_back(os.path.join(runs, "resnet8_seed1"))
  res = analyze_command("layer_responses", [f"--out={out}/lr", f"--runs={runs}", "--num_images=16"])
  lr_text = _assert_outputs(f"{out}/lr", "layer_responses")
  assert [len(r["std"]) for r in res["results"]] == [7, 7]
  assert [(r["model"], r["seed"]) for r in res["results"]] == members
  assert "| plain8 (x0.25) | 1 |" in lr_text  # one row per net, its seeds together

  two = f"{runs}/plain8_seed1,{runs}/resnet8_seed1"
  res = analyze_command("gradient_flow", [f"--out={out}/gf", f"--workdirs={two}", "--num_images=8"])
  _assert_outputs(f"{out}/gf", "gradient_flow")
  assert sorted(r["when"] for r in res["results"]) == ["init", "init", "trained", "trained"]

  res = analyze_command(
    "test_time", [f"--out={out}/tt", f"--workdirs={runs}/resnet8_seed1", "--scales=28,32"]
  )
  _assert_outputs(f"{out}/tt", "test_time")
  assert [r["method"] for r in res["rows"]] == ["center", "ten_crop", "full_conv"]
  assert all(r["count"] == 1000 for r in res["rows"])
  assert res["rows"][2]["scales"] == [28, 32]


def test_shortcut_parameter_counts():
  # Table 3's point about parameters: A adds none, B adds 1x1 projections where the shape changes
  # (2 of them in a 3-stage net), C adds one per block.
  counts = {
    o: shortcuts.param_count(
      A.recipe("resnet8", width_multiplier=0.25, overrides={"model_overrides.shortcut": o})
    )
    for o in ("none", "A", "B", "C")
  }
  assert counts["none"] == counts["A"] < counts["B"] < counts["C"]
  # B: 1x1 convs 4->8 and 8->16 plus their BNs (scale, bias).
  assert counts["B"] - counts["A"] == (4 * 8 + 2 * 8) + (8 * 16 + 2 * 16)


def test_committed_degradation_report_regenerates_from_its_json():
  """docs/figures/degradation.md is what the report makes of docs/figures/degradation.json."""
  figures = os.path.join(os.path.dirname(__file__), "..", "docs", "figures")
  result = json.load(open(os.path.join(figures, "degradation.json")))
  assert open(os.path.join(figures, "degradation.md")).read() == degradation.markdown(result)
  # The committed reproduction: every net at the paper's widths on the command's 3 seeds, all from
  # one commit.
  assert sorted((r["model"], r["seed"]) for r in result["runs"]) == [
    (m, s) for m in ("plain20", "plain56", "resnet20", "resnet56") for s in (0, 1, 2)
  ]
  assert {r["steps"] for r in result["runs"]} == {1000}
  assert len({r["provenance"]["commit"] for r in result["runs"]}) == 1


def test_degradation_conditions():
  def run(model, seed, train, test):
    fam = "plain" if model.startswith("plain") else "resnet"
    depth = int(model[len(fam) :])
    return {
      "model": model,
      "family": fam,
      "depth": depth,
      "seed": seed,
      "final_train_error": train,
      "final_test_error": test,
    }

  runs_ = [
    run("plain20", 0, 0.03, 0.04),
    run("plain56", 0, 0.4, 0.4),
    run("resnet20", 0, 0.03, 0.04),
    run("resnet56", 0, 0.02, 0.03),
  ]
  assert [ok for _, ok in degradation.conditions(runs_)] == [True, True, True, True]
  runs_[3] = run("resnet56", 0, 0.5, 0.5)  # a residual-56 worse than plain-56 and resnet-20
  assert [ok for _, ok in degradation.conditions(runs_)] == [True, False, False, False]


def test_ten_crop_follows_the_datasets_training():
  """Digits train without flips, shifted by a 2-pixel pad: their ten views are the five crops of
  the padded image, unmirrored; a flipped dataset keeps the paper's mirrored views."""
  from resnet_jax.data import augment

  image = np.random.default_rng(0).integers(0, 255, (28, 28, 1)).astype(np.uint8)
  kw = dict(image_size=28, resize_size=None, mean=[0.0], std=[1.0], channels=1)
  views = augment.eval_transform("ten_crop", train_augment="digits", **kw)(image).numpy()
  assert views.shape == (10, 28, 28, 1)
  np.testing.assert_array_equal(views[5:], views[:5])  # no mirrored views
  np.testing.assert_array_equal(views[4], image)  # the centre crop of the padded image
  np.testing.assert_array_equal(views[0][2:, 2:], image[:-2, :-2])  # a corner: shifted by 2
  flipped = augment.eval_transform("ten_crop", train_augment="cifar", **kw)(image).numpy()
  np.testing.assert_array_equal(flipped[5:], flipped[:5, :, ::-1])
