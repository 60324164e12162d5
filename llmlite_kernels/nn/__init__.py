"""Layers: drop-in replacements for nn.Linear."""
from .quant_linear import QuantLinear, linear_weight, set_act_quant_
from .sparse24_linear import Sparse24Linear
from .sparse_linear import SparseLinear

__all__ = ["QuantLinear", "Sparse24Linear", "SparseLinear", "linear_weight", "set_act_quant_"]
