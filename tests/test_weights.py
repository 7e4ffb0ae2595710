"""torchvision/timm -> Flax weight import: logits parity, clear errors, convert + fine-tune from it.

No download, and neither torchvision nor timm (they do not load beside this torch): the reference is
the checkout's independent PyTorch ResNet, ``benchmarks/torch_reference.py``, which has
torchvision's and timm's state-dict keys (for the reason given there), built with random weights
and non-trivial BN running statistics.  Logits are compared for one net per distinct code path
(basic, bottleneck, grouped, wide; timm's plain layout, deep stem with average-pool shortcut on
basic and bottleneck blocks, SE), most with fewer blocks per stage -- the same ``stage_sizes`` on
both sides -- to keep this file fast on one CPU core; every supported name's full-depth key/shape
table is still checked exactly, on torch's ``meta`` device (shapes without memory).
"""

import argparse
import collections
import io
import os
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, command_env  # noqa: E402

from resnet_jax import models, runs, weights  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # the PyTorch reference lives there
import torch_reference  # noqa: E402

torch.set_num_threads(1)

# Numeric parity, one net per block code path (name, blocks per stage or None for full depth; the
# same stage_sizes on both sides). The other names run the same code at another depth or width --
# resnet34: resnet18's basic blocks; resnet152: resnet50's and resnet101's bottlenecks;
# resnext101_32x8d/_64x4d: resnext50_32x4d's grouped convs (groups and width per group are
# arguments of the same module); wide_resnet101_2: wide_resnet50_2's -- and their full-depth
# key/shape tables are checked exactly below. resnet101 keeps 11 stage-3 blocks so two-digit block
# indices (layer3.10) are checked numerically too.
PARITY = (
  ("resnet18", None),
  ("resnet50", (2, 1, 1, 1)),
  ("resnet101", (1, 1, 11, 1)),
  ("resnext50_32x4d", (1, 1, 2, 1)),
  ("wide_resnet50_2", (1, 1, 2, 1)),
)


@pytest.fixture(scope="module", autouse=True)
def _expected_tree_once_per_model():
  """``weights.expected_tree`` traced once per (model, overrides) in this module: the torchvision
  and timm tables of one name, and each import of the same net, read the same abstract tree (an
  ``eval_shape`` of the full-depth model each time otherwise). Restored after the module."""
  original = weights.expected_tree
  cache = {}

  def cached(model_name, num_classes=None, **model_overrides):
    key = (model_name, num_classes, tuple(sorted(model_overrides.items())))
    if key not in cache:
      cache[key] = original(model_name, num_classes, **model_overrides)
    return cache[key]

  weights.expected_tree = cached
  yield
  weights.expected_tree = original


def torch_model(name, stage_sizes=None, num_classes=1000, seed=0, device=None):
  """torchvision's ``name`` in the reference (``stage_sizes``: other blocks per stage)."""
  assert name in torch_reference.TORCHVISION, name
  return torch_reference.create(
    name, layers=stage_sizes, num_classes=num_classes, seed=seed, device=device
  )


def logit_gap(net, name, source, stage_sizes, x):
  """(max |our logits - the reference's|, max |reference logit|) on ``x`` (NCHW), eval mode, after
  importing ``net``'s state dict as ``source`` lays it out."""
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  overrides = {"stage_sizes": stage_sizes} if stage_sizes else {}
  params, batch_stats = weights.from_state_dict(net.state_dict(), name, source=source, **overrides)
  # lax.conv, as on accelerators: the import is under test here, while the CPU's oneDNN path
  # (conv_impl='auto' on this host) is held to lax.conv by test_onednn.py.
  model = models.get_model(name, conv_impl="xla", **overrides)
  got = jax.jit(lambda v, im: model.apply(v, im, train=False))(
    {"params": params, "batch_stats": batch_stats}, jnp.asarray(x.transpose(0, 2, 3, 1))
  )
  return float(np.max(np.abs(np.asarray(got) - want))), float(np.max(np.abs(want)))


def parity(name, stage_sizes=None):
  x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
  return logit_gap(torch_model(name, stage_sizes), name, "torchvision", stage_sizes, x)


