"""Specification of resnet_jax.models: the networks of He et al. 2015 (and v2, ResNeXt, wide).

Fast on one CPU core: big models are only traced (``jax.eval_shape``), forward passes use small
inputs, and variables of big models are filled from numpy instead of running ``init``.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import (
  count_macs,
  count_params,
  format_model_table,
  get_model,
  in_channels,
  layer_table,
  list_models,
  model_spec,
)

# XLA's RngBitGenerator: compiling an init with it takes ~1/5 of the time threefry takes on CPU.
KEY = jax.random.key(0, impl="unsafe_rbg")


# --- helpers --------------------------------------------------------------------------------------
def shapes_of(model, size=32, channels=3):
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  return jax.eval_shape(lambda k, x: model.init(k, x, train=False), KEY, x)


def n_params(tree):
  return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(tree))


def flat_names(tree):
  return {
    "/".join(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def init(model, x):
  """Jitted init: one compile of a tiny model is far cheaper than op-by-op eager init."""
  return jax.jit(lambda k, x: model.init(k, x, train=False))(KEY, x)


def forward(model, **kwargs):
  """A jitted ``model.apply`` (compile once, call many times)."""
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))


def apply(model, variables, x, **kwargs):
  return forward(model, **kwargs)(variables, x)


def cheap_variables(model, size, channels=3, seed=0):
  """Variables with init's shapes filled from numpy (He-normal kernels, BN 1/0): no compiling."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      return jnp.asarray(
        rng.standard_normal(s.shape) * np.sqrt(2 / math.prod(s.shape[:-1])), s.dtype
      )
    return jnp.ones(s.shape, s.dtype) if leaf in ("scale", "var") else jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes_of(model, size, channels))


# --- closed forms written from the architecture (independent of the package) --------------------
def conv_p(k, cin, cout, groups=1):
  return k * k * cin // groups * cout


def bn_p(c):
  return 2 * c  # scale + bias; running mean/var are batch_stats, not params


def imagenet_closed_form(block, sizes, groups=1, width_per_group=64, num_classes=1000, cin=3):
  """Table 1: 7x7 stem (64) + BN, four stages at 64-128-256-512 planes, fc; option B shortcuts."""
  total, inp = conv_p(7, cin, 64) + bn_p(64), 64
  for stage, (n, planes) in enumerate(zip(sizes, (64, 128, 256, 512))):
    for j in range(n):
      if block == "basic":
        out = planes
        total += 2 * bn_p(planes) + conv_p(3, inp, planes) + conv_p(3, planes, planes)
      else:
        width, out = int(planes * width_per_group / 64) * groups, 4 * planes
        total += (
          conv_p(1, inp, width)
          + bn_p(width)
          + conv_p(3, width, width, groups)
          + bn_p(width)
          + conv_p(1, width, out)
          + bn_p(out)
        )
      if (stage > 0 and j == 0) or inp != out:
        total += conv_p(1, inp, out) + bn_p(out)
      inp = out
  return total + inp * num_classes + num_classes


def cifar_closed_form(n, num_classes=10):
  """§4.2, option A: 3x3 stem (16) + BN; 3 stages of n basic blocks at 16/32/64; fc.  6n+2 layers."""
  block = lambda cin, w: conv_p(3, cin, w) + conv_p(3, w, w) + 2 * bn_p(w)  # noqa: E731
  stem = conv_p(3, 3, 16) + bn_p(16)
  stages = sum(block(cin, w) + (n - 1) * block(w, w) for cin, w in ((16, 16), (16, 32), (32, 64)))
  return stem + stages + 64 * num_classes + num_classes


