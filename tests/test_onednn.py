"""conv_impl='onednn' (and 'auto' where oneDNN is installed): oneDNN convolutions inside XLA equal
lax.conv, and fall back without oneDNN.

The tests that run oneDNN skip when the optional extra (``pip install 'resnet-jax[cpu]'``) or a C++
compiler is missing; the fallback tests run everywhere.
"""

import functools
import logging
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import run_python
from resnet_jax.models import blocks, get_model, onednn
from resnet_jax.models.onednn import convolution as conv_lib
from resnet_jax.models.onednn import kernel

_NHWC = ("NHWC", "HWIO", "NHWC")
# (batch, size, cin, kernel, cout, stride, groups): kernels 1/3/7, strides 1/2, odd and even
# sizes, grouped (ResNeXt) convs, a padding whose high side oneDNN must infer (odd size, stride 2).
CASES = [
  (3, 8, 8, 1, 12, 1, 1),
  (2, 9, 8, 1, 16, 2, 1),
  (2, 11, 8, 3, 16, 2, 1),
  (2, 10, 8, 3, 16, 2, 1),
  (2, 13, 3, 7, 8, 2, 1),
  (2, 10, 16, 3, 16, 1, 4),
  (2, 9, 16, 3, 32, 2, 8),
]


def _needs_kernel():
  if onednn.load() is None:
    pytest.skip(f"oneDNN kernel unavailable: {onednn.unavailable_reason()}")


