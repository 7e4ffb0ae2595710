"""One convolution layer, forward and both gradients: oneDNN inside XLA vs ``lax.conv`` vs PyTorch.

The measurement behind ``conv_impl="onednn"`` (figures in docs/benchmarks.md), run from the
checkout::

    python benchmarks/bench_conv.py                      # CPU split into one device per core
    python benchmarks/bench_conv.py --cpu_devices=1      # no split: one device on every core
    python benchmarks/bench_conv.py --model=resnet56 --batch_size=128 --image_size=32  # train steps

Defaults: 3x3, batch 128, 16x16x32 -> 32, stride 1, padding 1, fp32.  Rows (whichever apply):

* ``onednn/split``: the oneDNN custom calls under ``pmap`` over the per-core devices, one OpenMP
  thread per device (what a training step does with the split on);
* ``onednn/whole``: the same calls under ``jit`` on one device, the whole batch, OpenMP on every
  core (what a step does with the split off);
* ``lax``: ``lax.conv_general_dilated`` under ``pmap`` (split) or ``jit`` (no split);
* ``torch``: PyTorch eager, channels_last, the whole batch on ``torch.get_num_threads()`` threads.

Each row times ``step`` (forward + input gradient + weight gradient, one compiled function) and,
with ``--components``, ``fwd``, ``bwd_data``, ``bwd_weights`` alone.  The machine is shared and
noisy, so the rows are run round-robin, ``--reps`` calls in a row each time (the first call after
another library's absorbs its thread pool's spin-down), for ``--rounds`` rounds; the best call is
reported, with the median, and the load average before and after.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import types

import numpy as np
from absl import app, flags

from resnet_jax import host, runtime

_NHWC = ("NHWC", "HWIO", "NHWC")


def _jax_rows(args, n_dev: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  from resnet_jax.models import onednn  # pylint: disable=g-import-not-at-top

  k, s = args.kernel, args.stride
  pad = ((k // 2, k // 2), (k // 2, k // 2))

  def lax_conv(x, w):
    return lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=_NHWC)

  def onednn_conv(threads):
    return lambda x, w: onednn.conv_nhwc(x, w, (s, s), pad, 1, threads)

  def passes(conv):
    def step(x, w, dy):
      y, vjp = jax.vjp(conv, x, w)
      return (y, *vjp(dy))

    return {
      "step": step,
      "fwd": lambda x, w, dy: conv(x, w),
      "bwd_data": lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[0],
      "bwd_weights": lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[1],
    }

  key = jax.random.PRNGKey(0)
  kx, kw, kd = jax.random.split(key, 3)
  n, hw = args.batch, args.size
  x = jax.random.normal(kx, (n, hw, hw, args.cin))
  w = jax.random.normal(kw, (k, k, args.cin, args.cout)) * 0.1
  oh = (hw + 2 * (k // 2) - k) // s + 1
  dy = jax.random.normal(kd, (n, oh, oh, args.cout))

  to_devices = jax.pmap(lambda a: a)  # [n_dev, ...] -> one shard per device

  def split(a):
    return to_devices(a.reshape(n_dev, a.shape[0] // n_dev, *a.shape[1:]))

  def jit_rows(conv):
    return {name: (jax.jit(f), (x, w, dy)) for name, f in passes(conv).items()}

  def pmap_rows(conv):
    args_p = (split(x), to_devices(jnp.broadcast_to(w, (n_dev, *w.shape))), split(dy))
    return {name: (jax.pmap(f), args_p) for name, f in passes(conv).items()}

  rows = {}
  if onednn.load() is None:
    print(f"oneDNN kernel unavailable: {onednn.unavailable_reason()}")
  else:
    if n_dev > 1:
      rows["onednn/split"] = pmap_rows(onednn_conv(1))
    rows["onednn/whole"] = jit_rows(onednn_conv(0))
    if args.single_thread:
      rows["onednn/1thread"] = jit_rows(onednn_conv(1))
  rows["lax"] = pmap_rows(lax_conv) if n_dev > 1 else jit_rows(lax_conv)

  out = {}
  for impl, fns in rows.items():
    for name, (f, a) in fns.items():
      out[(impl, name)] = lambda f=f, a=a: jax.block_until_ready(f(*a))
  return out


def _torch_rows(args, threads: int, label: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  def with_threads(f):
    def call():
      torch.set_num_threads(threads)
      return f()

    return call

  k, s = args.kernel, args.stride
  cl = torch.channels_last
  x = torch.randn(args.batch, args.cin, args.size, args.size).to(memory_format=cl)
  w = (torch.randn(args.cout, args.cin, k, k) * 0.1).to(memory_format=cl)
  y0 = torch.nn.functional.conv2d(x, w, stride=s, padding=k // 2)
  dy = torch.randn_like(y0).contiguous(memory_format=cl)
  xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

  def step():
    y = torch.nn.functional.conv2d(xg, wg, stride=s, padding=k // 2)
    return torch.autograd.grad(y, (xg, wg), dy)

  def backward(mask):
    return torch.ops.aten.convolution_backward(
      dy, x, w, None, [s, s], [k // 2, k // 2], [1, 1], False, [0, 0], 1, mask
    )

  def fwd():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, w, stride=s, padding=k // 2)

  return {
    (label, "step"): with_threads(step),
    (label, "fwd"): with_threads(fwd),
    (label, "bwd_data"): with_threads(lambda: backward([True, False, False])),
    (label, "bwd_weights"): with_threads(lambda: backward([False, True, False])),
  }


def _net_rows(args, n_dev: int) -> dict:
  """Whole-net train steps (forward, backward, SGD update): XLA convs, oneDNN convs, PyTorch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from torch_reference import torch_resnet  # pylint: disable=g-import-not-at-top  (this folder)

  from resnet_jax import models  # pylint: disable=g-import-not-at-top

  n, size, classes = args.batch, args.size, 10
  rng = np.random.default_rng(0)
  images = rng.standard_normal((n, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, classes, n).astype(np.int32)
  to_devices = jax.pmap(lambda a: a)
  shard = lambda a: to_devices(a.reshape(n_dev, n // n_dev, *a.shape[1:]))  # noqa: E731
  x, y = shard(images), shard(labels)
  tx = optax.sgd(0.01, momentum=0.9)
  rows = {}
  for impl in ("xla", "onednn"):
    net = models.get_model(args.model, num_classes=classes, conv_impl=impl, bn_axis_name="b")
    variables = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    def step(state, x, y, net=net):
      params, stats, opt = state

      def loss_fn(p):
        logits, new = net.apply(
          {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

      (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(jax.lax.pmean(grads, "b"), opt, params)
      return optax.apply_updates(params, updates), new["batch_stats"], opt

    p_step = jax.pmap(step, axis_name="b")
    box = {"s": jax.tree.map(lambda a: to_devices(jnp.broadcast_to(a, (n_dev, *a.shape))), state)}

    def call(p_step=p_step, box=box):
      box["s"] = jax.block_until_ready(p_step(box["s"], x, y))

    rows[(f"{impl}/net", "step")] = call
  if not args.no_torch:
    torch.set_num_threads(host.usable_cores())  # as many threads as XLA's devices use
    tnet = torch_resnet(args.model, classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)
    tx_ = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    ty = torch.from_numpy(labels).long()

    def torch_step():
      opt.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(tnet(tx_), ty).backward()
      opt.step()

    rows[("torch", "step")] = torch_step
  return rows


def run(args) -> dict:
  runtime.reuse_freed_host_memory()
  n_dev = runtime.split_cpu_into_devices(args.cpu_devices, [args.batch])
  import jax  # pylint: disable=g-import-not-at-top

  if args.model:
    rows = _net_rows(args, n_dev)
    args.no_torch = True  # its rows are in
  else:
    rows = _jax_rows(args, n_dev)
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top

    torch_threads = torch.get_num_threads()
    rows.update(_torch_rows(args, torch_threads, "torch"))
    if args.single_thread and torch_threads > 1:
      rows.update(_torch_rows(args, 1, "torch/1thread"))
  names = ("step", "fwd", "bwd_data", "bwd_weights") if args.components else ("step",)
  rows = {key: f for key, f in rows.items() if key[1] in names}
  load_before = os.getloadavg()
  for f in rows.values():  # compile, build primitives, warm caches
    f()
    f()
  times = {key: [] for key in rows}
  for _ in range(args.rounds):
    for key, f in rows.items():
      for _ in range(args.reps):
        t0 = time.perf_counter()
        f()
        times[key].append(time.perf_counter() - t0)
  load_after = os.getloadavg()
  from resnet_jax.models import onednn  # pylint: disable=g-import-not-at-top

  shape = (
    f"{args.model} train step, batch {args.batch}, {args.size}x{args.size}"
    if args.model
    else f"{args.kernel}x{args.kernel}/{args.stride}, batch {args.batch}, "
    f"{args.size}x{args.size}x{args.cin} -> {args.cout}"
  )
  result = {
    "shape": shape + ", fp32",
    "cpu_devices": n_dev,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax": jax.__version__,
    "onednn": onednn.onednn_version(),
    "torch": None,
    "torch_threads": None,
    "rounds": args.rounds,
    "reps": args.reps,
    "load_before": load_before,
    "load_after": load_after,
    "best_ms": {f"{i} {p}": min(t) * 1e3 for (i, p), t in times.items()},
    "median_ms": {f"{i} {p}": statistics.median(t) * 1e3 for (i, p), t in times.items()},
  }
  if any(i == "torch" for i, _ in rows):
    import torch  # pylint: disable=g-import-not-at-top

    result.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  return result


def format_report(r: dict) -> str:
  lines = [
    f"{r['shape']}; {r['cpu_devices']} XLA device(s); oneDNN {r['onednn']}, jax {r['jax']}, "
    f"torch {r['torch']} ({r['torch_threads']} threads); best of {r['rounds']}x{r['reps']}",
    "load average before/after: "
    + " / ".join(", ".join(f"{v:.2f}" for v in la) for la in (r["load_before"], r["load_after"])),
  ]
  impls = sorted({k.split()[0] for k in r["best_ms"]}, key=lambda i: (i.startswith("torch"), i))
  passes = [
    p for p in ("fwd", "bwd_data", "bwd_weights", "step") if f"{impls[0]} {p}" in r["best_ms"]
  ]
  lines.append(f"{'ms (best / median)':<16}" + "".join(f"{p:>20}" for p in passes))
  for i in impls:
    cells = [f"{r['best_ms'][f'{i} {p}']:.2f} / {r['median_ms'][f'{i} {p}']:.2f}" for p in passes]
    lines.append(f"{i:<16}" + "".join(f"{c:>20}" for c in cells))
  if "torch step" in r["best_ms"]:
    for i in impls:
      if i != "torch":
        ratio = r["best_ms"][f"{i} step"] / r["best_ms"]["torch step"]
        lines.append(f"{i} step / torch step: {ratio:.2f}x")
    if "torch/1thread step" in r["best_ms"] and "onednn/1thread step" in r["best_ms"]:
      ratio = r["best_ms"]["onednn/1thread step"] / r["best_ms"]["torch/1thread step"]
      lines.append(f"onednn/1thread step / torch/1thread step: {ratio:.2f}x")
  return "\n".join(lines)


_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "images per step")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 16, "image side in pixels (the layer's input)")
_CIN = flags.DEFINE_integer("cin", 32, "layer input channels")
_COUT = flags.DEFINE_integer("cout", 32, "layer output channels")
_KERNEL = flags.DEFINE_integer("kernel", 3, "layer kernel side")
_STRIDE = flags.DEFINE_integer("stride", 1, "layer stride")
_ROUNDS = flags.DEFINE_integer("rounds", 30, "round-robin rounds over the implementations")
_REPS = flags.DEFINE_integer("reps", 3, "calls per implementation per round")
_COMPONENTS = flags.DEFINE_bool("components", False, "also time each pass alone")
_CPU_DEVICES = flags.DEFINE_string("cpu_devices", "auto", "'auto' (one per core) or a number")
_TORCH = flags.DEFINE_bool("torch", True, "also time PyTorch (--notorch to skip)")
_MODEL = flags.DEFINE_string(
  "model", "", "time whole train steps of this registry model instead of one layer"
)
_SINGLE_THREAD = flags.DEFINE_bool(
  "single_thread", False, "also oneDNN and PyTorch on one thread, whole batch"
)
_JSONL = flags.DEFINE_string("jsonl", None, "append the result as one JSON line")


def main(argv) -> None:
  del argv
  # run() reads the settings by the short names the timing code uses.
  settings = types.SimpleNamespace(
    batch=_BATCH_SIZE.value,
    size=_IMAGE_SIZE.value,
    cin=_CIN.value,
    cout=_COUT.value,
    kernel=_KERNEL.value,
    stride=_STRIDE.value,
    rounds=_ROUNDS.value,
    reps=_REPS.value,
    components=_COMPONENTS.value,
    cpu_devices=_CPU_DEVICES.value,
    no_torch=not _TORCH.value,
    model=_MODEL.value,
    single_thread=_SINGLE_THREAD.value,
    jsonl=_JSONL.value,
  )
  r = run(settings)
  print(format_report(r))
  if settings.jsonl:
    from resnet_jax import storage  # pylint: disable=g-import-not-at-top

    storage.append_text(settings.jsonl, json.dumps(r) + "\n")


if __name__ == "__main__":
  app.run(main)