# --- parameter counts -----------------------------------------------------------------------------
TORCHVISION = {  # sum(p.numel() for p in torchvision.models.<name>().parameters())
  "resnet18": (11689512, ("basic", (2, 2, 2, 2))),
  "resnet34": (21797672, ("basic", (3, 4, 6, 3))),
  "resnet50": (25557032, ("bottleneck", (3, 4, 6, 3))),
  "resnet101": (44549160, ("bottleneck", (3, 4, 23, 3))),
  "resnet152": (60192808, ("bottleneck", (3, 8, 36, 3))),
  "resnext50_32x4d": (25028904, ("bottleneck", (3, 4, 6, 3), 32, 4)),
  "wide_resnet50_2": (68883240, ("bottleneck", (3, 4, 6, 3), 1, 128)),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_imagenet_param_counts_equal_torchvision_and_closed_form(name):
  expected, arch = TORCHVISION[name]
  assert imagenet_closed_form(*arch) == expected
  assert n_params(shapes_of(get_model(name))["params"]) == expected
  assert count_params(name) == expected


# Paper §4.2 / Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M parameters.
CIFAR_PAPER = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


@pytest.mark.parametrize("depth", list(CIFAR_PAPER))
def test_cifar_param_counts_match_paper(depth):
  n = (depth - 2) // 6
  exact = cifar_closed_form(n)
  digits = 2 if CIFAR_PAPER[depth] < 1 else 1
  assert round(exact / 1e6, digits) == CIFAR_PAPER[depth]
  assert count_params(f"resnet{depth}") == exact
  if depth <= 110:  # resnet1202 is traced once, in the forward-shape test
    assert n_params(shapes_of(get_model(f"resnet{depth}"))["params"]) == exact


def test_analytic_param_count_matches_init_for_every_other_family():
  for name in [
    "plain18",
    "plain20",
    "preact_resnet18",
    "preact_resnet50",
    "preact_resnet20",
    "preact_resnet164",
  ]:  # ResNeXt and wide nets: resnext50_32x4d and wide_resnet50_2 in the torchvision test above
    assert count_params(name) == n_params(shapes_of(get_model(name))["params"]), name
  # He et al. 2016 (v2), Table 2: ResNet-164 has 1.7M and ResNet-1001 10.2M parameters; the
  # 10.2M counts conv + fc weights (with BN scale/bias it is 10.33M).
  weights = lambda name: sum(l.params for l in layer_table(name) if l.kind != "bn")  # noqa: E731
  assert round(count_params("preact_resnet164") / 1e6, 1) == 1.7
  assert round(weights("preact_resnet164") / 1e6, 1) == 1.7
  assert round(weights("preact_resnet1001") / 1e6, 1) == 10.2


# --- shortcut options -----------------------------------------------------------------------------
def test_option_a_has_no_shortcut_parameters():
  params = shapes_of(get_model("resnet20"))["params"]
  assert not [p for p in flat_names(params) if "shortcut" in p]
  # B adds exactly the two projections where the shape changes (16->32, 32->64), with BN.
  b = n_params(shapes_of(get_model("resnet20", shortcut="B"))["params"])
  assert b - n_params(params) == conv_p(1, 16, 32) + bn_p(32) + conv_p(1, 32, 64) + bn_p(64)


def test_option_c_projects_every_block_and_has_more_parameters_than_b():
  b = shapes_of(get_model("resnet18", shortcut="B"))["params"]
  c = shapes_of(get_model("resnet18", shortcut="C"))["params"]
  blocks = [k for k in c if k.startswith("stage")]
  assert all("shortcut_conv" in c[k] and "shortcut_bn" in c[k] for k in blocks)
  assert sorted(k for k in b if "shortcut_conv" in b[k]) == [
    "stage2_block0",
    "stage3_block0",
    "stage4_block0",
  ]
  # C adds a 1x1 projection + BN to each of the 5 blocks that keep their shape.
  extra = sum(conv_p(1, w, w) + bn_p(w) for w in (64, 64, 128, 256, 512))
  assert n_params(c) - n_params(b) == extra
  assert count_params("resnet18", shortcut="C") == n_params(c)


def _count_adds(model, variables, x):
  """Number of `add` primitives in the forward pass, nested jaxprs (jitted helpers) included."""

  def count(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      total += eqn.primitive.name == "add"
      for param in eqn.params.values():
        inner = getattr(param, "jaxpr", param)
        if hasattr(inner, "eqns"):
          total += count(inner)
    return total

  return count(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x).jaxpr)


def test_plain_nets_have_no_shortcut_additions():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
  residual, plain = get_model("resnet20"), get_model("plain20")
  v_res, v_plain = cheap_variables(residual, 8), cheap_variables(plain, 8)
  assert shapes_of(residual)["params"].keys() == shapes_of(plain)["params"].keys()
  # Same layers; the residual net has exactly one more `add` per block (9 blocks).
  assert _count_adds(residual, v_res, x) - _count_adds(plain, v_plain, x) == 9

  # Behaviour: with every block's last BN scale zeroed, a plain net's first block outputs
  # relu(0) = 0, so the logits cannot depend on the image; a residual net still passes it on.
  def zero_last_bn(path, a):
    names = [k.key for k in path]
    return jnp.zeros_like(a) if names[-2:] == ["bn2", "scale"] else a

  for model, variables, depends in ((plain, v_plain, False), (residual, v_res, True)):
    variables = jax.tree_util.tree_map_with_path(zero_last_bn, variables)
    y = apply(model, variables, x)
    assert np.allclose(y[0], y[1]) != depends


def test_zero_init_last_bn_zeroes_exactly_the_last_bn_of_each_block():
  # Which scales are zero is decided by the initialiser; check it on a tiny resnet50 (the same
  # bottleneck blocks, one per stage, 1/16 the width).
  tiny = get_model(
    "resnet50", zero_init_last_bn=True, stage_sizes=(1, 1, 1, 1), width_multiplier=1 / 16
  )
  p = init(tiny, jnp.zeros((1, 16, 16, 1)))["params"]
  assert "stage1_block0/bn3/scale" in flat_names(p)
  for k, block in p.items():
    if k.startswith("stage"):
      assert not np.any(block["bn3"]["scale"]) and np.all(block["bn2"]["scale"] == 1)
      assert np.all(block["shortcut_bn"]["scale"] == 1)


# --- block numbers against an independent NumPy computation ----------------------------------
# The blocks written out in NumPy from the papers' definitions (He et al. 2015 §3.3 option A;
# He et al. 2016 Fig. 1(b) pre-activation), eval-mode BN with random statistics, float64.
def _np_conv(x, kernel, stride):
  """Bias-free conv, padding k // 2 on every side (torchvision's), NHWC x HWIO."""
  k = kernel.shape[0]
  p = k // 2
  x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h = (x.shape[1] - k) // stride + 1
  w = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], h, w, kernel.shape[-1]))
  for a in range(k):
    for b in range(k):
      patch = x[:, a : a + stride * h : stride, b : b + stride * w : stride, :]
      out += patch @ kernel[a, b]
  return out


