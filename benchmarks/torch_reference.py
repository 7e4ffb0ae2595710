"""The PyTorch reference for ``resnet-jax bench --compare=torch`` and ``bench --inference``.

The registry's architecture written in PyTorch (:func:`torch_resnet`), one eager training step of
it (:func:`torch_train_step`) and the worker that runs that step in a Python process of its own
(:func:`worker`, started by ``resnet_jax.bench.reference.TorchApart``)::

    python benchmarks/torch_reference.py '{"model": "resnet20", "batch": 8, "image_size": 32}'

The worker writes one JSON line of versions, then for each step count it reads on stdin one JSON
line of step times.  A developer tool: it lives in the checkout, not in the installed package.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable

from resnet_jax import models
from resnet_jax.models.resnet import ResNet

EXTRA_HINT = "pip install 'resnet-jax[bench]' (torch==2.13.0, CPU build)"


def _config(model: str, num_classes: int | None, overrides: dict | None) -> dict:
  cfg = {f.name: f.default for f in dataclasses.fields(ResNet) if f.name not in ("parent", "name")}
  cfg.update(
    models.registry.model_config(
      model,
      num_classes=num_classes,
      **{k: v for k, v in (overrides or {}).items() if k in models.registry.OVERRIDABLE},
    )
  )
  if cfg.get("preact"):
    raise ValueError("--compare=torch covers post-activation nets only (no preact)")
  return cfg


def _block_class(cfg: dict):
  """A residual block (basic or bottleneck; shortcut A/B/C/none) built from the registry's config."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):
    def __init__(self, cin, planes, stride, bottleneck):
      super().__init__()
      exp = 4 if bottleneck else 1
      out = planes * exp
      if bottleneck:
        inner = int(planes * cfg["width_per_group"] / 64) * cfg["groups"]
        s1, s3 = (stride, 1) if cfg["stride_on"] == "1x1" else (1, stride)
        spec = [(cin, inner, 1, s1, 1), (inner, inner, 3, s3, cfg["groups"]), (inner, out, 1, 1, 1)]
      else:
        spec = [(cin, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
      layers = []
      for i, (a, b, k, s, g) in enumerate(spec):
        layers += [nn.Conv2d(a, b, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(b)]
        if i < len(spec) - 1:
          layers.append(nn.ReLU(inplace=True))
      self.branch = nn.Sequential(*layers)
      sc = cfg["shortcut"]
      changes = stride != 1 or cin != out
      self.kind = sc
      self.project = sc == "C" or (sc == "B" and changes)
      if self.project:
        self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
      self.stride, self.extra = stride, out - cin

    def forward(self, x):
      y = self.branch(x)
      if self.kind == "none":
        return torch.relu(y)
      if self.project:
        idn = self.down(x)
      elif self.kind == "A":
        idn = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
          idn = nn.functional.pad(idn, (0, 0, 0, 0, 0, self.extra))
      else:
        idn = x
      return torch.relu(y + idn)

  return Block


def torch_resnet(model: str, num_classes: int | None = None, overrides: dict | None = None):
  """The registry's architecture in PyTorch (stems, basic/bottleneck, shortcuts A/B/C/none)."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  cfg = _config(model, num_classes, overrides)
  block = _block_class(cfg)
  width = lambda w: max(1, int(round(w * cfg["width_multiplier"])))  # noqa: E731
  layers: list = []
  stem = width(cfg["stem_width"])
  if cfg["stem"] == "imagenet":
    layers += [
      nn.Conv2d(3, stem, 7, 2, 3, bias=False),
      nn.BatchNorm2d(stem),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(3, 2, 1),
    ]
  else:
    layers += [nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
  cin, bottleneck = stem, cfg["block"] == "bottleneck"
  for i, (n, planes) in enumerate(zip(cfg["stage_sizes"], cfg["stage_widths"])):
    for j in range(n):
      layers.append(block(cin, width(planes), 2 if (i > 0 and j == 0) else 1, bottleneck))
      cin = width(planes) * (4 if bottleneck else 1)
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cfg["num_classes"])]
  return nn.Sequential(*layers)


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
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"--compare=torch needs PyTorch: {EXTRA_HINT}") from e
  torch.manual_seed(0)
  net = torch_resnet(model, num_classes, overrides).to(memory_format=torch.channels_last)
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.CrossEntropyLoss()
  n_cls = num_classes or models.model_spec(model).num_classes
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
  one_step = torch_train_step(**json.loads(args_json))  # its ImportError names the extra
  import torch  # pylint: disable=g-import-not-at-top

  print(json.dumps({"torch_version": torch.__version__, "threads": torch.get_num_threads()}))
  sys.stdout.flush()
  for line in sys.stdin:
    print(json.dumps(_time_steps(one_step, int(line))))
    sys.stdout.flush()


if __name__ == "__main__":
  worker(sys.argv[1])
