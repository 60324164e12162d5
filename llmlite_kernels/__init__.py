"""llmlite-kernels: low-bit quantization, pruning and distillation for LLMs, on hand-written kernels."""
from .formats import PackedWeight, dequantize, quantize
from .ops import backends, kernel_for

__all__ = ["PackedWeight", "backends", "dequantize", "kernel_for", "quantize"]
__version__ = "0.1.0"
