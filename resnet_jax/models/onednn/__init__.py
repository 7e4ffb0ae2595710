"""Convolutions through oneDNN inside XLA (the XLA FFI), for CPU training at PyTorch's speed."""

from .conv import conv_nhwc
from .kernel import load, onednn_version, unavailable_reason

__all__ = ["conv_nhwc", "load", "onednn_version", "unavailable_reason"]
