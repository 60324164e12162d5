"""llmlite-kernels: low-bit quantization, pruning and distillation for LLMs, on hand-written kernels."""
from .config import QuantConfig
from .formats import PackedWeight, dequantize, quantize
from .io import load, save
from .models import load_model, quantize_
from .nn import QuantLinear
from .ops import backends, kernel_for

__all__ = ["PackedWeight", "QuantConfig", "QuantLinear", "backends", "dequantize", "kernel_for", "load",
           "load_model", "quantize", "quantize_", "save"]
__version__ = "0.1.0"
