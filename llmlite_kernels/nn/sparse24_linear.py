"""Sparse24Linear: an inference ``nn.Linear`` whose 2:4-sparse weight is stored compressed.

Two storage kinds (``formats/sparse24.py``):

* ``bits=None``: ``values`` [out, K4/2] (the kept weights, in the layer's dtype) + ``meta`` (2-bit indices),
  computed by ``torch.ops.llmlite.sparse24_linear`` (about 9/16 of the dense bytes).
* ``bits=4`` (or 2/3/8): the kept values in the group-wise low-bit format (``weight_packed``,
  ``weight_scale``, ``weight_zero_point``, groups along the kept values) + ``meta``, computed by
  ``torch.ops.llmlite.sparse24_lowbit_linear`` (about 1/5 of the fp16 bytes at 4 bits, group 128).

The compressed tensors are frozen buffers; ``bias`` stays a Parameter. Gradients flow to the input and
the bias. Build it with :meth:`from_linear` / :meth:`from_sparse` from a layer whose weight is 2:4 sparse.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import FLOAT_DTYPES, check_tensor
from ..formats import num_groups, packed_words
from ..formats.lowbit import SCALE_DTYPES, PackedWeight, canonical_group_size
from ..formats.sparse24 import (Sparse24LowbitWeight, Sparse24Weight, compress, compress_lowbit,
                                decompress, decompress_lowbit, kept_features, meta_words)
from .quant_linear import linear_weight


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class Sparse24Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` 2:4 sparse, stored as kept values + 2-bit indices (optionally low-bit)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: Optional[int] = None,
                 group_size: Optional[int] = 128, symmetric: bool = False,
                 scale_dtype: torch.dtype = torch.float16, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype {dtype} not supported; accepted: {FLOAT_DTYPES}")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        k2 = kept_features(in_features)
        self.register_buffer("meta", torch.zeros(out_features, meta_words(in_features), dtype=torch.int32,
                                                 device=device))
        if bits is None:
            self.group_size, self.symmetric = None, None
            self.register_buffer("values", torch.zeros(out_features, k2, dtype=dtype, device=device))
        else:
            if scale_dtype not in SCALE_DTYPES:
                raise TypeError(f"scale_dtype {scale_dtype} not supported; accepted: {SCALE_DTYPES}")
            self.group_size, self.symmetric = canonical_group_size(group_size), symmetric
            groups = num_groups(k2, self.group_size)
            self.register_buffer("weight_packed", torch.zeros(out_features, packed_words(k2, bits),
                                                              dtype=torch.int32, device=device))
            self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=scale_dtype, device=device))
            zp = None if symmetric else torch.zeros(out_features, groups, dtype=torch.uint8, device=device)
            self.register_buffer("weight_zero_point", zp)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self._dtype = dtype  # of the dense weight it replaces (bits=None: follows values.dtype)

    @classmethod
    def from_compressed(cls, weight, bias: Optional[torch.Tensor] = None,
                        dtype: Optional[torch.dtype] = None) -> "Sparse24Linear":
        """From a :class:`Sparse24Weight` or :class:`Sparse24LowbitWeight`."""
        out_features, in_features = weight.shape
        if isinstance(weight, Sparse24Weight):
            dtype = dtype or weight.values.dtype
            layer = cls(in_features, out_features, bias=bias is not None, dtype=dtype, device=weight.values.device)
            layer.values.copy_(weight.values)
        elif isinstance(weight, Sparse24LowbitWeight):
            p = weight.packed
            layer = cls(in_features, out_features, bias=bias is not None, bits=p.bits, group_size=p.group_size,
                        symmetric=p.symmetric, scale_dtype=p.weight_scale.dtype, dtype=dtype or torch.float32,
                        device=p.weight_packed.device)
            layer.weight_packed.copy_(p.weight_packed)
            layer.weight_scale.copy_(p.weight_scale)
            if p.weight_zero_point is not None:
                layer.weight_zero_point.copy_(p.weight_zero_point)
        else:
            raise TypeError(f"weight must be a Sparse24Weight or Sparse24LowbitWeight, got {type(weight).__name__}")
        layer.meta.copy_(weight.meta)
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Module, bits: Optional[int] = None, group_size: Optional[int] = 128,
                    symmetric: bool = False, scale_dtype: Optional[torch.dtype] = None,
                    name: str = "weight") -> "Sparse24Linear":
        """Compress an ``nn.Linear`` / ``Conv1D`` / ``SparseLinear`` whose (masked) weight is 2:4 sparse.

        ValueError naming ``name`` when it is not. ``bits`` set: the kept values are round-to-nearest
        quantized (groups of ``group_size`` kept values)."""
        masked = getattr(linear, "masked_weight", None)  # SparseLinear: W * M
        weight = masked() if callable(masked) else linear_weight(linear).detach()
        if bits is None:
            compressed = compress(weight, name=name)
        else:
            compressed = compress_lowbit(weight, bits=bits, group_size=group_size, symmetric=symmetric,
                                         scale_dtype=scale_dtype, name=name)
        return cls.from_compressed(compressed, linear.bias, dtype=weight.dtype)

    from_sparse = from_linear  # a SparseLinear, or a Linear whose weight has 2:4 zeros

    @property
    def compressed(self):
        """The stored weight as a :class:`Sparse24Weight` / :class:`Sparse24LowbitWeight` (views of the buffers)."""
        shape = (self.out_features, self.in_features)
        if self.bits is None:
            return Sparse24Weight(self.values, self.meta, shape)
        packed = PackedWeight(self.weight_packed, self.weight_scale, self.weight_zero_point,
                              (self.out_features, kept_features(self.in_features)), self.bits, self.group_size)
        return Sparse24LowbitWeight(packed, self.meta, shape)

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.values.dtype if self.bits is None else self._dtype

    def decompress(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The dense ``[out_features, in_features]`` weight (in the layer's dtype by default)."""
        dtype = dtype or self.weight_dtype
        if self.bits is None:
            return decompress(self.values, self.meta, self.in_features, dtype)
        return decompress_lowbit(self.weight_packed, self.weight_scale, self.weight_zero_point, self.meta,
                                 self.bits, self.group_size, self.in_features, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, dtypes=FLOAT_DTYPES)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features in its last dimension; expected in_features={self.in_features}")
        x = x.contiguous()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.bits is None:
            values = self.values if self.values.dtype == x.dtype else self.values.to(x.dtype)
            return torch.ops.llmlite.sparse24_linear(x, values, self.meta, bias)
        return torch.ops.llmlite.sparse24_lowbit_linear(x, self.weight_packed, self.weight_scale,
                                                        self.weight_zero_point, self.meta, bias, self.bits,
                                                        self.group_size)

    def spec(self) -> dict:
        """What ``io`` needs to rebuild this layer."""
        spec = {"type": "Sparse24Linear", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "bits": self.bits, "dtype": _dtype_name(self.weight_dtype)}
        if self.bits is not None:
            spec.update(group_size=self.group_size, symmetric=self.symmetric,
                        scale_dtype=_dtype_name(self.weight_scale.dtype))
        return spec

    @classmethod
    def from_spec(cls, spec: dict) -> "Sparse24Linear":
        extra = {}
        if spec.get("bits") is not None:
            extra = dict(group_size=spec["group_size"], symmetric=spec["symmetric"],
                         scale_dtype=getattr(torch, spec["scale_dtype"]))
        return cls(spec["in_features"], spec["out_features"], bias=spec["bias"], bits=spec.get("bits"),
                   dtype=getattr(torch, spec["dtype"]), **extra)

    def extra_repr(self) -> str:
        storage = f"{_dtype_name(self.weight_dtype)} values" if self.bits is None else (
            f"bits={self.bits}, group_size={'per-channel' if self.group_size == -1 else self.group_size}, "
            f"symmetric={self.symmetric}")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"2:4 sparse, {storage}")
