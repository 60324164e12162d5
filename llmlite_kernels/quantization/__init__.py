"""Calibrated quantization algorithms behind ``quantize_``: GPTQ, AWQ, clipping search, and adaptive
per-layer bit allocation under a size budget. (Named ``quantization`` so that ``llmlite_kernels.quantize``
stays the round-to-nearest function.)"""
from .allocate import allocate, format_plan, read_bit_plan
from .apply import quantize_calibrated
from .awq import awq_scale_block
from .gptq import gptq_quantize

__all__ = ["allocate", "awq_scale_block", "format_plan", "gptq_quantize", "quantize_calibrated", "read_bit_plan"]
