"""The one PyTorch ResNet: independent of ``resnet_jax``, so that tests and benchmarks can check it.

:class:`ResNet` takes every choice as an argument -- block type, blocks per stage, widths, stem
(``'imagenet'``, ``'cifar'``, ``'deep'``), shortcut option (``'A'``, ``'B'``, ``'C'``, ``'D'``,
``'none'``), groups and width per group, stride placement, squeeze-and-excitation -- and reads
nothing of ``resnet_jax``.  Its state-dict keys are torchvision's (``conv1``, ``bn1``,
``layer{i}.{j}.conv{k}``/``bn{k}``, ``downsample.{0,1}``, ``fc``); the options only timm has use
timm's keys (deep stem ``conv1.{0,1,3,4,6}``, average-pool shortcut ``downsample.{1,2}`` after the
parameter-free ``downsample.0``, ``se.fc{1,2}``).  So the net of a torchvision name has
torchvision's state dict and the net of a timm name timm's, for the names of :data:`TORCHVISION`
and :data:`TIMM` (what those libraries register); :func:`create` builds one with random weights
and non-trivial BN statistics.

Neither library is installed for the tests: torchvision from the index does not load beside the
CPU build of torch used here (``operator torchvision::nms does not exist``), and timm imports it.
The module names, shapes and forward pass were checked line by line against
``torchvision/models/resnet.py`` (``BasicBlock``, ``Bottleneck`` with the v1.5 stride on the 3x3,
``_make_layer``, ``ResNet``) and against timm's source, huggingface/pytorch-image-models at commit
00c5be7656cd8aa102138d388c323a4f6181dde6 (timm 1.0.x): ``timm/models/resnet.py`` (``Bottleneck``
width ``floor(planes * base_width / 64) * cardinality``, ``se`` after the last BN and before the
residual add, ``downsample_conv``, ``downsample_avg`` with ``AvgPool2d(2, stride, ceil_mode=True,
count_include_pad=False)`` or ``Identity`` at stride 1, the deep stem of widths ``(stem_width,
stem_width, 2 * stem_width)``, and the registered variants) and ``timm/layers/squeeze_excite.py``
at 0d4c04f3497fcb3987174a43ab4836564e8ecd54 (``SEModule``: ``fc1``/``fc2`` 1x1 convs with bias,
ReLU, sigmoid gate, reduced width ``make_divisible(C * rd_ratio, 8, round_limit=0)``).  The
full-size nets have the two libraries' published parameter counts (tests/test_weights.py).
Dropout, drop-path and anti-aliasing are left out: this is the eval-mode network.  Pre-activation
nets are not written here.

The benchmarks' side, at the end: :func:`torch_resnet` translates the registry's config of a model
into these arguments, :func:`torch_train_step` is one eager training step of it, and
:func:`worker` runs that step in a Python process of its own (started by
``resnet_jax.bench.reference.TorchApart``)::

    python benchmarks/torch_reference.py '{"model": "resnet20", "batch": 8, "image_size": 32}'

The worker writes one JSON line of versions, then for each step count it reads on stdin one JSON
line of step times.  A developer tool: it lives in the checkout, not in the installed package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable

EXTRA_HINT = "pip install 'resnet-jax[bench]' (torch==2.13.0, CPU build)"

try:
  import torch
  from torch import nn
except ImportError as e:  # the worker's last line, which bench turns into its one-line error
  raise ImportError(f"the PyTorch reference needs PyTorch: {EXTRA_HINT}") from e

STEMS = ("imagenet", "cifar", "deep")
SHORTCUTS = ("A", "B", "C", "D", "none")

# name -> ResNet arguments, as torchvision's model functions pass them.
TORCHVISION = {
  "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
  "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
  "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
  "resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
  "resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3)),
  "resnext50_32x4d": dict(block="bottleneck", layers=(3, 4, 6, 3), groups=32, base_width=4),
  "resnext101_32x8d": dict(block="bottleneck", layers=(3, 4, 23, 3), groups=32, base_width=8),
  "resnext101_64x4d": dict(block="bottleneck", layers=(3, 4, 23, 3), groups=64, base_width=4),
  "wide_resnet50_2": dict(block="bottleneck", layers=(3, 4, 6, 3), base_width=128),
  "wide_resnet101_2": dict(block="bottleneck", layers=(3, 4, 23, 3), base_width=128),
}
# name -> ResNet arguments, as timm's registered model functions pass them: torchvision's names
# (the same nets and keys) and timm's own variants.
_D = dict(stem="deep", stem_width=32, shortcut="D")  # timm: stem_type='deep', avg_down=True
_SE = dict(se_ratio=1 / 16)  # timm: block_args=dict(attn_layer='se')
TIMM = {
  **TORCHVISION,
  "resnet18d": dict(block="basic", layers=(2, 2, 2, 2), **_D),
  "resnet34d": dict(block="basic", layers=(3, 4, 6, 3), **_D),
  "resnet50d": dict(block="bottleneck", layers=(3, 4, 6, 3), **_D),
  "resnet101d": dict(block="bottleneck", layers=(3, 4, 23, 3), **_D),
  "resnet152d": dict(block="bottleneck", layers=(3, 8, 36, 3), **_D),
  "seresnet50": dict(block="bottleneck", layers=(3, 4, 6, 3), **_SE),
  "seresnet101": dict(block="bottleneck", layers=(3, 4, 23, 3), **_SE),
  "seresnext50_32x4d": dict(
    block="bottleneck", layers=(3, 4, 6, 3), groups=32, base_width=4, **_SE
  ),
}

# Published parameter counts for 1000 classes (torchvision's docs and timm's model cards agree on
# the names they share).
PARAM_COUNTS = {
  "resnet18": 11_689_512,
  "resnet50": 25_557_032,
  "resnet18d": 11_708_744,
  "resnet34d": 21_816_904,
  "resnet50d": 25_576_264,
  "resnet101d": 44_568_392,
  "seresnet50": 28_088_024,
  "seresnext50_32x4d": 27_559_896,
}


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
  """timm.layers.helpers.make_divisible."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < round_limit * v:
    new_v += divisor
  return new_v


