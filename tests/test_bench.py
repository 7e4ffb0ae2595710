"""resnet_jax.bench and the performance options of the models (matmul 1x1, scan_blocks, remat).

Correctness only (no timed assertions): the machine is a shared 2-core CPU.
"""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import bench, models
from resnet_jax.models import get_model
from resnet_jax.models.blocks import Conv1x1, conv_kernel_init
from resnet_jax.models.resnet import ResNet, to_scanned, to_unrolled

pytestmark = pytest.mark.slow

KEY = jax.random.key(0, impl="unsafe_rbg")
# A ResNet-20 one block per stage and a few channels wide: what a test of the command, not of the
# net, benches (the tests' training config's shape).
TINY = {"stage_sizes": (1, 1, 1), "stem_width": 4, "stage_widths": (4, 8, 8)}

try:
  import torch  # noqa: F401

  HAVE_TORCH = True
except ImportError:
  HAVE_TORCH = False


def leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
    np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
  )


def same_shapes(a, b):
  return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
    x.shape == y.shape and x.dtype == y.dtype
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


def max_diff(a, b):
  # numpy, not eager jnp: eager ops compile one tiny XLA program per leaf shape (seconds in all).
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(la, lb)
  )


# Compile-time only (LLVM optimisation level; same HLO, same XLA fusions): these tests compare two
# programs compiled the same way, so the cheaper backend compile keeps every property checked.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_fast(f, *args):
  """``jax.jit(f)(*args)``, compiled with :data:`FAST_COMPILE`; numpy results."""
  return jax.device_get(jax.jit(f).lower(*args).compile(FAST_COMPILE)(*args))


