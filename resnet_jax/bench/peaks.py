"""Peak dense TFLOP/s per device, by ``jax.Device.device_kind`` and precision, for MFU.

Model FLOP utilisation = the model's FLOPs per second (the analytic count of
``models.count_macs``, not XLA's, which misses custom calls) / the device's peak. Peaks are the
vendors' dense figures (no 2:4 sparsity). "fp32" on NVIDIA GPUs is the TF32 tensor-core peak:
XLA's default matmul/conv precision on Ampere and later runs fp32 convolutions as TF32.

Sources (vendor datasheets):
  * H100 SXM / PCIe: NVIDIA H100 Tensor Core GPU datasheet -- BF16 989 / 756, TF32 495 / 378
    (the sheet's figures are "with sparsity", twice these).
  * H200 (SXM): NVIDIA H200 Tensor Core GPU datasheet -- BF16 989, TF32 495 (dense).
  * A100 (SXM and PCIe, 40/80 GB): NVIDIA A100 datasheet -- BF16 312, TF32 156 (dense).
  * L4: NVIDIA L4 Tensor Core GPU datasheet -- BF16 121, TF32 60 (dense; 242 / 120 sparse).
  * Cloud TPU system architecture pages (cloud.google.com/tpu/docs): v4 275, v5e 197,
    v5p 459, v6e (Trillium) 918 BF16 TFLOP/s per chip. TPUs have no separate fp32 peak here: an
    fp32 step runs its matmuls as bf16 passes, so no MFU is reported for fp32 on a TPU.
"""

from __future__ import annotations

import re

# (words in device_kind, lower-cased; {precision: TFLOP/s}). First match wins: the more specific
# kinds come first ("h100 pcie" before "h100", "v5 lite" before "v5"); whole words only, so "l4"
# is not an L40S.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
  ("h100 pcie", {"bf16": 756.0, "fp32": 378.0}),
  ("h100", {"bf16": 989.0, "fp32": 495.0}),
  ("h200", {"bf16": 989.0, "fp32": 495.0}),
  ("a100", {"bf16": 312.0, "fp32": 156.0}),
  ("l4", {"bf16": 121.0, "fp32": 60.0}),
  ("tpu v4", {"bf16": 275.0}),
  ("tpu v5 lite", {"bf16": 197.0}),  # v5e's device_kind
  ("tpu v5e", {"bf16": 197.0}),
  ("tpu v5p", {"bf16": 459.0}),
  ("tpu v5", {"bf16": 459.0}),  # v5p's device_kind
  ("tpu v6 lite", {"bf16": 918.0}),  # v6e's device_kind
  ("tpu v6e", {"bf16": 918.0}),
)


def peak_tflops(device_kind: str, precision: str) -> float | None:
  """One device's dense peak in TFLOP/s, or None where the table has none (CPUs, others)."""
  kind = device_kind.lower()
  for key, peaks in PEAK_TFLOPS:
    if re.search(rf"\b{re.escape(key)}\b", kind):
      return peaks.get(precision)
  return None


def train_step_flops(macs_per_image: int, batch: int) -> float:
  """FLOPs of one train step: forward 2 x MACs, backward twice the forward (gradients of the
  inputs and of the weights), so 6 x MACs per image."""
  return 6.0 * macs_per_image * batch