class SEModule(nn.Module):
  """timm.layers.squeeze_excite.SEModule (divisor 8, bias, ReLU, sigmoid gate)."""

  def __init__(self, channels, rd_ratio=1 / 16):
    super().__init__()
    rd = make_divisible(channels * rd_ratio, 8, round_limit=0.0)
    self.fc1 = nn.Conv2d(channels, rd, kernel_size=1, bias=True)
    self.bn = nn.Identity()
    self.act = nn.ReLU(inplace=True)
    self.fc2 = nn.Conv2d(rd, channels, kernel_size=1, bias=True)
    self.gate = nn.Sigmoid()

  def forward(self, x):
    s = x.mean((2, 3), keepdim=True)
    s = self.fc2(self.act(self.bn(self.fc1(s))))
    return x * self.gate(s)


def _downsample(cin, out, stride, shortcut):
  """The projection shortcut, or None: torchvision's ``Sequential(conv1x1, bn)`` (B where the
  shape changes, C always), or timm's ``downsample_avg`` (D where the shape changes)."""
  changes = stride != 1 or cin != out
  if shortcut == "C" or (shortcut == "B" and changes):
    return nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
  if shortcut == "D" and changes:
    pool = (
      nn.Identity()
      if stride == 1
      else nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
    )
    return nn.Sequential(pool, nn.Conv2d(cin, out, 1, bias=False), nn.BatchNorm2d(out))
  return None


class _Residual(nn.Module):
  """What both blocks share after their branch: SE, the shortcut, the addition and the ReLU."""

  def _add_shortcut(self, cin, out, stride, shortcut, se_ratio):
    if shortcut not in SHORTCUTS:
      raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    self.se = SEModule(out, se_ratio) if se_ratio > 0 else None
    self.downsample = _downsample(cin, out, stride, shortcut)
    self.relu = nn.ReLU(inplace=True)
    self.shortcut, self.stride, self.extra = shortcut, stride, out - cin

  def _join(self, y, x):
    if self.se is not None:
      y = self.se(y)
    if self.shortcut == "none":  # a plain net: no addition
      return self.relu(y)
    if self.downsample is not None:
      identity = self.downsample(x)
    elif self.shortcut == "A":  # subsample, and zeros for the extra channels
      identity = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
      if self.extra:
        identity = nn.functional.pad(identity, (0, 0, 0, 0, 0, self.extra))
    else:
      identity = x
    return self.relu(y + identity)


