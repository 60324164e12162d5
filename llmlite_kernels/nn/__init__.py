"""Layers: drop-in replacements for nn.Linear."""
from .quant_linear import QuantLinear, linear_weight

__all__ = ["QuantLinear", "linear_weight"]
