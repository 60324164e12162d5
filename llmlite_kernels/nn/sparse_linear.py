"""SparseLinear: a drop-in ``nn.Linear`` whose weight is pruned by a fixed mask stored as bits.

``y = x @ (W * M).T + b`` through ``torch.ops.llmlite.masked_linear``. ``weight`` stays a trainable
Parameter (zero at pruned positions); its gradient is exactly zero wherever the mask is 0, so fine-tuning
or distillation with any optimizer whose step is zero for a zero gradient (SGD, Adam, AdamW) keeps every
pruned weight exactly zero. ``mask_bits`` (uint8 ``[out, ceil(in/8)]``, ``formats/bitmask.py``) is a buffer.
The 2:4 compressed inference layer converts from ``weight`` and :meth:`mask`.
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_tensor
from ..formats.bitmask import mask_bytes, masked_weight, pack_mask, unpack_mask
from .quant_linear import linear_weight


class SparseLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype, device=device))
        self.register_buffer("mask_bits", pack_mask(torch.ones(out_features, in_features, dtype=torch.bool,
                                                               device=device)))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Module, mask: torch.Tensor, weight: torch.Tensor | None = None
                    ) -> "SparseLinear":
        """Prune an ``nn.Linear`` (or ``Conv1D``) with ``mask`` (bool ``[out, in]``, True = kept).

        ``weight`` replaces the layer's weight (e.g. SparseGPT's updated values); pruned entries are zeroed."""
        dense = linear_weight(linear).detach() if weight is None else weight.detach()
        out_features, in_features = dense.shape
        check_tensor("mask", mask, dtypes=(torch.bool,), ndim=2, device=dense.device)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {(out_features, in_features)}")
        layer = cls(in_features, out_features, bias=linear.bias is not None, dtype=dense.dtype, device=dense.device)
        layer.mask_bits.copy_(pack_mask(mask))
        layer.weight.data.copy_(torch.where(mask, dense, torch.zeros((), dtype=dense.dtype, device=dense.device)))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def mask(self) -> torch.Tensor:
        """bool ``[out_features, in_features]``: True where the weight is kept."""
        return unpack_mask(self.mask_bits, self.in_features)

    def masked_weight(self) -> torch.Tensor:
        """``W * M`` (dense)."""
        return masked_weight(self.weight.detach(), self.mask_bits)

    @property
    def sparsity(self) -> float:
        """Fraction of pruned weights."""
        return 1.0 - self.mask().sum().item() / (self.in_features * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features in its last dimension; expected in_features={self.in_features}")
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.ops.llmlite.masked_linear(x.contiguous(), weight, self.mask_bits, bias)

    def spec(self) -> dict:
        """What ``io`` needs to rebuild this layer."""
        return {"type": "SparseLinear", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": str(self.weight.dtype).replace("torch.", "")}

    @classmethod
    def from_spec(cls, spec: dict) -> "SparseLinear":
        return cls(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=getattr(torch, spec["dtype"]))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mask_bytes_per_row={mask_bytes(self.in_features)}")
