"""Why residual nets train (issue 36): gradient flow at initialisation, lesions, the loss landscape.
Each core computation on a tiny net against an independent one; each command once, tiny."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import models
from resnet_jax.analysis import inputs, landscape, lesions, recipes
from resnet_jax.commands.analyze import analyze_command
from conftest import run_python

NUM_CLASSES = 10
OLD_RUN = os.path.join(os.path.dirname(__file__), "data", "run_before_ema")


@functools.cache  # each net compiled once for the file
def _tiny(name, stage_sizes=(2, 2, 2)):
  """A CIFAR net at 2-4-8 channels on 8x8 single-channel images, with non-trivial BN statistics."""
  model = models.get_model(
    name, num_classes=NUM_CLASSES, width_multiplier=0.125, stage_sizes=stage_sizes
  )
  x = jax.random.normal(jax.random.key(1), (12, 8, 8, 1))
  v = jax.jit(lambda rng, x: model.init(rng, x, train=False))(jax.random.key(0), x)
  _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  return model, {"params": v["params"], "batch_stats": upd["batch_stats"]}, x


def _xent(logits, labels):
  return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, NUM_CLASSES)).mean()


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_lesions_against_the_model_and_a_shallower_twin(name):
  model, v, x = _tiny(name)
  labels = np.arange(len(x)) % NUM_CLASSES
  names = lesions.deletable_blocks(model, v, x.shape[1:])
  # The first block of stages 2 and 3 downsamples and is kept.
  assert names == ["stage1_block0", "stage1_block1", "stage2_block1", "stage3_block1"]
  result = lesions.lesion_errors(model, v, np.asarray(x), labels, draws=2)
  # Deleting no block: the model's own error.
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  own = np.mean(np.argmax(apply(v, x), -1) != labels)
  assert result["error"] == pytest.approx(own)
  assert len(result["single"]) == 4 and [len(r["error"]) for r in result["random"]] == [2, 2, 2, 1]
  # Deleting the second block of every stage: the (1, 1, 1) net with the remaining parameters.
  deleted = np.isin(names, ["stage1_block1", "stage2_block1", "stage3_block1"])
  lesioned = lesions.logits_function(model, names)(v, x, jnp.asarray(deleted))
  short = models.get_model(
    name, num_classes=NUM_CLASSES, width_multiplier=0.125, stage_sizes=(1, 1, 1)
  )
  keep = {c: {k: t for k, t in v[c].items() if not k.endswith("_block1")} for c in v}
  short_logits = jax.jit(lambda v, x: short.apply(v, x, train=False))(keep, x)
  np.testing.assert_allclose(lesioned, short_logits, rtol=1e-5, atol=1e-6)
  if name == "resnet20":  # post-activation: the block without its branch is relu(x) = x
    one = np.asarray(names) == "stage2_block1"
    params = jax.tree_util.tree_map(lambda a: a, v["params"])
    bn2 = params["stage2_block1"]["bn2"]
    params["stage2_block1"] = {
      **params["stage2_block1"],
      "bn2": {"scale": jnp.zeros_like(bn2["scale"]), "bias": jnp.zeros_like(bn2["bias"])},
    }
    np.testing.assert_allclose(
      lesions.logits_function(model, names)(v, x, jnp.asarray(one)),
      apply({"params": params, "batch_stats": v["batch_stats"]}, x),
      rtol=1e-5,
      atol=1e-6,
    )


def test_filter_normalised_direction_has_the_weights_filter_norms():
  _, v, _ = _tiny("plain20", stage_sizes=(1, 1, 1))
  params = v["params"]
  d1, d2 = landscape.directions(params, seed=3)
  flat_w = jax.tree_util.tree_leaves_with_path(params)
  flat_d = jax.tree_util.tree_leaves(d1)
  kernels = 0
  for (path, w), d in zip(flat_w, flat_d):
    assert d.shape == w.shape, path
    if w.ndim == 1:  # BN scale/bias, head bias: zero in the direction
      assert not np.any(np.asarray(d)), path
      continue
    kernels += 1
    w2 = np.asarray(w).reshape(-1, w.shape[-1])
    d2d = np.asarray(d).reshape(-1, d.shape[-1])
    for j in range(w.shape[-1]):  # each output filter, by hand
      assert np.linalg.norm(d2d[:, j]) == pytest.approx(np.linalg.norm(w2[:, j]), rel=1e-5)
  assert kernels == 8  # stem, two per block, head
  stem = ("stem_conv", "kernel")
  assert not np.allclose(d2[stem[0]][stem[1]], d1[stem[0]][stem[1]])


def test_landscape_at_the_origin_is_the_models_loss_and_resumes(tmp_path):
  model, v, x = _tiny("plain20", stage_sizes=(1, 1, 1))
  labels = np.arange(len(x)) % NUM_CLASSES
  path = os.fspath(tmp_path / "points.json")
  kw = dict(grid=3, span=0.5, slice_points=3, chunk=4, direction_seed=1, points_path=path)
  r = landscape.landscape(model, v, x, labels, **kw)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  own = float(_xent(apply(v, x), labels))
  assert r["loss_at_origin"] == pytest.approx(own, rel=1e-5)
  assert r["loss_2d"][1][1] == pytest.approx(own, rel=1e-5)  # grid centre
  assert r["loss_1d"][1] == pytest.approx(own, rel=1e-5)
  # One corner by hand: (a, b) = (0.5, -0.5) is row b=0, column a=2.
  d1, d2 = landscape.directions(v["params"], 1)
  moved = jax.tree_util.tree_map(lambda w, p, q: w + 0.5 * p - 0.5 * q, v["params"], d1, d2)
  by_hand = _xent(apply({**v, "params": moved}, x), labels)
  assert r["loss_2d"][0][2] == pytest.approx(float(by_hand), rel=1e-5)
  assert r["computed"] == 13 and r["loss_2d"][0][2] != pytest.approx(own)
  # Resumable: a rerun computes nothing; a lost point is computed again, to the same value.
  assert landscape.landscape(model, v, x, labels, **kw)["computed"] == 0
  saved = json.load(open(path))
  saved["loss"][2] = None
  json.dump(saved, open(path, "w"))
  again = landscape.landscape(model, v, x, labels, **kw)
  assert again["computed"] == 1 and again["loss_2d"] == r["loss_2d"]
  assert landscape.local_minima([[3, 2, 3], [2, 1, 2], [3, 2, 3]]) == 1
  assert landscape.local_minima([2, 1, 2, 0, 2]) == 2


def _assert_written(out, stem):
  assert os.path.getsize(os.path.join(out, f"{stem}.png")) > 1000
  assert open(os.path.join(out, f"{stem}.md")).read().count("|") > 10
  record = json.load(open(os.path.join(out, f"{stem}.json")))
  prov = record["provenance"]
  assert prov["device_count"] >= 1 and prov["versions"]["jax"] == jax.__version__
  assert {"commit", "platform", "cpu_model", "backend"} <= set(prov)
  return record


def test_gradient_flow_sweep_equals_a_direct_jax_grad(tmp_path):
  out = os.fspath(tmp_path / "gf")
  res = analyze_command(
    "gradient_flow",
    [f"--out={out}", "--depths=8", "--seeds=0,1", "--families=resnet", "--num_images=8"]
    + ["--width=0.25"],
  )
  record = _assert_written(out, "gradient_flow")
  sweep = res["sweep"]
  assert [(r["model"], r["seed"]) for r in sweep] == [("resnet8", 0), ("resnet8", 1)]
  assert len(record["init_sweep"]["rows"]) == 2 and record["runs"] == []
  assert sweep[0]["layer_grad_norm"] != sweep[1]["layer_grad_norm"]  # seeds differ
  # resnet8 seed 1 by hand: the recipe's net, its initialisation, the batch, jax.grad.
  row = sweep[1]
  config = recipes.recipe("resnet8", width_multiplier=0.25, seed=1, name="paper")
  model, info = recipes.build_model(config)
  v = inputs.init_variables(model, config, recipes.image_shape_of(config, info))
  images, labels = inputs.image_batch(config, split="train", size=8)

  def loss(params):
    logits, _ = model.apply(
      {"params": params, "batch_stats": v["batch_stats"]},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    return _xent(logits, labels)

  g = jax.jit(jax.grad(loss))(v["params"])
  assert row["layers"] == [
    "stem",
    *(f"stage{i}_block0/{k}" for i in (1, 2, 3) for k in (1, 2)),
    "head",
  ]
  by_hand = [optax.global_norm({k: g[k] for k in ("stem_conv", "stem_bn")})]
  for i in (1, 2, 3):
    for k in (1, 2):
      block = g[f"stage{i}_block0"]
      by_hand.append(optax.global_norm({"c": block[f"conv{k}"], "b": block[f"bn{k}"]}))
  by_hand.append(optax.global_norm(g["head"]))
  np.testing.assert_allclose(row["layer_grad_norm"], np.asarray(by_hand), rtol=1e-4)
  assert row["layer_ratio"] == pytest.approx(float(by_hand[0] / by_hand[-2]), rel=1e-4)


def test_lesions_and_landscape_commands(tmp_path):
  out = os.fspath(tmp_path)
  res = analyze_command("lesions", [f"--out={out}/les", f"--workdirs={OLD_RUN}", "--draws=2"])
  record = _assert_written(f"{out}/les", "lesions")
  (row,) = res["rows"]
  # resnet8 at 4-8-8: only stage1_block0 keeps its shape; the others downsample.
  assert row["deletable"] == ["stage1_block0"] and row["num_images"] == 1000
  assert record["runs"][0]["error"] == row["error"] and len(row["single"]) == 1

  args = [f"--out={out}/ls", f"--workdirs={OLD_RUN}", "--grid=3", "--slice_points=3"]
  args += ["--num_images=16", "--chunk=7"]
  (first,) = analyze_command("landscape", args)["rows"]
  assert first["computed"] == 13
  _assert_written(f"{out}/ls", "landscape")
  (again,) = analyze_command("landscape", args)["rows"]
  assert again["computed"] == 0 and again["loss_2d"] == first["loss_2d"]


def test_lesions_and_landscape_spread_over_two_devices_give_the_one_device_numbers():
  # On a CPU split into one device per core the evaluations are data parallel
  # (inputs.across_devices): the same errors and losses as one device's plain forward pass.
  # TensorFlow (which the analyses' modules load) the front door's way: without Keras, seconds of
  # this process; and no collection at exit, as main spares it.
  code = """