def _np_bn(x, params, stats, eps=1e-5):
  return (x - stats["mean"]) / np.sqrt(stats["var"] + eps) * params["scale"] + params["bias"]


def _np_option_a(x, stride, channels):
  """Identity, strided subsampling and zero entries for the extra channels (paper §3.3, A)."""
  x = x[:, ::stride, ::stride, :]
  return np.concatenate([x, np.zeros(x.shape[:3] + (channels - x.shape[-1],))], axis=-1)


def _np_block(x, p, s, *, preact, shortcut, convs):
  """``convs``: [(name index, stride)] of the residual branch, in order."""
  relu = lambda v: np.maximum(v, 0)
  bn = lambda i, v: _np_bn(v, p[f"bn{i}"], s[f"bn{i}"])
  out_channels = p[f"conv{convs[-1][0]}"]["kernel"].shape[-1]
  stride = max(st for _, st in convs)
  if preact:  # BN-ReLU-conv, nothing after the addition; a projection sees the activated input
    y = relu(bn(1, x))
    if shortcut == "A":
      identity = _np_option_a(x, stride, out_channels)
    else:
      identity = _np_conv(y, p["shortcut_conv"]["kernel"], stride)
    for j, (i, st) in enumerate(convs):
      y = relu(bn(i, y)) if j else y
      y = _np_conv(y, p[f"conv{i}"]["kernel"], st)
    return y + identity
  y = x
  for j, (i, st) in enumerate(convs):
    y = bn(i, _np_conv(y, p[f"conv{i}"]["kernel"], st))
    y = relu(y) if j < len(convs) - 1 else y
  if shortcut == "A":
    identity = _np_option_a(x, stride, out_channels)
  else:
    identity = _np_bn(
      _np_conv(x, p["shortcut_conv"]["kernel"], stride), p["shortcut_bn"], s["shortcut_bn"]
    )
  return relu(y + identity)


@pytest.mark.parametrize(
  "block, preact, shortcut, convs",
  [
    ("basic", False, "A", [(1, 2), (2, 1)]),  # the paper's CIFAR nets (§4.2)
    ("basic", True, "A", [(1, 2), (2, 1)]),
    ("basic", True, "B", [(1, 2), (2, 1)]),
    ("bottleneck", True, "B", [(1, 1), (2, 2), (3, 1)]),  # preact_resnet164's unit
  ],
)
def test_block_outputs_match_an_independent_numpy_block(block, preact, shortcut, convs):
  from resnet_jax.models import blocks

  planes = 4 if block == "basic" else 2
  module = blocks.BLOCKS[block](planes, stride=2, shortcut=shortcut, preact=preact)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)  # odd width: the strided edge
  shapes = jax.eval_shape(lambda k: module.init(k, x, train=False), KEY)
  # Random parameters and running statistics, so every term of the block shows in the output.
  variables = jax.tree_util.tree_map_with_path(
    lambda path, a: (
      rng.uniform(0.5, 1.5, a.shape)
      if path[-1].key in ("var", "scale")
      else rng.normal(size=a.shape)
    ).astype(np.float32),
    shapes,
  )
  got = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x))
  want = _np_block(
    x.astype(np.float64),
    variables["params"],
    variables["batch_stats"],
    preact=preact,
    shortcut=shortcut,
    convs=convs,
  )
  assert got.shape == want.shape == (2, 3, 4, planes * module.expansion)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- multiply-adds --------------------------------------------------------------------------------
# Paper Table 1 "FLOPs" (multiply-adds), stride on the first 1x1 of the bottleneck (v1).
PAPER_GMACS = {
  "resnet18": 1.8,
  "resnet34": 3.6,
  "resnet50": 3.8,
  "resnet101": 7.6,
  "resnet152": 11.3,
}


