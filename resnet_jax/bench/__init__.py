"""``resnet-jax bench``: train-step timing (:mod:`.train`), CPU inference timing (:mod:`.inference`)
and their reports (:mod:`.report`).  The PyTorch reference they compare against lives in the
checkout's ``benchmarks/`` folder (:mod:`.reference` finds it)."""

from resnet_jax.bench.inference import INFERENCE_PATHS, inference_benchmark
from resnet_jax.bench.reference import TorchApart, torch_resnet
from resnet_jax.bench.report import format_inference_report, format_paths, format_report
from resnet_jax.bench.train import LOOP_DATASET, PRECISIONS, run_benchmark

__all__ = [
  "INFERENCE_PATHS",
  "LOOP_DATASET",
  "PRECISIONS",
  "TorchApart",
  "format_inference_report",
  "format_paths",
  "format_report",
  "inference_benchmark",
  "run_benchmark",
  "torch_resnet",
]
