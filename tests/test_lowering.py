"""CPU choices are made per platform at lowering: what a model becomes for cuda, tpu and cpu.

ResNet-50's forward pass is exported with ``jax.export`` for one platform at a time from abstract
inputs (nothing is computed): for GPU and TPU it holds the paper's 53 convolutions and the one
fully connected layer, whatever ``conv_impl`` says; for the CPU it holds the CPU's forms (1x1 convs
as matmuls, or oneDNN's custom calls). The host's CPU-only settings are checked here too.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import host
from resnet_jax.models import conv_impl, get_model, onednn
from resnet_jax.models.onednn import kernel

OPS = ("convolution", "dot_general", "custom_call")


def _needs_kernel():
  if onednn.load() is None:
    pytest.skip(f"oneDNN kernel unavailable: {onednn.unavailable_reason()}")


def _resnet50_text(impl: str, platform: str) -> str:
  """ResNet-50's eval-mode forward (batch 1, 224 px) lowered for ``platform``."""
  model = get_model("resnet50", num_classes=1000, conv_impl=impl)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  # oneDNN's calls have no compatibility guarantee: export refuses them unless told they are known.
  known = [jax.export.DisabledSafetyCheck.custom_call(t) for t in kernel.TARGETS]
  exported = jax.export.export(forward, platforms=(platform,), disabled_checks=known)(variables, x)
  return exported.mlir_module()


def _resnet50_ops(impl: str, platform: str) -> dict:
  """How many of each op the forward holds for ``platform``."""
  text = _resnet50_text(impl, platform)
  return {op: len(re.findall(rf"stablehlo\.{op}\b", text)) for op in OPS}


PLAIN = {"convolution": 53, "dot_general": 1, "custom_call": 0}


@pytest.mark.parametrize("impl", ["xla", "onednn"])
def test_resnet50_lowers_to_plain_convolutions_for_gpu_and_tpu(impl):
  if impl == "onednn":
    _needs_kernel()  # without it there would be nothing CPU-specific to keep out
  for platform in ("cuda", "tpu"):
    assert _resnet50_ops(impl, platform) == PLAIN, (impl, platform)


def test_resnet50_lowers_to_the_cpu_form_for_the_cpu():
  # The 36 1x1 convs (two in each of the 16 bottlenecks, 4 projections) become matmuls.
  assert _resnet50_ops("xla", "cpu") == {"convolution": 17, "dot_general": 37, "custom_call": 0}
  _needs_kernel()
  assert _resnet50_ops("onednn", "cpu") == {"convolution": 0, "dot_general": 1, "custom_call": 53}


def test_every_onednn_call_of_the_model_is_single_threaded():
  # Multi-threaded OpenMP teams inside XLA's threads deadlocked (docs/DEVELOPING.md, "The stall");
  # a CPU run gets its cores from the split, not from oneDNN.
  _needs_kernel()
  threads = re.findall(r"threads = (\d+) : i64", _resnet50_text("onednn", "cpu"))
  assert len(threads) == 53 and set(threads) == {"1"}, threads


def test_auto_is_onednn_exactly_where_it_is_installed(monkeypatch):
  installed = conv_impl.onednn_missing() is None
  assert conv_impl.resolve("auto") == conv_impl.resolve("") == ("onednn" if installed else "xla")
  assert conv_impl.resolve("auto", fp32=False) == "xla"  # oneDNN's kernel is fp32 only
  assert conv_impl.resolve("xla") == "xla" and conv_impl.resolve("onednn") == "onednn"
  monkeypatch.setattr(conv_impl, "_onednn_installed", lambda: False)
  assert conv_impl.resolve("auto") == "xla"
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    conv_impl.resolve("mkl")


@pytest.mark.slow  # compiles a scanned bottleneck network's gradient
@pytest.mark.parametrize("impl", ["xla", "onednn"])
def test_the_compiled_cpu_step_holds_no_platform_switch(impl):
  """The switch is resolved when lowering for one platform: XLA:CPU compiles straight-line code
  (forward and gradients, scanned blocks included), so the CPU forms keep their speed."""
  if impl == "onednn":
    _needs_kernel()
  model = get_model(
    "resnet50",
    num_classes=10,
    conv_impl=impl,
    stage_sizes=(1, 2, 1, 1),
    width_multiplier=0.125,
    scan_blocks=True,
  )
  x = jnp.ones((2, 16, 16, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)  # compiled from shapes alone

  def loss(params, batch_stats):
    v = {"params": params, "batch_stats": batch_stats}
    out, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
    return out.sum()

  lowered = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"])
  hlo = lowered.compile().as_text()
  assert "conditional" not in hlo
  assert ("custom-call" in hlo) == (impl == "onednn")


# --- the host: CPU-only settings stay CPU-only ----------------------------------------------------


@pytest.fixture
def cpu_host(monkeypatch):
  """A 4-core glibc host with no device or allocator choices of the user's."""
  for var in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "GLIBC_TUNABLES", *host.MALLOC_ENV):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(host, "usable_cores", lambda: 4)
  monkeypatch.setattr(host.platform, "libc_ver", lambda: ("glibc", "2.35"))
  monkeypatch.setattr(conv_impl, "_onednn_installed", lambda: True)
  return monkeypatch


def test_cpu_split_and_allocator_apply_on_a_cpu_host(cpu_host):
  cpu_host.setenv("JAX_PLATFORMS", "cpu")
  assert host.cpu_split("auto", [128]) == 4
  assert host.malloc_settings() == host.REUSE_FREED_MEMORY


@pytest.mark.parametrize("platforms", ["cuda", "tpu", "cuda,cpu"])
def test_cpu_split_and_allocator_do_nothing_on_accelerator_hosts(cpu_host, platforms):
  cpu_host.setenv("JAX_PLATFORMS", platforms)
  assert host.accelerator_expected()
  assert host.cpu_split("auto", [128]) == 1
  assert host.cpu_split("4", [128]) == 1
  assert host.malloc_settings() == ()


def test_an_installed_accelerator_plugin_counts_as_an_accelerator_host(cpu_host):
  cpu_host.delenv("JAX_PLATFORMS", raising=False)
  found = host.importlib.util.find_spec
  cpu_host.setattr(
    host.importlib.util,
    "find_spec",
    lambda name, *a: object() if name == "jax_cuda12_plugin" else found(name, *a),
  )
  assert host.cpu_split("auto", [128]) == 1 and host.malloc_settings() == ()