@pytest.mark.parametrize("name,stage_sizes", PARITY)
def test_eval_logits_match_torchvision(name, stage_sizes):
  diff, scale = parity(name, stage_sizes)
  print(
    f"{name} stage_sizes={stage_sizes or torch_reference.TORCHVISION[name]['layers']}: "
    f"max|diff| {diff:.2e} "
    f"(max|logit| {scale:.2f})"
  )
  assert scale > 0.1  # the logits are not trivially small
  # float32 summation order differs between the two libraries (and with the host's threads): about
  # 17 units in the last place of the largest logit (full-depth resnet34, logits ~13, was at 1.2e-5).
  assert diff <= 2e-6 * scale


@pytest.mark.parametrize("name", weights.SUPPORTED)
def test_full_depth_key_and_shape_tables_match(name):
  """Every torchvision key of the full-depth net maps to our tree with the right shape, both ways."""
  sd = torch_model(name, device="meta").state_dict()
  mapped = {key: shape for key, _, shape, _ in weights.key_table(name, "torchvision").values()}
  ours = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  assert mapped == ours


def _tamper_error(sd, name="resnet18"):
  with pytest.raises(weights.WeightImportError) as e:
    weights.from_torchvision(sd, name)
  return str(e.value)


def test_tampered_state_dicts_give_one_clear_error(tmp_path):
  sd = torch_model("resnet18").state_dict()
  missing = dict(sd)
  del missing["layer2.0.downsample.1.running_var"]
  msg = _tamper_error(missing)
  assert "1 missing: layer2.0.downsample.1.running_var" in msg

  transposed = dict(sd)
  transposed["fc.weight"] = sd["fc.weight"].T.contiguous()
  transposed["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"].permute(2, 3, 1, 0)
  msg = _tamper_error(transposed)
  assert "2 of the wrong shape" in msg and "fc.weight (512, 1000)" in msg
  assert "layer1.0.conv1.weight (3, 3, 64, 64) != expected (64, 64, 3, 3) (transposed?)" in msg

  both = dict(missing, extra_head=sd["fc.bias"], **{"layer3.0.conv2.weight": sd["fc.weight"]})
  msg = _tamper_error(both)  # all three kinds in one message
  assert "missing" in msg and "1 unexpected: extra_head" in msg and "wrong shape" in msg

  # Wrong model for the weights: a resnet18 state dict is not a resnet34.
  msg = _tamper_error(sd, "resnet34")
  assert "80 missing: layer1.2.bn1.bias, " in msg and "(68 more)" in msg

  # convert: the same error through a .pth file, and nothing is written.
  pth = tmp_path / "tampered.pth"
  torch.save(transposed, pth)
  workdir = tmp_path / "out"
  with pytest.raises(weights.WeightImportError, match="transposed"):
    weights.convert_command("torchvision", "resnet18", str(pth), str(workdir))
  assert not workdir.exists()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A random torch resnet18 saved as .pth and converted into a workdir."""
  root = tmp_path_factory.mktemp("convert")
  net = torch_model("resnet18", seed=3)
  pth = root / "resnet18.pth"
  torch.save(net.state_dict(), pth)
  workdir = root / "weights"
  line = weights.convert_command("torchvision", "resnet18", str(pth), str(workdir))
  return net, pth, workdir, line


def test_convert_writes_a_weights_checkpoint_and_refuses_to_overwrite(converted):
  net, pth, workdir, line = converted
  assert "11,689,512 parameters" in line and "--config.init_from=" in line
  ckpt = runs.read_checkpoint(str(workdir))
  params, batch_stats, meta = ckpt.params, ckpt.batch_stats, ckpt.meta
  assert ckpt.step == 0
  assert {k: meta[k] for k in ("model", "source", "kind")} == {
    "model": "resnet18",
    "source": "torchvision",
    "kind": "weights",
  }
  sd = net.state_dict()
  np.testing.assert_array_equal(params["head"]["kernel"], sd["fc.weight"].numpy().T)
  np.testing.assert_array_equal(
    batch_stats["stage2_block0"]["shortcut_bn"]["var"],
    sd["layer2.0.downsample.1.running_var"].numpy(),
  )
  before = sorted(os.listdir(workdir / "checkpoints"))
  with pytest.raises(FileExistsError, match="already has checkpoints"):
    weights.convert_command("torchvision", "resnet18", str(pth), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_merge_keeps_a_fresh_head_and_lists_other_mismatches():
  src_params, src_stats = weights.from_torchvision(torch_model("resnet18").state_dict(), "resnet18")
  model = models.get_model("resnet18", num_classes=10)
  fresh = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 28, 28, 1)), train=False), jax.random.key(0)
  )
  fresh = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), fresh)
  params, stats, notes = runs.merge_into(
    fresh["params"], fresh["batch_stats"], src_params, src_stats
  )
  assert not np.any(params["head"]["kernel"])  # fresh head kept
  np.testing.assert_allclose(
    params["stem_conv"]["kernel"][:, :, 0], src_params["stem_conv"]["kernel"].sum(axis=2), rtol=1e-6
  )
  assert any("head re-initialised" in n for n in notes)
  assert any("summed over its 3 input channels" in n for n in notes)
  other = models.get_model("resnet34", num_classes=10)
  fresh34 = jax.eval_shape(
    lambda r: other.init(r, jnp.zeros((1, 28, 28, 3)), train=False), jax.random.key(0)
  )
  with pytest.raises(runs.RunError, match=r"80 missing: batch_stats/stage1_block2/bn1/mean"):
    runs.merge_into(fresh34["params"], fresh34["batch_stats"], src_params, src_stats)


def test_finetune_digits_from_converted_checkpoint(converted, tmp_path):
  from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top

  net, _, workdir, _ = converted
  spec = __import__("importlib.util").util.spec_from_file_location(
    "digits_finetune",
    os.path.join(os.path.dirname(__file__), "..", "configs", "digits_finetune.py"),
  )
  module = __import__("importlib.util").util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.init_from = str(workdir)
  config.num_train_steps = 3
  config.warmup_steps = 1
  # A token final eval (the digits run's own eval is not under test here): 5 batches of 20.
  config.global_batch_size = 20
  config.eval_split = "test[:100]"
  config.log_every_steps = 1
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.async_checkpoints = False
  result = loop.train_and_evaluate(config, str(tmp_path / "ft"))
  assert result["step"] == 3 and result["eval_count"] == 100
  assert np.isfinite(result["eval_loss"])
  # The fine-tuned run's params started from the converted ones: the body moved only a little.
  # (The converted checkpoint holds exactly these -- test_convert_writes_... -- so no 2nd restore.)
  src_params, _ = weights.from_torchvision(net.state_dict(), "resnet18")
  ft = runs.read_checkpoint(str(tmp_path / "ft"))
  ft_params, ft_meta = ft.params, ft.meta
  assert ft_meta["model"] == "resnet18"
  w0 = src_params["stage4_block1"]["conv2"]["kernel"]
  w1 = ft_params["stage4_block1"]["conv2"]["kernel"]
  assert np.max(np.abs(w1 - w0)) < 0.1 * np.max(np.abs(w0))
  assert ft_params["head"]["kernel"].shape == (512, 10)
  # init_from a training run's workdir (state with opt_state etc.): now the 10-way head fits too.
  model = models.get_model("resnet18", num_classes=10)
  fresh = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 28, 28, 1)), train=False), jax.random.key(0)
  )
  fresh = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), fresh)
  params, _, notes = runs.initialise_from(
    fresh["params"], fresh["batch_stats"], str(tmp_path / "ft")
  )
  assert notes == []
  np.testing.assert_array_equal(params["head"]["kernel"], ft_params["head"]["kernel"])


# --- timm: its key layout, against the reference (timm itself is not installed) ----------------
# Numeric parity at 48x48: the stage-4 input is 3x3, so the average-pool shortcut's ceil mode and
# the stride-2 convs on odd sizes are exercised. (name, blocks per stage or None for full depth).
# timm's resnext50_32x4d is torchvision's (same keys and net: resnet18 here covers timm's plain
# layout, test_eval_logits_match_torchvision the grouped block); seresnet50's SE block is the one
# seresnext50_32x4d runs.
TIMM_PARITY = (
  ("resnet18", None),
  ("resnet18d", None),
  ("resnet50d", (1, 2, 1, 1)),
  ("seresnext50_32x4d", (1, 1, 2, 1)),
)


def timm_parity(name, stage_sizes=None, image_size=48):
  net = torch_reference.create(name, layers=stage_sizes, seed=5)
  x = np.random.default_rng(1).standard_normal((2, 3, image_size, image_size)).astype(np.float32)
  return logit_gap(net, name, "timm", stage_sizes, x)


def test_reference_has_the_published_parameter_counts():
  """The reference's full-size nets have torchvision's and timm's published parameter counts."""
  for name, count in torch_reference.PARAM_COUNTS.items():
    assert torch_reference.num_params(torch_reference.create(name, device="meta")) == count, name