def random_variables(shapes, seed=0):
  """numpy-filled variables with the shapes of ``shapes`` (an ``eval_shape`` of ``init``).

  Same structure as ``init`` gives, without compiling it; every leaf is non-trivial (kernels
  variance-preserving so activations stay O(1), BN scale/bias/mean/var random, var > 0).
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      x = rng.standard_normal(s.shape) / np.sqrt(fan_in)
    elif name in ("scale", "var"):
      x = 0.5 + rng.random(s.shape)
    else:  # bias, mean
      x = 0.2 * rng.standard_normal(s.shape)
    return np.asarray(x, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# --- the bench command -----------------------------------------------------------------------------
def test_bench_tiny_report_has_every_field_with_sane_values(tmp_path):
  # The TINY net: every field is there whatever the net's size, and a third of the full ResNet-20's
  # blocks compile in half its time (the paper's 0.27M parameters are test_models' to hold).
  out = tmp_path / "bench.jsonl"
  compare = "torch" if HAVE_TORCH else None
  r = bench.run_benchmark(
    "resnet20",
    8,
    32,
    "fp32",
    compare=compare,
    peak_tflops=1.0,
    steps=2,
    jsonl=str(out),
    overrides=TINY,
    loop_steps=2,
    loop_rounds=2,
    parallelism=("jit",),  # pmap beside it is the accelerator check's (a second compile here)
  )
  num_params = models.count_params("resnet20", **TINY)
  assert r["model"] == "resnet20" and r["batch"] == 8 and r["image_size"] == 32
  assert r["num_params"] == num_params
  for k in (
    "compile_train_s",
    "compile_eval_s",
    "step_time_best_s",
    "step_time_median_s",
    "images_per_sec",
    "loop_images_per_sec",
    "flops_per_step",
    "achieved_tflops",
    "mfu",
    "peak_memory_bytes",
    "temp_bytes",
  ):
    assert isinstance(r[k], float if k != "peak_memory_bytes" and k != "temp_bytes" else int), k
    assert r[k] > 0 and math.isfinite(r[k]), k
  assert r["step_time_best_s"] <= r["step_time_median_s"]
  assert r["images_per_sec"] == pytest.approx(8 / r["step_time_best_s"])
  assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 1.0)
  assert r["loop_overhead_pct"] < 100 and r["loop_rounds"] == 2 and r["loop_steps"] == 2
  assert r["loop_images_per_sec"] > 0 and r["loop_bare_images_per_sec"] > 0
  # One train step: forward + backward = 3 x the forward's 2 x MACs per image, of the net the
  # overrides shape. XLA's count is below it where the convolutions are oneDNN custom calls
  # (conv_impl auto on CPU).
  assert (
    r["analytic_flops_per_step"] == 6 * models.count_macs(get_model("resnet20", **TINY), 32) * 8
  )
  assert 0 < r["flops_per_step"] < 1.1 * r["analytic_flops_per_step"]
  # Memory: at least the donated state (params + momentum) and at most a few hundred MiB.
  assert 2 * 4 * num_params < r["peak_memory_bytes"] < 2**30
  if HAVE_TORCH:
    assert r["torch_images_per_sec"] >= r["torch_images_per_sec_median"] > 0
    assert r["torch_ratio"] == pytest.approx(r["images_per_sec"] / r["torch_images_per_sec"])
  line = json.loads(out.read_text().splitlines()[-1])
  assert line["model"] == "resnet20" and line["compile_train_s"] == r["compile_train_s"]
  text = bench.format_report(r)
  for label in (
    "compile train step",
    "compile eval step",
    "bare images/s",
    "full-loop images/s",
    "loop overhead",
    "GFLOP/s",
    "MFU",
    "peak memory",
  ):
    assert label in text, label
  assert "None" not in text


def test_bench_lowers_the_loops_own_step_for_lamb_mixup_and_ema():
  """For a config with LAMB, mixup, label smoothing and an EMA, the step bench compiles is the one
  the training loop compiles: the same lowered computation on both data-parallel paths, for the
  loop's own model, optimizer and resume template of the state."""
  from resnet_jax import data, runs
  from resnet_jax.bench import train as bench_train
  from resnet_jax.train import config as config_lib
  from resnet_jax.train import loop, optim, parallel
  from resnet_jax.train import state as state_lib

  config = config_lib.base_config()
  config.optimizer, config.mixup_alpha, config.ema_decay = "lamb", 0.2, 0.99
  config.label_smoothing = 0.1
  config.model_overrides.width_multiplier = 0.25
  config.model_overrides.stage_sizes = (1, 1, 1)
  n_dev, batch, size = jax.local_device_count(), 2 * jax.local_device_count(), 16
  config = bench_train.bench_config("resnet20", batch, "fp32", config)
  setup = bench_train.set_up(config, size)
  host_batch, _ = bench_train.host_batches(setup, n_dev)
  assert setup.config.optimizer == "lamb" and setup.host_state.ema is not None

  # The loop's side, built as train_and_evaluate builds it.
  num_classes = data.dataset_info(config.dataset).num_classes
  model = runs.build_model(config, num_classes)
  image_shape = (size, size, 3)
  tx = optim.create_optimizer(config, state_lib.abstract_variables(model, image_shape)["params"])
  template = state_lib.abstract_train_state(model, tx, image_shape, use_ema=True)
  assert same_shapes(template, setup.host_state)

  def loop_text(par, config):
    if isinstance(par, parallel.Jit):
      state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=par.replicated), template
      )
      images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32, sharding=par.sharded)
      labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=par.sharded)
    else:
      state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct((n_dev, *s.shape), s.dtype), template
      )
      images = jax.ShapeDtypeStruct((n_dev, batch // n_dev, *image_shape), jnp.float32)
      labels = jax.ShapeDtypeStruct((n_dev, batch // n_dev), jnp.int32)
    step = loop.compile_steps(config, par, model, tx, num_classes)["p_train_step"]
    return step.lower(state, {"image": images, "label": labels}).as_text()

  for name in parallel.PARALLELISMS:
    par = parallel.create(name)
    state, train_batch = par.replicate(setup.host_state), par.put_batch(host_batch)
    bench_text = bench_train.lower_train_step(par, setup, state, train_batch).as_text()
    assert bench_text == loop_text(par, config), name
  # The comparison sees the step's arguments: without mixing the loop's step is another program.
  unmixed = config.copy_and_resolve_references()
  unmixed.mixup_alpha = 0.0
  assert bench_text != loop_text(par, unmixed)


def test_bench_command_splits_the_cpu_and_counts_the_whole_batch(tmp_path):
  """`resnet-jax bench` on 2 single-threaded CPU devices: the global batch is split, the
  FLOPs and images/s are those of the whole batch of the net ``--override`` shapes, and the run
  says how it was split. With no --precision and no peak for a CPU: fp32, FLOP/s of the analytic
  count (even where XLA's is not: the oneDNN convolutions), and MFU n/a with the reason."""
  import subprocess
  import sys
  from conftest import REPO, TEST_XLA_FLAGS, command_env

  from resnet_jax.models import onednn

  overrides = dict(TINY)
  if onednn.unavailable_reason() is None:
    overrides["conv_impl"] = "onednn"
  env = command_env()
  env["XLA_FLAGS"] = TEST_XLA_FLAGS  # no device count: bench splits the CPU itself
  out = tmp_path / "bench.jsonl"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "resnet_jax.main",
      "bench",
      "--model=resnet20",
      "--batch_size=8",
      "--image_size=32",
      "--steps=1",
      *(f"--override={field}={value}" for field, value in overrides.items()),
      "--noloop",  # the loop's figures are the in-process report's test
      "--cpu_devices=2",
      f"--jsonl={out}",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(out.read_text().splitlines()[-1])
  assert r["num_devices"] == 2 and "--xla_cpu_multi_thread_eigen=false" in r["xla_flags"]
  # The whole batch's FLOPs, not one replica's, of the overridden net.
  assert r["overrides"] == {field: str(value) for field, value in overrides.items()}
  assert (
    r["analytic_flops_per_step"] == 6 * models.count_macs(get_model("resnet20", **TINY), 32) * 8
  )
  assert r["images_per_sec"] == pytest.approx(8 / r["step_time_best_s"])
  assert "2 × cpu" in proc.stdout
  assert r["precision"] == "fp32" and r["mfu"] is None and r["peak_tflops"] is None
  assert r["achieved_tflops"] == pytest.approx(
    r["analytic_flops_per_step"] / r["step_time_best_s"] / 1e12
  )
  if "conv_impl" in overrides:  # XLA's cost analysis cannot see inside the oneDNN custom calls
    assert r["flops_per_step"] < 0.5 * r["analytic_flops_per_step"]
  assert "MFU" in proc.stdout and "n/a (no peak for cpu)" in proc.stdout
  assert f"{r['analytic_flops_per_step'] / 1e9:.1f} GFLOP" in proc.stdout
  assert "GFLOP/s" in proc.stdout


@pytest.mark.parametrize(
  "args,message",
  [
    (["--batch_size=0"], "--batch_size=0: must be at least 1"),
    (["--steps=-1"], "--steps=-1: must be at least 1"),
    (["--override=width_multiplier=abc"], "width_multiplier takes a number"),
    (["--override=scan_blocks=3"], "scan_blocks takes true or false"),
    (["--override=stage_sizes=3"], "stage_sizes takes a tuple"),
    (["--override=learning_rate=0.1"], "Unknown override"),
    (["--model=resnet21"], "Unknown model 'resnet21'"),
    (["--jsonl={tmp}"], "is a folder; give a file path"),
    (["--jsonl={tmp}/a_file/bench.jsonl"], "cannot create it under"),
  ],
)
def test_bench_refuses_bad_input_before_it_starts(tmp_path, monkeypatch, args, message):
  """Issue 34: each is one ValueError (main's one `error:` line) before the devices start or a
  benchmark runs -- never a ZeroDivisionError 21 s in, a TypeError, or results lost at the end."""
  from absl import flags

  from resnet_jax.commands import bench as bench_command
  from resnet_jax.commands.usage import UsageError

  (tmp_path / "a_file").write_text("keep")
  monkeypatch.setattr(bench_command.startup, "start", lambda *a, **k: pytest.fail("started"))
  monkeypatch.setattr(bench_command.runtime, "start", lambda *a, **k: pytest.fail("started"))
  flag_values = flags.FlagValues()
  bench_command.define_flags(flag_values, [])
  flag_values(["bench", "--model=resnet20", *(a.format(tmp=tmp_path) for a in args)])
  error = UsageError if "Unknown" not in message else ValueError
  with pytest.raises(error, match=message):
    bench_command.run(flag_values, [])
  assert os.listdir(tmp_path) == ["a_file"] and (tmp_path / "a_file").read_text() == "keep"


def test_compare_without_pytorch_names_the_extra(tmp_path, monkeypatch):
  """PyTorch runs in a process of its own; a missing install there is still one clear line here."""
  (tmp_path / "torch.py").write_text("raise ImportError('No module named torch')\n")
  monkeypatch.setenv(
    "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
  )
  with pytest.raises(ImportError, match=r"pip install 'resnet-jax\[bench\]'"):
    bench.TorchApart("resnet20", 8, 32)


def test_compare_outside_the_checkout_says_it_needs_benchmarks(tmp_path, monkeypatch):
  """An installed wheel has no benchmarks/ folder: --compare=torch says so before compiling."""
  from resnet_jax.bench import reference

  wheel = tmp_path / "site-packages" / "resnet_jax" / "bench"
  wheel.mkdir(parents=True)
  monkeypatch.setattr(reference, "__file__", str(wheel / "reference.py"))
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError, match="benchmarks/torch_reference.py.*checkout"):
    bench.run_benchmark("resnet20", 8, 32, compare="torch", steps=1, loop=False)
  (tmp_path / "benchmarks").mkdir()
  (tmp_path / "benchmarks" / "torch_reference.py").write_text("")
  assert reference.reference_path() == tmp_path / "benchmarks" / "torch_reference.py"


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch (the [bench] extra) is not installed")
@pytest.mark.parametrize("name", ["resnet20", "resnet50", "plain20"])
def test_torch_reference_has_the_same_parameter_count(name):
  from resnet_jax.models import count_params

  net = bench.torch_resnet(name)
  assert sum(p.numel() for p in net.parameters()) == count_params(name)


# --- 1x1 convs as matmuls --------------------------------------------------------------------------
@pytest.mark.parametrize("stride,size", [(1, 7), (2, 7), (2, 8)])
def test_matmul_1x1_matches_nn_conv_outputs_and_gradients(stride, size):
  x = jax.random.normal(jax.random.key(1), (2, size, size, 5))
  ref = nn.Conv(
    6,
    (1, 1),
    strides=(stride, stride),
    padding=((0, 0), (0, 0)),
    use_bias=False,
    kernel_init=conv_kernel_init,
  )
  mm = Conv1x1(6, stride)
  v = ref.init(KEY, x)
  assert same_shapes(jax.eval_shape(mm.init, KEY, x), jax.eval_shape(ref.init, KEY, x))

  def loss(m):
    return lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))

  y_ref, y_mm = run_fast(ref.apply, v, x), run_fast(mm.apply, v, x)
  assert y_ref.shape == y_mm.shape == (2, -(-size // stride), -(-size // stride), 6)
  np.testing.assert_allclose(y_mm, y_ref, atol=1e-5, rtol=1e-5)
  g_ref = run_fast(jax.grad(loss(ref), argnums=(0, 1)), v, x)
  g_mm = run_fast(jax.grad(loss(mm), argnums=(0, 1)), v, x)
  assert max_diff(g_ref, g_mm) < 1e-4


def test_matmul_1x1_model_matches_conv_model_with_the_same_params():
  kw = dict(
    stage_sizes=(1, 2),
    block="bottleneck",
    stage_widths=(4, 8),
    stem="cifar",
    stem_width=8,
    num_classes=3,
    shortcut="B",
    stride_on="1x1",
  )
  fast, slow = ResNet(**kw), ResNet(**kw, matmul_1x1=False)
  x = jax.random.normal(jax.random.key(2), (2, 9, 9, 3))
  shapes = jax.eval_shape(lambda k: slow.init(k, x, train=False), KEY)
  assert same_shapes(jax.eval_shape(lambda k: fast.init(k, x, train=False), KEY), shapes)
  v = random_variables(shapes, seed=2)

  def loss(m):
    def f(p):
      y, s = m.apply(
        {"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
      )
      return jnp.sum(y**2), (y, s)

    return run_fast(jax.grad(f, has_aux=True), v["params"])

  (g_f, (y_f, s_f)), (g_s, (y_s, s_s)) = loss(fast), loss(slow)
  assert max_diff(y_f, y_s) < 1e-5 and max_diff(s_f, s_s) < 1e-5
  assert max_diff(g_f, g_s) < 1e-4


# --- convolution gradients in forward form (used inside nn.scan) ------------------------------------
@pytest.mark.parametrize(
  "k, stride, size", [(3, 1, 8), (3, 2, 8), (3, 2, 9), (1, 2, 7), (7, 2, 12), (1, 1, 5)]
)
def test_forward_form_conv_has_the_values_and_gradients_of_lax_conv(k, stride, size):
  from resnet_jax.models.blocks import conv_forward_form_grads

  rng = np.random.default_rng(k * 100 + stride * 10 + size)
  x = jnp.asarray(rng.standard_normal((3, size, size + 1, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, 5, 4)), jnp.float32)
  pad = ((k // 2, k // 2), (k // 2, k // 2))

  def reference(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  def ours(x, w):
    return conv_forward_form_grads(x, w, stride, pad)

  def value_and_grads(f):
    return jax.jit(
      lambda x, w: (f(x, w), jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, w))
    )(x, w)

  (y_ref, g_ref), (y, g) = value_and_grads(reference), value_and_grads(ours)
  assert y.shape == y_ref.shape and g[0].shape == x.shape and g[1].shape == w.shape
  assert max_diff(y, y_ref) < 1e-5
  assert max_diff(g[0], g_ref[0]) < 1e-4 and max_diff(g[1], g_ref[1]) < 1e-4
  assert np.max(np.abs(np.asarray(g[1]))) > 1e-2  # non-trivial gradients


# --- scan over repeated blocks ---------------------------------------------------------------------
# Narrow widths and two stages (the property depends on neither: a third stage is the second's code
# again, and each block costs seconds of compile); every first stage has 3 blocks, i.e. block0 + a
# scan over 2 identical blocks, and every second stage downsamples into a scan over 1.
SCAN_CASES = {
  "cifar_basic_A": dict(name="resnet20", stage_sizes=(3, 2), stage_widths=(4, 8), stem_width=4),
  "bottleneck_B_preact": dict(
    name="preact_resnet20",
    stage_sizes=(3, 2),
    block="bottleneck",
    stage_widths=(4, 8),
    stem_width=8,
  ),
  "imagenet_stem_C": dict(
    name="resnet18", stage_sizes=(3, 2), stage_widths=(8, 16), stem_width=8, shortcut="C"
  ),
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_scan_and_unrolled_give_the_same_outputs_and_params_convert_both_ways(case):
  kw = dict(SCAN_CASES[case])
  name = kw.pop("name")
  unrolled = get_model(name, num_classes=5, **kw)
  scanned = get_model(name, num_classes=5, scan_blocks=True, **kw)
  scanned_remat = get_model(name, num_classes=5, scan_blocks=True, remat=True, **kw)
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  v = random_variables(jax.eval_shape(lambda k: unrolled.init(k, x, train=False), KEY), seed=3)
  vs = to_scanned(v)
  # The scanned layout is exactly what the scanned model initialises ...
  shapes = jax.eval_shape(lambda k: scanned.init(k, x, train=False), KEY)
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(vs)
  assert all(
    a.shape == b.shape
    for a, b in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(vs))
  )
  assert jax.eval_shape(lambda k: scanned_remat.init(k, x, train=False), KEY) == shapes
  # ... with the same number of parameters, and the conversion round-trips exactly both ways.
  n = lambda t: sum(a.size for a in jax.tree_util.tree_leaves(t["params"]))  # noqa: E731
  assert n(vs) == n(v)
  assert leaves_equal(to_unrolled(vs), v)
  own = random_variables(shapes, seed=4)  # any values in the scanned model's own layout
  assert leaves_equal(to_scanned(to_unrolled(own)), own)

  def run(m, variables):
    def f(p):
      y, s = m.apply(
        {"params": p, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      return jnp.sum(jnp.sin(y)), (y, s["batch_stats"])

    # Train (value and grad) and eval in one compiled program per model.
    def both(variables):
      (_, (y, s)), g = jax.value_and_grad(f, has_aux=True)(variables["params"])
      return y, m.apply(variables, x, train=False), s, g

    return run_fast(both, variables)

  y, ye, s, g = run(unrolled, v)
  assert np.all(np.isfinite(ye)) and np.max(np.abs(ye)) > 1e-3  # non-trivial outputs
  # Remat changes what is recomputed, not which blocks the scan holds: its numbers are checked on
  # the first case only (each program compiled here costs seconds); its layout on every case.
  for m in (scanned, scanned_remat) if case == "cifar_basic_A" else (scanned,):
    y2, ye2, s2, g2 = run(m, vs)
    assert max_diff(y, y2) <= 1e-6 and max_diff(ye, ye2) <= 1e-6
    assert max_diff(s, to_unrolled(s2)) <= 1e-6
    assert max_diff(g, to_unrolled(g2)) <= 1e-5


def test_remat_unrolled_keeps_names_and_outputs():
  # The TINY net: remat wraps each block alike, and its three are both kinds (same shape, and
  # downsampling); the full ResNet-20's nine compiled twice cost seconds.
  plain, remat = get_model("resnet20", **TINY), get_model("resnet20", remat=True, **TINY)
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
  shapes = jax.eval_shape(lambda k: plain.init(k, x, train=False), KEY)
  assert same_shapes(jax.eval_shape(lambda k: remat.init(k, x, train=False), KEY), shapes)
  v = random_variables(shapes, seed=5)
  f = lambda m: run_fast(
    jax.grad(
      lambda p: jnp.sum(
        m.apply(  # noqa: E731
          {"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )[0]
      )
    ),
    v["params"],
  )
  assert max_diff(f(plain), f(remat)) <= 1e-5


# --- MFU ------------------------------------------------------------------------------------------
def test_peaks_are_dense_vendor_figures_by_device_kind():
  from resnet_jax.bench import peaks

  assert peaks.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
  assert peaks.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
  assert peaks.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 156.0  # TF32
  assert peaks.peak_tflops("NVIDIA L4", "bf16") == 121.0
  assert peaks.peak_tflops("NVIDIA L40S", "bf16") is None  # not an L4
  assert peaks.peak_tflops("TPU v5 lite", "bf16") == 197.0  # v5e
  assert peaks.peak_tflops("TPU v5", "bf16") == 459.0  # v5p
  assert peaks.peak_tflops("TPU v6 lite", "bf16") == 918.0
  assert peaks.peak_tflops("cpu", "fp32") is None


def test_resnet50_b16_step_is_393_analytic_gflop():
  """What bench reports for ResNet-50 b16 at 224 whatever conv_impl (XLA's count of the oneDNN
  path sees only what is not a custom call)."""
  from resnet_jax.bench import peaks

  flops = peaks.train_step_flops(models.count_macs("resnet50", 224), 16)
  assert flops / 1e9 == pytest.approx(392.6, abs=0.1)


# --- launch/accelerator_check.sh ---------------------------------------------------------------
@pytest.mark.slow  # a bench, a short training run and the input pipeline
def test_accelerator_check_smoke_mode_appends_every_figure(tmp_path):
  """launch/accelerator_check.sh --smoke runs end to end on a CPU (tiny model and batch) and
  appends one JSON line with every figure it promises."""
  import subprocess
  from conftest import REPO, command_env

  out = tmp_path / "check.jsonl"
  env = command_env(RESNET_JAX_CHECK_STEPS=1)
  r = subprocess.run(
    ["launch/accelerator_check.sh", "--smoke", str(out)],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    cwd=REPO,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  record = json.loads(out.read_text().splitlines()[-1])
  assert record["smoke"] is True and record["backend"] == "cpu"
  train = record["train"]
  for path in ("pmap", "jit"):
    assert train[path]["images_per_sec"] > 0 and train[path]["compile_train_s"] > 0
    assert train[path]["mfu"] is None  # no peak for a CPU
  assert train["precision"] == "bf16" and train["analytic_flops_per_step"] > 0
  assert 0.0 <= record["digits"]["accuracy"] <= 1.0
  rates = record["input_pipeline"].values()
  assert rates and all(v["images_per_sec"] > 0 and v["per_core"] > 0 for v in rates)
  assert "appended to" in r.stdout and "MFU" in r.stdout