from resnet_jax import runtime
runtime.setup()
runtime.import_tensorflow()
import jax, numpy as np, optax, sys
sys.path.insert(0, "tests")
from test_why import _tiny, NUM_CLASSES
from resnet_jax.analysis import inputs, landscape, lesions
assert jax.local_device_count() == 2
model, v, x = _tiny("resnet20", stage_sizes=(1, 1, 1))
labels = np.arange(len(x)) % NUM_CLASSES
(xs,), _ = inputs.across_devices([np.asarray(x)], [])
assert len(xs.sharding.device_set) == 2
one = jax.devices()[0]
logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(jax.device_put(v, one), jax.device_put(x, one))
own_error = float(np.mean(np.argmax(logits, -1) != labels))
own_loss = float(optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, NUM_CLASSES)).mean())
error = lesions.lesion_errors(model, v, np.asarray(x), labels, draws=1)["error"]
assert abs(error - own_error) < 1e-6, (error, own_error)
r = landscape.landscape(model, v, np.asarray(x), labels, grid=3, span=0.5, slice_points=3, chunk=4)
assert abs(r["loss_at_origin"] - own_loss) <= 1e-5 * own_loss, (r["loss_at_origin"], own_loss)
print("ok", flush=True)
runtime.spare_the_final_collection()
"""
  proc = run_python(code, devices=2, timeout=240)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