def test_timm_names_are_all_importable():
  assert set(weights.supported("timm")) == set(weights.TIMM_SUPPORTED)
  assert set(weights.TIMM_SUPPORTED) == set(torch_reference.TIMM)
  assert set(weights.SUPPORTED) == set(torch_reference.TORCHVISION)


@pytest.mark.parametrize("name,stage_sizes", TIMM_PARITY)
def test_eval_logits_match_timm(name, stage_sizes):
  diff, scale = timm_parity(name, stage_sizes)
  print(f"timm {name} stage_sizes={stage_sizes}: max|diff| {diff:.2e} (max|logit| {scale:.2f})")
  assert scale > 0.1  # the logits are not trivially small
  assert diff <= 1e-5


@pytest.mark.parametrize("name", weights.TIMM_SUPPORTED)
def test_timm_full_depth_key_and_shape_tables_match(name):
  """Every key of timm's full-depth net (the reference, shapes only) maps to our tree, both ways."""
  sd = torch_reference.create(name, device="meta").state_dict()
  mapped = {key: shape for key, _, shape, _ in weights.key_table(name, "timm").values()}
  ours = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  assert mapped == ours


def test_timm_state_dict_of_another_variant_is_refused_in_one_line(tmp_path):
  plain = torch_reference.create("resnet18").state_dict()
  with pytest.raises(weights.WeightImportError) as e:
    weights.from_timm(plain, "resnet18d")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("state dict does not match timm resnet18d")
  assert "23 missing: conv1.0.weight, conv1.1.bias" in msg and "13 unexpected: conv1.weight" in msg
  # A torchvision-layout shortcut (downsample.0 = the conv) is not ResNet-D's (downsample.0 = pool).
  shifted = {
    re.sub(r"downsample\.(\d)", lambda m: f"downsample.{int(m[1]) - 1}", k): v
    for k, v in torch_reference.create("resnet18d").state_dict().items()
  }
  with pytest.raises(weights.WeightImportError) as e:
    weights.from_timm(shifted, "resnet18d")
  msg = str(e.value)
  assert "12 missing: layer2.0.downsample.2.bias, " in msg
  assert "12 unexpected: layer2.0.downsample.0.weight, " in msg
  assert "layer2.0.downsample.1.weight (128,) != expected (128, 64, 1, 1)" in msg
  # Names timm has and we do not import: one line with the supported list.
  with pytest.raises(
    weights.WeightImportError, match="has no timm counterpart; supported: resnet18"
  ):
    weights.from_timm(plain, "preact_resnet18")
  # Through convert: nothing is written.
  pth = tmp_path / "r18.pth"
  torch.save(plain, pth)
  workdir = tmp_path / "out"
  with pytest.raises(weights.WeightImportError, match="does not match timm resnet34d"):
    weights.convert_command("timm", "resnet34d", str(pth), str(workdir))
  assert not workdir.exists()


