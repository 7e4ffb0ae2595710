"""An independent PyTorch definition of timm's ResNet family, in timm's own state-dict key layout.

timm itself is not installed for the tests: it imports torchvision, and torchvision from the index
does not load beside the CPU build of torch used here (``operator torchvision::nms does not
exist``), while an unpinned torchvision pulls a CUDA torch of several GB.  So the weight-import
tests compare against this re-implementation instead.  Its module names, shapes and forward pass
were checked line by line against timm's source, huggingface/pytorch-image-models at commit
00c5be7656cd8aa102138d388c323a4f6181dde6 (timm 1.0.x):

* ``timm/models/resnet.py``: ``BasicBlock``, ``Bottleneck`` (width ``floor(planes * base_width /
  64) * cardinality``, stride on the 3x3, attention module ``se`` after the last BN and before the
  residual add), ``downsample_conv`` (``Sequential(conv1x1, bn)``), ``downsample_avg``
  (``Sequential(pool, conv1x1, bn)``, pool ``AvgPool2d(2, stride, ceil_mode=True,
  count_include_pad=False)`` or ``Identity`` at stride 1), ``make_blocks`` (``layer1..4``) and
  ``ResNet`` (``conv1`` a 7x7 conv, or for ``stem_type='deep'`` ``Sequential(conv3x3/2, bn, relu,
  conv3x3, bn, relu, conv3x3)`` of widths ``(stem_width, stem_width, 2 * stem_width)``; ``bn1``,
  ``act1``, ``maxpool`` 3x3/2; global average pool and ``fc``), and the registered variants
  (``resnet18d``: ``stem_width=32, stem_type='deep', avg_down=True``; ``seresnet50``:
  ``block_args=dict(attn_layer='se')``; ``seresnext50_32x4d``: ``cardinality=32, base_width=4``
  plus SE).
* ``timm/layers/squeeze_excite.py`` at 0d4c04f3497fcb3987174a43ab4836564e8ecd54: ``SEModule``
  (``fc1``/``fc2`` 1x1 convs with bias, ReLU, sigmoid gate; reduced width ``make_divisible(C / 16,
  8, round_limit=0)`` from ``timm/layers/helpers.py``), chosen by ``create_attn('se')`` in
  ``timm/layers/create_attn.py``.

The parameter counts of the full-size nets equal timm's published ones (tests/test_weights.py).
Dropout, drop-path, drop-block and anti-aliasing are training-time or unused options of these
names and are left out: this is the eval-mode network.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# timm name -> ResNet(...) arguments, as timm's registered model functions pass them.
_D = dict(stem_width=32, stem_type="deep", avg_down=True)
CONFIGS = {
  "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
  "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
  "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
  "resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
  "resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3)),
  "resnext50_32x4d": dict(block="bottleneck", layers=(3, 4, 6, 3), cardinality=32, base_width=4),
  "resnext101_32x8d": dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=32, base_width=8),
  "resnext101_64x4d": dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=64, base_width=4),
  "wide_resnet50_2": dict(block="bottleneck", layers=(3, 4, 6, 3), base_width=128),
  "wide_resnet101_2": dict(block="bottleneck", layers=(3, 4, 23, 3), base_width=128),
  "resnet18d": dict(block="basic", layers=(2, 2, 2, 2), **_D),
  "resnet34d": dict(block="basic", layers=(3, 4, 6, 3), **_D),
  "resnet50d": dict(block="bottleneck", layers=(3, 4, 6, 3), **_D),
  "resnet101d": dict(block="bottleneck", layers=(3, 4, 23, 3), **_D),
  "resnet152d": dict(block="bottleneck", layers=(3, 8, 36, 3), **_D),
  "seresnet50": dict(block="bottleneck", layers=(3, 4, 6, 3), se=True),
  "seresnet101": dict(block="bottleneck", layers=(3, 4, 23, 3), se=True),
  "seresnext50_32x4d": dict(
    block="bottleneck", layers=(3, 4, 6, 3), cardinality=32, base_width=4, se=True
  ),
}

# timm's parameter counts for 1000 classes (its model cards / ``timm.create_model(...)``).
TIMM_PARAM_COUNTS = {
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
  """timm.layers.squeeze_excite.SEModule with its defaults (rd_ratio 1/16, divisor 8, bias)."""

  def __init__(self, channels):
    super().__init__()
    rd = make_divisible(channels / 16, 8, round_limit=0.0)
    self.fc1 = nn.Conv2d(channels, rd, kernel_size=1, bias=True)
    self.bn = nn.Identity()
    self.act = nn.ReLU(inplace=True)
    self.fc2 = nn.Conv2d(rd, channels, kernel_size=1, bias=True)
    self.gate = nn.Sigmoid()

  def forward(self, x):
    s = x.mean((2, 3), keepdim=True)
    s = self.fc2(self.act(self.bn(self.fc1(s))))
    return x * self.gate(s)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, cardinality=1, base_width=64,
               se=False):  # fmt: skip
    super().__init__()
    assert cardinality == 1 and base_width == 64
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.act1 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.se = SEModule(planes) if se else None
    self.act2 = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.act1(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.se is not None:
      y = self.se(y)
    return self.act2(y + shortcut)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, cardinality=1, base_width=64,
               se=False):  # fmt: skip
    super().__init__()
    width = int(math.floor(planes * (base_width / 64)) * cardinality)
    outplanes = planes * self.expansion
    self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.act1 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=cardinality, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.act2 = nn.ReLU(inplace=True)
    self.conv3 = nn.Conv2d(width, outplanes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(outplanes)
    self.se = SEModule(outplanes) if se else None
    self.act3 = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.act1(self.bn1(self.conv1(x)))
    y = self.act2(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.se is not None:
      y = self.se(y)
    return self.act3(y + shortcut)


def _downsample(inplanes, outplanes, stride, avg_down):
  """timm's downsample_conv (1x1/stride, bn) or downsample_avg (pool, 1x1, bn)."""
  conv = nn.Conv2d(inplanes, outplanes, 1, stride=1 if avg_down else stride, bias=False)
  if not avg_down:
    return nn.Sequential(conv, nn.BatchNorm2d(outplanes))
  pool = (
    nn.Identity()
    if stride == 1
    else nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
  )
  return nn.Sequential(pool, conv, nn.BatchNorm2d(outplanes))


