"""llmlite-kernels: low-bit quantization, pruning and distillation for LLMs, on hand-written kernels."""
from .config import PruneConfig, QuantConfig
from .distill import distill, tune_scales_
from .formats import PackedWeight, dequantize, quantize
from .io import load, save
from .models import load_model, quantize_
from .nn import QuantLinear, Sparse24Linear, SparseLinear, set_act_quant_
from .nn.lora import LoRALinear, add_lora_, merge_lora_and_requantize_
from .ops import backends, kernel_for
from .prune import compress_24_, prune_

__all__ = ["LoRALinear", "PackedWeight", "PruneConfig", "QuantConfig", "QuantLinear", "Sparse24Linear", "SparseLinear", "backends", "compress_24_", "dequantize",
           "add_lora_", "distill", "merge_lora_and_requantize_",
           "kernel_for", "load", "load_model", "prune_", "quantize", "quantize_", "save", "set_act_quant_",
           "tune_scales_"]
__version__ = "0.1.0"
