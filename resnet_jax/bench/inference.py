"""``resnet-jax bench --inference``: CPU serving speed, our jit eval step against TensorFlow and
PyTorch running the same network."""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import models
from resnet_jax.bench import reference, report
from resnet_jax.bench.train import time_steps
from resnet_jax.train import config as config_lib
from resnet_jax.train import state as state_lib
from resnet_jax.train import steps as steps_lib

INFERENCE_PATHS = ("jax_jit", "tf_savedmodel", "torch_eager")


def _serving_model(net, variables, image_size: int, spec):
  """The random-weight network as ``resnet-jax export`` sees a trained one."""
  from resnet_jax import serving  # pylint: disable=g-import-not-at-top

  num_classes = int(variables["params"]["head"]["bias"].shape[0])
  return serving.ServingModel(
    workdir="",
    config=config_lib.base_config(),
    model=net,
    variables=dict(variables),
    step=0,
    source="bench",
    labels=tuple(str(i) for i in range(num_classes)),
    names=tuple(str(i) for i in range(num_classes)),
    channels=3,
    image_size=image_size,
    resize_size=None,
    mean=spec.mean,
    std=spec.std,
  )


def _jit_predict(net, variables, cpu):
  """``steps.predict_step`` under ``jax.jit`` and the eval state it takes, on device ``cpu``."""
  state = jax.device_put(
    state_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=(),
      lr_scale=jnp.ones((), jnp.float32),
    ),
    cpu,
  )
  return jax.jit(functools.partial(steps_lib.predict_step, model=net)), state


def _savedmodel_signature(served):
  """Exports ``served`` as a SavedModel and loads its serving signature; returns it and the
  export's seconds."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from resnet_jax import serving  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    exported = serving.export_model(served, "savedmodel", os.path.join(tmp, "model"))
    export_s = time.perf_counter() - t0
    with tf.device("/CPU:0"):
      signature = tf.saved_model.load(exported).signatures["serving_default"]
  return signature, export_s


def _batch_calls(pixels, spec, cpu, jit_predict, state, signature, torch_net):
  """The three ways to serve one batch of uint8 ``pixels``, in :data:`INFERENCE_PATHS` order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  normalised = (pixels.astype(np.float32) - np.asarray(spec.mean, np.float32)) / np.asarray(
    spec.std, np.float32
  )
  x_jax = jax.device_put({"image": normalised[:, None]}, cpu)
  x_tf = tf.constant(pixels)
  x_torch = torch.from_numpy(normalised.transpose(0, 3, 1, 2)).contiguous(
    memory_format=torch.channels_last
  )

  def jax_call():
    jit_predict(state, x_jax).block_until_ready()

  def tf_call():
    signature(images=x_tf)["probabilities"].numpy()

  def torch_call():
    with torch.no_grad():
      torch_net(x_torch).softmax(-1).numpy()

  return jax_call, tf_call, torch_call


def _first_calls(batches, image_size: int, spec, cpu, *served) -> tuple[dict, dict]:
  """Every (path, batch) call, each made once (compiles for jax and tf, warms up torch); returns
  the calls and the seconds of each first call."""
  rng = np.random.default_rng(0)
  calls, compile_s = {}, {}
  for b in batches:
    pixels = rng.integers(0, 256, (b, image_size, image_size, 3), dtype=np.uint8)
    for name, fn in zip(INFERENCE_PATHS, _batch_calls(pixels, spec, cpu, *served)):
      t0 = time.perf_counter()
      fn()
      compile_s[f"{name}_b{b}"] = time.perf_counter() - t0
      calls[(name, b)] = fn
  return calls, compile_s


def _inference_result(model, image_size, steps, rounds, export_s, compile_s) -> dict[str, Any]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  return {
    "benchmark": "inference",
    "model": model,
    "image_size": image_size,
    "precision": "fp32",
    "steps": steps,
    "rounds": rounds,
    "export_savedmodel_s": export_s,
    "first_call_s": compile_s,
    "jax_version": jax.__version__,
    "tf_version": tf.__version__,
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "cpu_count": os.cpu_count(),
    "host": platform.node(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }


def inference_benchmark(
  model: str = "resnet50",
  batches: tuple[int, ...] = (1, 16),
  image_size: int = 224,
  steps: int = 5,
  rounds: int = 3,
  jsonl: str | None = None,
) -> dict[str, Any]:
  """CPU inference images/s of one network (fp32, random weights) three ways, interleaved.

  * ``jax_jit``: ``steps.predict_step`` (the eval step's forward pass: the network in inference
    mode, softmax) under ``jax.jit`` on one CPU device that uses every core, on normalised float
    input -- what ``resnet-jax predict`` runs per batch;
  * ``tf_savedmodel``: the same variables through ``serving.export_model(..., 'savedmodel')``
    (uint8 in, normalisation, network, softmax), loaded with ``tf.saved_model.load`` and called
    through its ``serving_default`` signature (jax2tf's native serialization: an ``XlaCallModule``
    op, compiled by TensorFlow's XLA);
  * ``torch_eager``: the same architecture in PyTorch (the checkout's
    ``benchmarks/torch_reference.py``), ``eval()`` under ``torch.no_grad()``, channels_last.

  Each (path, batch) is timed ``steps`` calls per round after a warm-up call, ``rounds`` times in
  turn (the machine's speed drifts), and the best call counts. Ratios are images/s over
  ``jax_jit``'s at the same batch (> 1: faster than our jit eval step).
  """
  import torch  # pylint: disable=g-import-not-at-top

  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  reference.reference_path()  # the checkout's PyTorch reference: fail before any compiling
  data_lib.hide_gpus_from_tf()
  cpu = jax.devices("cpu")[0]
  net = models.get_model(model)
  with jax.default_device(cpu):
    variables = jax.jit(
      lambda r: net.init(r, jnp.zeros((1, image_size, image_size, 3)), train=False)
    )(jax.random.key(0))
  spec = data_lib.dataset_info("imagenet2012")
  jit_predict, state = _jit_predict(net, variables, cpu)
  signature, export_s = _savedmodel_signature(_serving_model(net, variables, image_size, spec))
  torch.manual_seed(0)
  torch_net = reference.torch_resnet(model).eval().to(memory_format=torch.channels_last)
  served = (jit_predict, state, signature, torch_net)
  calls, compile_s = _first_calls(batches, image_size, spec, cpu, *served)

  best = {key: float("inf") for key in calls}
  for _ in range(rounds):
    for key, fn in calls.items():
      best[key] = min(best[key], min(time_steps(fn, steps)))
  result = _inference_result(model, image_size, steps, rounds, export_s, compile_s)
  for (name, b), seconds in best.items():
    result[f"{name}_b{b}_images_per_sec"] = b / seconds
  for b in batches:
    for name in INFERENCE_PATHS[1:]:
      result[f"{name}_b{b}_ratio"] = (
        result[f"{name}_b{b}_images_per_sec"] / result[f"jax_jit_b{b}_images_per_sec"]
      )
  if jsonl:
    report.append_result(jsonl, result)
  return result