class BasicBlock(_Residual):
  """torchvision's BasicBlock: 3x3 (with the stride) -> 3x3."""

  expansion = 1

  def __init__(
    self,
    cin,
    planes,
    stride=1,
    *,
    shortcut="B",
    groups=1,
    base_width=64,
    stride_on="3x3",
    se_ratio=0.0,
  ):
    super().__init__()
    del stride_on  # the stride is on the first 3x3 either way
    if groups != 1 or base_width != 64:
      raise ValueError("BasicBlock only supports groups=1 and base_width=64")
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self._add_shortcut(cin, planes, stride, shortcut, se_ratio)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    return self._join(self.bn2(self.conv2(y)), x)


class Bottleneck(_Residual):
  """torchvision's Bottleneck: 1x1 -> 3x3 (grouped) -> 1x1 x4; the stride on the 3x3 (v1.5) or,
  with ``stride_on='1x1'``, on the first 1x1 (the paper)."""

  expansion = 4

  def __init__(
    self,
    cin,
    planes,
    stride=1,
    *,
    shortcut="B",
    groups=1,
    base_width=64,
    stride_on="3x3",
    se_ratio=0.0,
  ):
    super().__init__()
    width = int(math.floor(planes * (base_width / 64.0)) * groups)
    out = planes * self.expansion
    s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
    self.conv1 = nn.Conv2d(cin, width, 1, s1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, s3, padding=1, groups=groups, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self._add_shortcut(cin, out, stride, shortcut, se_ratio)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self._join(self.bn3(self.conv3(y)), x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """Stem, stages ``layer1..layerN`` (the first block of each stage after the first strides 2),
  global average pool and ``fc``.

  Args:
    block: ``'basic'`` or ``'bottleneck'``.
    layers: blocks per stage.
    widths: planes per stage (a block puts out ``planes * expansion`` channels).
    num_classes: outputs of ``fc``.
    stem: ``'imagenet'`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), ``'cifar'`` (3x3 conv, BN, ReLU)
      or ``'deep'`` (timm's three 3x3 convs at ``stem_width, stem_width, 2 * stem_width``, BN,
      ReLU, max-pool).
    stem_width: filters of the stem conv (deep stem: of its first two convs).
    shortcut: ``'A'`` (subsample and zero-pad), ``'B'`` (torchvision's projection where the shape
      changes), ``'C'`` (projection on every block), ``'D'`` (timm's ``avg_down``) or ``'none'``.
    groups, base_width: ResNeXt cardinality and width per group (bottleneck only).
    stride_on: ``'3x3'`` or ``'1x1'``, where a bottleneck strides.
    se_ratio: timm's squeeze-and-excitation in every block (0: none).
    in_channels: channels of the input images.
  """

  def __init__(
    self,
    block,
    layers,
    widths=(64, 128, 256, 512),
    num_classes=1000,
    *,
    stem="imagenet",
    stem_width=64,
    shortcut="B",
    groups=1,
    base_width=64,
    stride_on="3x3",
    se_ratio=0.0,
    in_channels=3,
  ):
    super().__init__()
    if stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if block not in BLOCKS:  # a block type of ours that is not written here is not timed as another
      raise ValueError(f"the PyTorch reference has blocks {tuple(BLOCKS)}, not {block!r}")
    if len(layers) != len(widths):
      raise ValueError("layers and widths must have the same length")
    block = BLOCKS[block]
    cin = 2 * stem_width if stem == "deep" else stem_width
    if stem == "deep":
      self.conv1 = nn.Sequential(
        nn.Conv2d(in_channels, stem_width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width, 3, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, cin, 3, padding=1, bias=False),
      )
    elif stem == "imagenet":
      self.conv1 = nn.Conv2d(in_channels, cin, 7, stride=2, padding=3, bias=False)
    else:
      self.conv1 = nn.Conv2d(in_channels, cin, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(cin)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, 2, padding=1)
    self.stages = []
    for i, (n, planes) in enumerate(zip(layers, widths)):
      blocks = []
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(
          block(
            cin,
            planes,
            stride,
            shortcut=shortcut,
            groups=groups,
            base_width=base_width,
            stride_on=stride_on,
            se_ratio=se_ratio,
          )
        )
        cin = planes * block.expansion
      self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
      self.stages.append(f"layer{i + 1}")
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for name in self.stages:
      x = getattr(self, name)(x)
    return self.fc(x.mean((2, 3)))


def create(name, *, layers=None, num_classes=1000, seed=0, device=None) -> ResNet:
  """torchvision's or timm's ``name`` (``layers``: other blocks per stage, for fast checks of deep
  nets), in eval mode, with random weights and non-trivial BN statistics; on ``device='meta'``
  only shapes."""
  config = dict(TIMM[name])  # holds torchvision's names too
  if layers is not None:
    config["layers"] = tuple(layers)
  torch.manual_seed(seed)
  with torch.device(device or "cpu"):
    net = ResNet(num_classes=num_classes, **config)
  if device == "meta":
    return net
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.Conv2d):  # variance-preserving, so logits stay O(1) through depth
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.weight[0].numel() ** -0.5)
        if m.bias is not None:
          m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))
      elif isinstance(m, nn.BatchNorm2d):  # non-trivial affine and running statistics
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=gen))
        m.bias.copy_(0.2 * torch.randn(c, generator=gen))
        m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        m.num_batches_tracked.fill_(1234)
      elif isinstance(m, nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.weight.shape[1] ** -0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
  return net.eval()


def num_params(net) -> int:
  return sum(p.numel() for p in net.parameters())


# --- the benchmarks' side: the registry's nets, timed ---------------------------------------------
def torch_resnet(
  model: str, num_classes: int | None = None, overrides: dict | None = None
) -> ResNet:
  """The registry's ``model`` (with ``overrides``) as a :class:`ResNet`: its config translated into
  the reference's arguments (what bench times, and what its tests count against ours)."""
  from resnet_jax.models import architecture, registry  # pylint: disable=g-import-not-at-top

  cfg = {f.name: f.default for f in dataclasses.fields(architecture.Architecture)}
  cfg.update(
    registry.model_config(
      model,
      num_classes=num_classes,
      **{k: v for k, v in (overrides or {}).items() if k in registry.OVERRIDABLE},
    )
  )
  if cfg["preact"]:
    raise ValueError("the PyTorch reference covers post-activation nets only (no preact)")
  width = lambda w: architecture.scaled(w, cfg["width_multiplier"])  # noqa: E731
  return ResNet(
    cfg["block"],
    tuple(cfg["stage_sizes"]),
    tuple(width(w) for w in cfg["stage_widths"]),
    cfg["num_classes"],
    stem=cfg["stem"],
    stem_width=width(cfg["stem_width"]),
    shortcut=cfg["shortcut"],
    groups=cfg["groups"],
    base_width=cfg["width_per_group"],
    stride_on=cfg["stride_on"],
    se_ratio=cfg["se_ratio"],
  )


def torch_train_step(
  model: str,
  batch: int,
  image_size: int,
  precision: str = "fp32",
  num_classes: int | None = None,
  overrides: dict | None = None,
) -> Callable[[], None]:
  """One PyTorch eager training step of ``model`` (channels_last, SGD with momentum 0.9 and weight
  decay 1e-4, random batch), run once already so that later calls are steady-state."""
  torch.manual_seed(0)
  net = torch_resnet(model, num_classes, overrides).to(memory_format=torch.channels_last)
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.CrossEntropyLoss()
  n_cls = net.fc.out_features
  x = torch.randn(batch, 3, image_size, image_size).to(memory_format=torch.channels_last)
  y = torch.randint(0, min(n_cls, 10), (batch,))

  def one_step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
      loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    loss.item()

  one_step()
  return one_step


def _time_steps(step_fn, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - t0)
  return times


def worker(args_json: str) -> None:
  """The PyTorch side of ``TorchApart``: one line in (a step count), one line out (times)."""
  one_step = torch_train_step(**json.loads(args_json))
  print(json.dumps({"torch_version": torch.__version__, "threads": torch.get_num_threads()}))
  sys.stdout.flush()
  for line in sys.stdin:
    print(json.dumps(_time_steps(one_step, int(line))))
    sys.stdout.flush()


if __name__ == "__main__":
  worker(sys.argv[1])