def _operands(case, seed=0):
  n, size, cin, k, cout, stride, groups = case
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, (n, size, size, cin))
  w = jax.random.normal(kw, (k, k, cin // groups, cout))
  out = (size + 2 * (k // 2) - k) // stride + 1
  dy = jax.random.normal(kd, (n, out, out, cout))
  return x, w, dy


def _value_and_grads(conv_fn, cases, operands):
  """One compiled function for every case: (y, dx, dw) per case."""

  def all_cases(operands):
    out = []
    for (_, _, _, k, _, stride, groups), (x, w, dy) in zip(cases, operands):
      pad = ((k // 2, k // 2), (k // 2, k // 2))
      conv = functools.partial(conv_fn, strides=(stride, stride), padding=pad, groups=groups)
      y, vjp = jax.vjp(conv, x, w)
      out.append((y, *vjp(dy)))
    return out

  return jax.jit(all_cases)(operands)


def _lax_conv(x, w, strides, padding, groups=1):
  return lax.conv_general_dilated(
    x,
    w,
    strides,
    padding,
    dimension_numbers=_NHWC,
    feature_group_count=groups,
    precision=lax.Precision.HIGHEST,
  )


def _rel_err(a, b):
  a, b = np.asarray(a), np.asarray(b)  # on the host: no compile per shape
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@functools.lru_cache(maxsize=None)
def _lax_reference():
  """lax.conv's values and gradients for CASES: compiled once for both thread counts."""
  operands = [_operands(c, seed=i) for i, c in enumerate(CASES)]
  return _value_and_grads(_lax_conv, CASES, operands)


# threads=1: what the model calls (models.onednn.conv); 2: a 2-thread OpenMP team, which only the
# conv benchmark asks for.
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_and_both_gradients_equal_lax_conv(threads):
  _needs_kernel()
  operands = [_operands(c, seed=i) for i, c in enumerate(CASES)]

  def conv(x, w, strides, padding, groups=1):
    return onednn.conv_nhwc(x, w, strides, padding, groups, threads)

  got = _value_and_grads(conv, CASES, operands)
  want = _lax_reference()
  for case, g, w in zip(CASES, got, want):
    for name, a, b in zip(("y", "dx", "dw"), g, w):
      assert a.shape == b.shape, (case, name)
      assert _rel_err(a, b) < 1e-5, (case, name, _rel_err(a, b))


def _model_loss_and_grads(model, variables, x):
  # Eval-mode BatchNorm: in train mode the batch statistics of 2 tiny images amplify fp32
  # summation-order differences far beyond the convolutions' own (1e-4 on a ResNeXt leaf).
  def loss(params):
    out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
    return jnp.sum(out * jnp.arange(out.shape[-1]))

  return jax.jit(jax.value_and_grad(loss))(variables["params"])


def _filled(shapes, seed=0):
  """Variables of init's shapes filled from numpy (He-normal kernels, BN 1/0): no init compile."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      fan_in = np.prod(s.shape[:-1])
      return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2 / fan_in), s.dtype)
    return jnp.ones(s.shape, s.dtype) if leaf in ("scale", "var") else jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.slow  # whole networks compiled twice (oneDNN and XLA), with gradients
@pytest.mark.parametrize(
  "name,overrides,size",
  [
    ("resnet20", {"stage_sizes": (1, 2, 1), "scan_blocks": True, "remat": True}, 8),
    ("resnext50_32x4d", {"stage_sizes": (1, 1, 1, 1), "width_multiplier": 0.25}, 17),
  ],
  ids=["scan+remat", "resnext-7x7-stem"],
)
def test_model_with_onednn_convs_matches_xla_with_the_same_params(name, overrides, size):
  _needs_kernel()
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  ref = get_model(name, num_classes=10, conv_impl="xla", **overrides)
  fast = get_model(name, num_classes=10, conv_impl="onednn", **overrides)
  shapes = jax.eval_shape(ref.init, jax.random.PRNGKey(0), x)
  fast_vars = jax.eval_shape(fast.init, jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, fast_vars) == jax.tree.map(jnp.shape, shapes)
  variables = _filled(shapes)
  (l_ref, g_ref), (l_fast, g_fast) = (_model_loss_and_grads(m, variables, x) for m in (ref, fast))
  assert abs(float(l_fast - l_ref)) <= 1e-5 * abs(float(l_ref)), (l_fast, l_ref)
  # Per parameter, relative to its largest entry.
  errs = jax.tree.map(lambda a, b: _rel_err(a, b) if np.any(b) else 0.0, g_fast, g_ref)
  assert max(jax.tree.leaves(errs)) < 1e-5, errs


def test_under_pmap_on_two_devices():
  _needs_kernel()
  script = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from jax import lax
    from resnet_jax.models import onednn
    assert jax.local_device_count() == 2
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 9, 9, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 16))
    dy = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 5, 5, 16))
    pad = ((1, 1), (1, 1))
    def step(conv):
      def f(x, dy):
        y, vjp = jax.vjp(lambda x, w: conv(x, w, (2, 2), pad), x, w)
        dx, dw = vjp(dy)
        return y, dx, lax.psum(dw, "d")
      return jax.pmap(f, axis_name="d")(x, dy)
    ref = step(lambda x, w, s, p: lax.conv_general_dilated(
        x, w, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"))
    got = step(onednn.conv)
    for a, b in zip(got, ref):
      err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
      assert err < 1e-5, err
    print("OK")
    """
  )
  proc = run_python(script, devices=2, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# --- fallback: runs without oneDNN ------------------------------------------------------------


@pytest.fixture
def kernel_absent(monkeypatch):
  """The kernel as on a machine without oneDNN: load() returns None with the reason."""
  monkeypatch.setattr(kernel, "_state", {})
  monkeypatch.setattr(kernel, "onednn_prefix", lambda: None)
  monkeypatch.setattr(conv_lib, "_logged", set())


def test_missing_library_reports_how_to_install(kernel_absent):
  assert kernel.load() is None
  assert "pip install 'resnet-jax[cpu]'" in kernel.unavailable_reason()


def test_missing_compiler_is_reported(monkeypatch, tmp_path):
  monkeypatch.setattr(kernel, "_state", {})
  (tmp_path / "lib").mkdir()
  (tmp_path / "lib" / "libdnnl.so.3").write_bytes(b"")
  (tmp_path / "include" / "oneapi" / "dnnl").mkdir(parents=True)
  (tmp_path / "include" / "oneapi" / "dnnl" / "dnnl.hpp").write_text("")
  monkeypatch.setenv("RESNET_JAX_ONEDNN", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  assert kernel.load() is None
  assert "no C++ compiler" in kernel.unavailable_reason()


def test_onednn_conv_falls_back_to_lax_conv_with_one_warning(kernel_absent, caplog):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 9, 4))
  ref = blocks.conv(8, 3, 2, name="conv", conv_impl="xla")
  fast = blocks.conv(8, 3, 2, name="conv", conv_impl="onednn")
  variables = ref.init(jax.random.PRNGKey(0), x)
  with caplog.at_level(logging.WARNING, logger=conv_lib.__name__):
    outs = [fast.apply(variables, x) for _ in range(2)]
  for out in outs:
    np.testing.assert_array_equal(out, ref.apply(variables, x))
  warnings = [r.getMessage() for r in caplog.records if r.name == conv_lib.__name__]
  assert len(warnings) == 1 and "falls back to lax.conv" in warnings[0], warnings
  assert "resnet-jax[cpu]" in warnings[0]


def test_fp16_and_bf16_fall_back():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  w = jnp.ones((3, 3, 2, 2), jnp.bfloat16)
  assert "fp32 only" in conv_lib.unsupported_reason(x, w)


def test_unknown_conv_impl_is_refused():
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    get_model("resnet20", conv_impl="mkl").init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))


def test_config_refuses_an_unknown_conv_impl():
  from resnet_jax.train import config as config_lib

  c = config_lib.base_config()
  c.model_overrides.conv_impl = "mkl"
  with pytest.raises(ValueError, match="config.model_overrides.conv_impl='mkl'"):
    config_lib.validate(c, known_models=[c.model], known_datasets=[c.dataset])


def test_auto_is_onednn_where_installed_for_fp32_and_xla_otherwise(monkeypatch):
  from resnet_jax.models import conv_impl

  monkeypatch.setattr(conv_impl, "_onednn_installed", lambda: True)
  assert isinstance(blocks.conv(8, 3, name="c"), blocks.OnednnConv)  # 'auto' is the default
  assert isinstance(blocks.conv(8, 1, name="c"), blocks.OnednnConv)
  bf16 = blocks.conv(8, 1, name="c", matmul_1x1=True, dtype=jnp.bfloat16)
  assert isinstance(bf16, blocks.Conv1x1)  # the kernel is fp32 only: XLA's CPU form
  monkeypatch.setattr(conv_impl, "_onednn_installed", lambda: False)
  assert isinstance(blocks.conv(8, 1, name="c", matmul_1x1=True), blocks.Conv1x1)
  assert not isinstance(blocks.conv(8, 3, name="c"), blocks.OnednnConv)