class TimmResNet(nn.Module):
  """timm.models.resnet.ResNet for the options the names in :data:`CONFIGS` use."""

  def __init__(self, block, layers, num_classes=1000, cardinality=1, base_width=64, stem_width=64,
               stem_type="", avg_down=False, se=False):  # fmt: skip
    super().__init__()
    block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
    deep = "deep" in stem_type
    inplanes = stem_width * 2 if deep else 64
    if deep:
      self.conv1 = nn.Sequential(
        nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, inplanes, 3, stride=1, padding=1, bias=False),
      )
    else:
      self.conv1 = nn.Conv2d(3, inplanes, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(inplanes)
    self.act1 = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    for idx, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
      stride = 1 if idx == 0 else 2
      outplanes = planes * block.expansion
      downsample = None
      if stride != 1 or inplanes != outplanes:
        downsample = _downsample(inplanes, outplanes, stride, avg_down)
      blocks = []
      for j in range(n):
        blocks.append(
          block(
            inplanes,
            planes,
            stride if j == 0 else 1,
            downsample if j == 0 else None,
            cardinality,
            base_width,
            se,
          )
        )
        inplanes = outplanes
      self.add_module(f"layer{idx + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def forward(self, x):
    x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(x.mean((2, 3)))


def create(name, *, layers=None, num_classes=1000, seed=0, device=None):
  """timm's ``name`` (``layers``: other blocks per stage, for fast checks of deep nets), in eval
  mode, with random weights and non-trivial BN statistics; on ``device='meta'`` only shapes."""
  config = dict(CONFIGS[name])
  if layers is not None:
    config["layers"] = tuple(layers)
  torch.manual_seed(seed)
  with torch.device(device or "cpu"):
    net = TimmResNet(num_classes=num_classes, **config)
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