@pytest.mark.parametrize("name", list(PAPER_GMACS))
def test_multiply_adds_match_paper_table1(name):
  macs = count_macs(name, 224, stride_on="1x1")
  assert macs / 1e9 == pytest.approx(PAPER_GMACS[name], rel=0.03)


def test_v15_resnet50_multiply_adds():
  assert count_macs("resnet50") / 1e9 == pytest.approx(4.1, rel=0.01)  # torchvision's 4.09G
  assert count_macs("resnet50") > count_macs("resnet50", stride_on="1x1")


def test_analytic_macs_agree_with_xla_cost_analysis():
  """XLA counts 2 flops per multiply-add, skips taps on zero padding, and adds BN/ReLU/pool/add
  flops; the padding-aware analytic count must explain all but those few percent."""
  for name, size, tol in [("resnet20", 32, 0.04), ("resnet18", 64, 0.02)]:
    model = get_model(name, conv_impl="xla")  # XLA's cost analysis does not see oneDNN's calls
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    compiled = jax.jit(model.apply).lower(shapes_of(model, size), x).compile()
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    valid = count_macs(name, size, exclude_padding=True)
    assert 1.0 <= flops / (2 * valid) <= 1.0 + tol, (name, flops, valid)
    assert valid < count_macs(name, size)


@pytest.mark.parametrize("stride_on", ["3x3", "1x1"])
def test_layer_table_spatial_sizes_match_the_flax_model(stride_on):
  """The analytic walk and the Flax model agree conv by conv (so the MAC count is of this model)."""
  model = get_model("resnext50_32x4d", stride_on=stride_on)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
    shapes_of(model, 64),
    x,
  )
  inter = state["intermediates"]
  for layer in layer_table(model, 64):
    if layer.kind != "conv":
      continue
    node = inter
    for part in layer.name.split("/"):
      node = node[part]
    (out,) = node["__call__"]
    assert out.shape == (1, *layer.out_hw, layer.cout), layer.name
  s = 2 if stride_on == "1x1" else 1  # paper v1: the first 1x1 of conv3_1 strides
  assert inter["stage2_block0"]["conv1"]["__call__"][0].shape[1] == 16 // s


def test_a_new_block_type_is_counted_from_its_layout_and_an_unknown_one_refused(monkeypatch):
  """A block type is its layout (architecture.py), which the Flax block builds and the analytic
  count reads: a new one is counted right without touching flops.py, an unknown name is refused."""
  from resnet_jax.models import architecture, blocks
  from resnet_jax.models.resnet import ResNet

  assert set(blocks.BLOCKS) == set(architecture.BLOCK_LAYOUTS)
  for name, block in blocks.BLOCKS.items():
    assert issubclass(block, architecture.BLOCK_LAYOUTS[name]), name

  class TripleLayout(architecture.BlockLayout):  # three 3x3 convs, the last at twice the width
    expansion = 2

    def branch(self):
      p, s = self.planes, self.stride
      conv = architecture.BranchConv
      return [conv(1, p, 3, s), conv(2, p, 3), conv(3, self.out_channels, 3)]

  class TripleBlock(blocks._Block, TripleLayout):
    pass

  monkeypatch.setitem(architecture.BLOCK_LAYOUTS, "triple", TripleLayout)
  monkeypatch.setitem(blocks.BLOCKS, "triple", TripleBlock)
  model = ResNet(
    stage_sizes=(1, 2), stage_widths=(8, 16), block="triple", stem="cifar", stem_width=8,
    num_classes=10, se_ratio=0.25,
  )  # fmt: skip
  assert count_params(model) == n_params(shapes_of(model, 16)["params"])
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
    shapes_of(model, 16),
    x,
  )
  convs = [layer for layer in layer_table(model, 16) if layer.kind == "conv"]
  assert len(convs) == 1 + 3 * 3 + 2  # stem, three per block, two projections (8->16, 16->32)
  for layer in convs:
    node = state["intermediates"]
    for part in layer.name.split("/"):
      node = node[part]
    assert node["__call__"][0].shape == (1, *layer.out_hw, layer.cout), layer.name
  with pytest.raises(ValueError, match="block must be one of .*got 'nonexistent'"):
    count_macs(model.clone(block="nonexistent"))


# --- forward passes -------------------------------------------------------------------------------
CIFAR_NAMES = [n for n in list_models() if model_spec(n).family == "cifar"]