def test_convert_from_timm_writes_a_checkpoint_with_timms_logits(tmp_path):
  net = torch_reference.create("resnet18d", seed=7, num_classes=10)
  pth = tmp_path / "resnet18d.pth"
  # A training script's checkpoint layout: {'state_dict': ...} with 'module.' prefixes.
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, pth)
  line = weights.convert_command("timm", "resnet18d", str(pth), str(tmp_path / "w"))
  assert line.startswith("converted timm resnet18d (") and "10 classes" in line
  ckpt = runs.read_checkpoint(str(tmp_path / "w"))
  assert ckpt.step == 0 and ckpt.meta["source"] == "timm" and ckpt.meta["model"] == "resnet18d"
  x = np.random.default_rng(2).standard_normal((1, 3, 40, 40)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  # As predict, export and the analyses read it: runs.load builds the network from the meta, with
  # exactly the checkpoint's variables, and that network gives timm's logits (one forward pass).
  run = runs.load(str(tmp_path / "w"))
  jax.tree_util.tree_map(
    np.testing.assert_array_equal,
    {"params": ckpt.params, "batch_stats": ckpt.batch_stats},
    {"params": run.variables["params"], "batch_stats": run.variables["batch_stats"]},
  )
  got = run.model.apply(run.variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


# --- files that are not state dicts: one line, nothing written -----------------------------------
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _not_state_dicts(tmp_path):
  """name -> a file torch.load cannot read as a state dict, and a phrase its refusal contains."""
  rng = np.random.default_rng(0)
  files = {
    "photo.png": (PNG_HEADER + rng.bytes(300), "is not a PyTorch state dict"),
    "random.bin": (rng.bytes(2000), "is not a PyTorch state dict"),
    "empty.pth": (b"", "is not a PyTorch state dict"),
    "notes.txt": (b"hello world\n", "is not a PyTorch state dict"),
    "pickled_list.pkl": (pickle.dumps([1, 2, 3]), "is not a PyTorch state dict"),
    "pickled_object.pkl": (pickle.dumps(collections.Counter("abc")), "is not a PyTorch state"),
    "model.safetensors": (b"\x0e" + b"\x00" * 7 + b'{"a": {"b": 1}}', "is a safetensors file"),
  }
  for name, obj, phrase in (
    ("tensor_list.pth", [torch.zeros(2)], "holds a list"),
    ("strings.pth", {"conv1.weight": "w", "epoch": 3}, "2 entries that are not tensors: conv1"),
    ("empty_dict.pth", {}, "it is empty"),
    ("train_ckpt.pth", {"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, "argparse"),
  ):
    buf = io.BytesIO()
    torch.save(obj, buf)
    files[name] = (buf.getvalue(), phrase)
  out = {}
  for name, (data, phrase) in files.items():
    (tmp_path / name).write_bytes(data)
    out[tmp_path / name] = phrase
  return out


@pytest.mark.parametrize("source", weights.SOURCES)
def test_a_file_that_is_not_a_state_dict_is_refused_in_one_line(tmp_path, source):
  for path, phrase in _not_state_dicts(tmp_path).items():
    workdir = tmp_path / f"out_{path.stem}"
    with pytest.raises(weights.WeightImportError) as e:
      weights.convert_command(source, "resnet18", str(path), str(workdir))
    msg = str(e.value)
    assert phrase in msg and str(path) in msg and "\n" not in msg, (path.name, msg)
    assert not workdir.exists()


@pytest.mark.e2e
def test_convert_command_refuses_a_photo_in_one_line(tmp_path):
  """The door, for one source: both sources' messages are the in-process test's above (a start
  of this command loads PyTorch, TensorFlow and JAX: 7.8 s on the quiet machine)."""
  source = "timm"
  photo = tmp_path / "photo.png"
  photo.write_bytes(PNG_HEADER + np.random.default_rng(0).bytes(500))
  workdir = tmp_path / "out"
  proc = subprocess.run(
    [sys.executable, "-m", "resnet_jax.main", "convert", f"--from={source}", "--model=resnet18"]
    + [f"--src={photo}", f"--workdir={workdir}"],
    env=command_env(),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2, proc.stderr
  want = f"error: {photo} is not a PyTorch state dict (a file written by torch.save); nothing was"
  assert last == want + " converted", proc.stderr
  assert "Traceback" not in proc.stderr + proc.stdout
  assert not workdir.exists()
