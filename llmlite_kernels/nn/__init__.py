"""Layers: drop-in replacements for nn.Linear."""
from .quant_linear import QuantLinear, linear_weight
from .sparse_linear import SparseLinear

__all__ = ["QuantLinear", "SparseLinear", "linear_weight"]
