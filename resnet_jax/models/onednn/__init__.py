"""Convolutions through oneDNN inside XLA (the XLA FFI), for CPU training at PyTorch's speed.

``conv(x, w, strides, padding, groups)`` is ``lax.conv_general_dilated`` with NHWC/HWIO operands,
run by oneDNN on the CPU and falling back to ``lax.conv`` (one warning) where it cannot;
``conv_nhwc`` is the bare oneDNN op.  The optional extra ``pip install 'resnet-jax[cpu]'`` brings
oneDNN; the kernel (``conv.cc``) is compiled on first use (``kernel``).
"""

from .convolution import conv, conv_nhwc, unsupported_reason
from .kernel import load, onednn_version, unavailable_reason

__all__ = [
  "conv",
  "conv_nhwc",
  "load",
  "onednn_version",
  "unavailable_reason",
  "unsupported_reason",
]