def test_every_cifar_model_gives_logits_of_the_right_shape():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  # A trace of a 1,000-layer net takes seconds (9 s unrolled): resnet1202 is traced once, with its
  # identical blocks scanned (0.25 s; the same parameters -- test_bench holds the two layouts
  # equal), for its parameter count. The deeper nets of a family repeat its 20-layer net's blocks
  # (preact_resnet1001 those of preact_resnet164), so one net per block kind is traced and the
  # rest give their head from the layer table (resnet32..110 are also traced, by init, in
  # test_cifar_param_counts_match_paper).
  traced = ("resnet20", "plain20", "preact_resnet20", "preact_resnet164", "resnet1202")
  for name in CIFAR_NAMES:
    head = layer_table(name)[-1]
    assert head.kind == "dense" and head.cout == 10 and head.out_hw == (1, 1), name
  for name in traced:
    model = get_model(name, scan_blocks=name == "resnet1202")
    if name in ("resnet20", "plain20", "preact_resnet20"):  # real (compiled) forward passes
      y = apply(model, cheap_variables(model, 32), x)
      assert np.all(np.isfinite(y))
    else:  # traced only (one trace of init + forward): resnet1202 etc. are slow on one core
      y, variables = jax.eval_shape(model.init_with_output, KEY, x)
      if name == "resnet1202":
        assert n_params(variables["params"]) == cifar_closed_form(200)
    assert y.shape == (2, 10) and y.dtype == jnp.float32, name


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_models_run_on_small_and_grayscale_images(name):
  model = get_model(name)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3)), jnp.float32)
  y = apply(model, cheap_variables(model, 64), x)
  assert y.shape == (1, 1000) and np.all(np.isfinite(y))
  # The bundled digits: 28x28x1 grayscale, 10 classes.
  digits = get_model(name, num_classes=10)
  digit_shapes = shapes_of(digits, 28, 1)
  y = jax.eval_shape(
    lambda v, x: digits.apply(v, x),
    digit_shapes,
    jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32),
  )
  assert y.shape == (4, 10)
  assert digit_shapes["params"]["stem_conv"]["kernel"].shape == (7, 7, 1, 64)


TINY = dict(stage_sizes=(1, 1, 1))  # a 3-block CIFAR net: every code path, a fraction of the time


@functools.lru_cache(maxsize=None)
def tiny_variables():
  """Real (initialiser-made) variables of the tiny net, shared: init compiles once."""
  return init(get_model("resnet20", **TINY), jnp.zeros((1, 8, 8, 3)))


def test_train_and_eval_differ_only_in_batchnorm_statistics():
  """With momentum 0 one train step stores the batch's own statistics; evaluating with them
  reproduces the train-mode output, so BN is the only train/eval difference."""
  model = get_model("resnet20", bn_momentum=0.0, **TINY)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 16, 16, 3)), jnp.float32)
  variables = tiny_variables()
  y_train, updated = apply(model, variables, x, train=True, mutable=["batch_stats"])
  evaluate = forward(model, train=False)
  y_eval_init = evaluate(variables, x)
  y_eval_batch = evaluate({"params": variables["params"], **updated}, x)
  np.testing.assert_allclose(y_eval_batch, y_train, rtol=1e-4, atol=1e-4)
  assert not np.allclose(y_eval_init, y_train, atol=1e-3)
  assert updated["batch_stats"].keys() == variables["batch_stats"].keys()


def test_bn_axis_name_gives_cross_replica_statistics():
  """Two replicas (vmap stands in for pmap) with bn_axis_name see the statistics of the whole
  batch: the same outputs and running stats as one replica holding both halves."""
  x = jnp.asarray(np.random.default_rng(4).standard_normal((8, 8, 8, 3)), jnp.float32)
  variables = tiny_variables()
  one = get_model("resnet20", **TINY)
  y_one, s_one = apply(one, variables, x, train=True, mutable=["batch_stats"])
  synced = get_model("resnet20", bn_axis_name="batch", **TINY)
  step = lambda xr: synced.apply(variables, xr, train=True, mutable=["batch_stats"])  # noqa: E731
  y_rep, s_rep = jax.jit(jax.vmap(step, axis_name="batch"))(x.reshape(2, 4, 8, 8, 3))
  np.testing.assert_allclose(y_rep.reshape(8, 10), y_one, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(s_rep), jax.tree_util.tree_leaves(s_one)):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-5)


def test_tiny_model_gradients_are_finite_and_reach_the_stem():
  model = get_model("resnet20", **TINY)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8, 8, 3)), jnp.float32)
  labels = jnp.arange(4) % 10
  variables = tiny_variables()

  def loss(params):
    logits, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  grads = jax.jit(jax.grad(loss))(variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert np.any(grads["stem_conv"]["kernel"] != 0)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 3)), jnp.float32)
  f32 = get_model("resnet20", **TINY)
  bf16 = get_model("resnet20", dtype=jnp.bfloat16, **TINY)
  variables = tiny_variables()
  assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
  y16, y32 = apply(bf16, variables, x), apply(f32, variables, x)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, rtol=0.1, atol=0.1)
  assert not np.array_equal(y16, y32)  # it really computed in bfloat16
  jaxpr = jax.make_jaxpr(lambda v, x: bf16.apply(v, x))(variables, x)
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert convs and all(e.invars[0].aval.dtype == jnp.bfloat16 for e in convs)


def test_conv_kernels_are_standard_shapes_and_named_for_import():
  p = shapes_of(get_model("resnext50_32x4d"))["params"]
  assert p["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  assert p["stage1_block0"]["conv2"]["kernel"].shape == (3, 3, 128 // 32, 128)  # grouped 3x3
  assert p["head"]["kernel"].shape == (2048, 1000) and p["head"]["bias"].shape == (1000,)
  names = flat_names(shapes_of(get_model("resnet50"))["params"])
  assert {
    f"stage1_block0/{m}/{w}"
    for m in ("bn1", "bn2", "bn3", "shortcut_bn")
    for w in ("scale", "bias")
  } <= names
  assert not [n for n in names if "conv" in n and n.endswith("bias")]  # convs are bias-free
  assert "final_bn/scale" in flat_names(shapes_of(get_model("preact_resnet18"))["params"])


# --- registry -------------------------------------------------------------------------------------
def test_registry_lists_the_zoo_with_native_sizes():
  names = set(list_models())
  for depth in (18, 34, 50, 101, 152):
    assert {f"resnet{depth}", f"plain{depth}", f"preact_resnet{depth}"} <= names
  for depth in (20, 32, 44, 56, 110, 1202):
    assert {f"resnet{depth}", f"plain{depth}"} <= names
  assert {
    "preact_resnet164",
    "preact_resnet1001",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
  } <= names
  s = model_spec("resnet50")
  assert (s.family, s.image_size, s.num_classes) == ("imagenet", 224, 1000)
  s = model_spec("resnet110")
  assert (s.family, s.image_size, s.num_classes) == ("cifar", 32, 10)
  m = get_model("resnet50")
  assert (m.shortcut, m.stride_on, m.num_classes) == ("B", "3x3", 1000)
  assert get_model("resnet20").shortcut == "A"
  assert get_model("resnet18", num_classes=10).num_classes == 10


def test_overrides_are_resnet_fields():
  m = get_model(
    "resnet50",
    shortcut="C",
    stride_on="1x1",
    zero_init_last_bn=True,
    bn_axis_name="batch",
    width_multiplier=0.5,
    param_dtype=jnp.float32,
  )
  assert (m.shortcut, m.stride_on, m.bn_axis_name, m.width_multiplier) == ("C", "1x1", "batch", 0.5)
  with pytest.raises(ValueError, match="shortcutt.*valid keys.*shortcut"):
    get_model("resnet50", shortcutt="A")


def test_unknown_model_name_lists_close_matches():
  with pytest.raises(ValueError, match="resnet50") as err:
    get_model("resnet51")
  assert "Did you mean" in str(err.value)
  with pytest.raises(ValueError, match="resnext50_32x4d"):
    model_spec("resnext50")


def test_model_table_lists_params_and_multiply_adds():
  table = format_model_table(["resnet18", "resnet50", "resnet20"])
  lines = table.splitlines()
  assert "params" in lines[0] and "mult-adds" in lines[0]
  assert any(l.startswith("resnet18") and "11,689,512" in l and "1.81G" in l for l in lines)
  assert any(l.startswith("resnet50") and "25,557,032" in l and "4.09G" in l for l in lines)
  assert any(l.startswith("resnet20") and "269,722" in l and "40.6M" in l for l in lines)


# --- timm's variants: ResNet-C/D (Bag of Tricks) and squeeze-and-excitation ----------------------
# sum(p.numel() for p in timm.create_model(name).parameters()), timm's own model cards.
TIMM = {
  "resnet18d": 11708744,
  "resnet34d": 21816904,
  "resnet50d": 25576264,
  "resnet101d": 44568392,
  "resnet152d": 60212040,
  "seresnet50": 28088024,
  "seresnet101": 49326872,
  "seresnext50_32x4d": 27559896,
}


def se_reduced(c):
  """timm's SEModule width: make_divisible(c / 16, 8, round_limit=0), written out."""
  return max(8, int(c / 16 + 8 / 2) // 8 * 8)


def timm_closed_form(name):
  """torchvision's count plus what timm changes: the 32-32-64 deep stem in place of the 7x7 (the
  average pool of the D shortcut has no parameters), or an SE module (two 1x1 convs with bias)
  after the last BN of every block."""
  depth = int(re.search(r"res(?:net|next)(\d+)", name)[1])
  block, sizes = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
  }[depth]
  groups, wpg = (32, 4) if "resnext" in name else (1, 64)
  total = imagenet_closed_form(block, sizes, groups, wpg)
  if re.fullmatch(r"resnet\d+d", name):
    deep = conv_p(3, 3, 32) + bn_p(32) + conv_p(3, 32, 32) + bn_p(32) + conv_p(3, 32, 64)
    total += deep - conv_p(7, 3, 64)
  if name.startswith("se"):
    for n, planes in zip(sizes, (64, 128, 256, 512)):
      c = planes * (4 if block == "bottleneck" else 1)
      total += n * (2 * c * se_reduced(c) + se_reduced(c) + c)
  return total


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_variant_param_counts_equal_timm(name):
  assert timm_closed_form(name) == TIMM[name]
  assert n_params(shapes_of(get_model(name))["params"]) == TIMM[name]
  assert count_params(name) == TIMM[name]


def test_timm_variants_are_named_for_import():
  """The deep stem, D shortcut and SE parameters under the names documented in resnet.py."""
  params = shapes_of(get_model("resnet50d"))["params"]
  shapes = {k: v.shape for k, v in flat_shapes(params).items()}
  assert "stem_conv/kernel" not in shapes and "stem_bn/scale" not in shapes
  assert shapes["stem_conv1/kernel"] == (3, 3, 3, 32)
  assert shapes["stem_conv2/kernel"] == (3, 3, 32, 32)
  assert shapes["stem_conv3/kernel"] == (3, 3, 32, 64)
  assert shapes["stem_bn3/scale"] == (64,)
  assert shapes["stage1_block0/shortcut_conv/kernel"] == (1, 1, 64, 256)  # stride 1: no pool
  assert shapes["stage2_block0/shortcut_conv/kernel"] == (1, 1, 256, 512)
  assert not any("se/" in k for k in shapes)
  params = shapes_of(get_model("seresnext50_32x4d"))["params"]
  shapes = {k: v.shape for k, v in flat_shapes(params).items()}
  assert shapes["stage1_block0/se/fc1/kernel"] == (1, 1, 256, 16)
  assert shapes["stage1_block0/se/fc1/bias"] == (16,)
  assert shapes["stage4_block2/se/fc2/kernel"] == (1, 1, 128, 2048)
  assert shapes["stage4_block2/se/fc2/bias"] == (2048,)
  assert shapes["stage1_block0/conv2/kernel"] == (3, 3, 4, 128)  # 32 groups of 4
  assert shapes["stem_conv/kernel"] == (7, 7, 3, 64)


def test_in_channels_reads_either_stem():
  assert in_channels(shapes_of(get_model("resnet18d"), channels=1)["params"]) == 1
  assert in_channels(shapes_of(get_model("resnet20"), channels=3)["params"]) == 3


def flat_shapes(tree):
  return {
    "/".join(k.key for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


@pytest.mark.parametrize("name", ["resnet50d", "seresnext50_32x4d", "resnet18d"])
def test_layer_table_follows_the_deep_stem_and_pooled_shortcut(name):
  """At 72 px the maps reach odd sizes (9 -> 5 -> 3): the ceil-mode pool and the table agree."""
  model = get_model(name, width_multiplier=0.25)
  x = jax.ShapeDtypeStruct((1, 72, 72, 3), jnp.float32)
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
    shapes_of(model, 72),
    x,
  )
  convs = 0
  for layer in layer_table(model, 72):
    if layer.kind == "bn":
      continue
    node = state["intermediates"]
    for part in layer.name.split("/"):
      node = node[part]
    (out,) = node["__call__"]
    if layer.kind == "conv":
      convs += 1
      assert out.shape == (1, *layer.out_hw, layer.cout), layer.name
    else:  # SE's fully connected layers on the pooled features
      assert out.shape == (1, layer.cout), layer.name
  assert convs > 0 and count_macs(model, 72) > 0


def test_resnet_d_shortcut_pool_equals_torch_avg_pool_ceil_mode():
  torch = pytest.importorskip("torch")
  from resnet_jax.models.blocks import avg_pool_down

  rng = np.random.default_rng(0)
  pool = torch.nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
  for h, w in [(8, 8), (9, 7), (5, 6), (1, 3), (2, 1)]:
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    want = pool(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    got = np.asarray(avg_pool_down(jnp.asarray(x), 2))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=str((h, w)))


def test_squeeze_excite_against_its_formula():
  from resnet_jax.models.blocks import SqueezeExcite

  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 4, 5, 32)).astype(np.float32)
  se = SqueezeExcite(8)
  variables = se.init(KEY, x)
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  s = x.mean(axis=(1, 2))
  s = np.maximum(s @ p["fc1"]["kernel"][0, 0] + p["fc1"]["bias"], 0)
  s = s @ p["fc2"]["kernel"][0, 0] + p["fc2"]["bias"]
  want = x / (1 + np.exp(-s))[:, None, None, :]
  np.testing.assert_allclose(se.apply(variables, x), want, rtol=1e-5, atol=1e-6)
  assert [se_reduced(c) for c in (64, 256, 512, 1024, 2048)] == [8, 16, 32, 64, 128]


# --- stochastic depth -----------------------------------------------------------------------------
def test_drop_path_rates_rise_linearly_over_the_blocks_as_in_timm():
  model = get_model("resnet50", drop_path_rate=0.1)
  rates = model._drop_path_rates()  # pylint: disable=protected-access
  assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
  assert rates == pytest.approx([0.1 * k / 15 for k in range(16)])


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_drop_path_rate_outside_unit_interval_is_refused_in_one_line(rate):
  with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\)") as err:
    get_model("resnet18", drop_path_rate=rate)
  assert "\n" not in str(err.value)
  from resnet_jax.models.resnet import ResNet

  with pytest.raises(ValueError, match="drop_path_rate"):
    shapes_of(ResNet(drop_path_rate=rate))
  with pytest.raises(ValueError, match="residual"):
    shapes_of(get_model("plain18", drop_path_rate=0.1))


def tiny_drop_net(**kw):
  return get_model(
    "resnet18d", width_multiplier=0.125, stage_sizes=(1, 3), stage_widths=(64, 128), **kw
  )


@pytest.mark.parametrize("scan", [False, True])
def test_drop_path_is_the_identity_at_eval_and_draws_per_key_in_training(scan):
  x = jnp.asarray(np.random.default_rng(2).standard_normal((8, 16, 16, 3)), jnp.float32)
  plain, dropped = (
    tiny_drop_net(scan_blocks=scan),
    tiny_drop_net(drop_path_rate=0.5, scan_blocks=scan),
  )
  variables = init(plain, x)
  # No parameters of its own (traced, not compiled: only the names are compared).
  names = flat_names(jax.eval_shape(lambda k, x: dropped.init(k, x, train=False), KEY, x))
  assert names == flat_names(variables)
  np.testing.assert_array_equal(apply(plain, variables, x), apply(dropped, variables, x))

  # One compiled train step per model, called with each key.
  steps = [
    jax.jit(
      lambda v, x, k, m=m: m.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k})
    )
    for m in (plain, dropped)
  ]

  def train(model, key):
    return steps[model is dropped](variables, x, key)[0]

  a, b = train(dropped, jax.random.key(1)), train(dropped, jax.random.key(2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, train(dropped, jax.random.key(1)))  # deterministic per key
  assert not np.allclose(a, train(plain, jax.random.key(1)))


def test_drop_path_drops_samples_at_the_rate_and_scales_the_kept():
  """A pre-activation block's output is branch + x: dropped examples give x exactly, kept ones
  x + branch / (1 - p); over 2000 examples the dropped fraction is p within 4 standard errors."""
  from resnet_jax.models.blocks import BasicBlock

  p, n = 0.25, 2000
  one = np.random.default_rng(3).standard_normal((1, 6, 6, 4)).astype(np.float32)
  x = jnp.asarray(np.tile(one, (n, 1, 1, 1)))
  block = BasicBlock(4, preact=True, drop_path=p)
  variables = BasicBlock(4, preact=True).init(KEY, x[:1])

  def run(b, **rngs):
    return b.apply(variables, x, True, mutable=["batch_stats"], rngs=rngs)[0]

  branch = np.asarray(run(BasicBlock(4, preact=True)) - x)[0]
  out = np.asarray(run(block, dropout=jax.random.key(4)) - x)
  dropped = np.all(out == 0, axis=(1, 2, 3))
  assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n), dropped.mean()
  np.testing.assert_allclose(
    out[~dropped], np.broadcast_to(branch / (1 - p), out[~dropped].shape), rtol=1e-5, atol=1e-5
  )


def test_model_table_lists_timm_variants_with_multiply_adds():
  table = format_model_table(["resnet50d", "seresnet50", "seresnext50_32x4d"])
  rows = {line.split()[0]: line for line in table.splitlines()[2:]}
  assert "25,576,264" in rows["resnet50d"] and "4.33G" in rows["resnet50d"]
  assert "28,088,024" in rows["seresnet50"] and "4.09G" in rows["seresnet50"]
  assert "27,559,896" in rows["seresnext50_32x4d"] and "4.23G" in rows["seresnext50_32x4d"]
  # ResNet-D's stem: 3x3/2 convs at 112 px (32: 3*32*9, 32*32*9, 32*64*9 per position) in place
  # of the 7x7/2; its shortcuts' 1x1 convs act after the pool, at the same size as the strided 1x1.
  stem_c = 112 * 112 * 9 * (3 * 32 + 32 * 32 + 32 * 64)
  assert count_macs("resnet50d") - count_macs("resnet50") == stem_c - 112 * 112 * 49 * 3 * 64
