"""Group-wise low-bit weight format: quantize, pack, dequantize (pure torch; this file defines it).

A weight ``W`` of shape ``[N, K]`` (out_features, in_features) is cut along ``K`` into groups of
``group_size`` columns (``group_size=-1``: one group per row, i.e. per-channel). ``G = ceil(K / g)``;
when ``K`` is not a multiple of ``g`` the last group of every row is *partial*: it holds the last
``K - (G-1)*g`` columns, its scale and zero point are computed from those columns only, and nothing
is padded in the packed codes (each row holds exactly ``K`` codes, see :mod:`.bitpack`).

Stored tensors (the compressed-tensors ``pack-quantized`` names):

* ``weight_packed``     int32 ``[N, ceil(K*bits/32)]``: unsigned codes ``q`` in ``[0, 2**bits)``.
* ``weight_scale``      ``[N, G]`` float16 (bfloat16 for bfloat16 weights, or as asked).
* ``weight_zero_point`` uint8 ``[N, G]`` for asymmetric quantization, absent for symmetric.

Dequantization: ``W[n, k] = (q[n, k] - z[n, k // g]) * s[n, k // g]`` with ``z = 2**(bits-1)`` when
symmetric. Quantization (round to nearest):

* symmetric:  ``s = max|w| / (2**(bits-1) - 0.5)``, ``q = clamp(round(w / s) + 2**(bits-1), 0, 2**bits - 1)``
* asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``s = (hi - lo) / (2**bits - 1)``,
  ``z = clamp(round(-lo / s), 0, 2**bits - 1)``, ``q = clamp(round(w / s) + z, 0, 2**bits - 1)``

``s`` is rounded to its storage dtype before ``q`` is computed, so the stored ``s`` is the one used.
A group whose scale is zero (all zeros) stores ``s = 1``: its codes equal its zero point and it
dequantizes to exact zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._checks import FLOAT_DTYPES, check_choice, check_tensor
from .bitpack import SUPPORTED_BITS, pack_codes, packed_words, unpack_codes

SUPPORTED_GROUP_SIZES = (32, 64, 128, 256, -1)
SCALE_DTYPES = FLOAT_DTYPES


def canonical_group_size(group_size) -> int:
    """``None``/``-1`` mean per-channel; returns the canonical value (``-1`` for per-channel)."""
    if group_size is None:
        return -1
    check_choice("group_size", group_size, SUPPORTED_GROUP_SIZES)
    return int(group_size)


def effective_group_size(group_size: int, in_features: int) -> int:
    return in_features if group_size == -1 else group_size


def num_groups(in_features: int, group_size: int) -> int:
    g = effective_group_size(group_size, in_features)
    return (in_features + g - 1) // g


@dataclass
class PackedWeight:
    """A quantized ``[out_features, in_features]`` weight in the group-wise low-bit format."""

    weight_packed: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: Optional[torch.Tensor]
    shape: tuple
    bits: int
    group_size: int

    @property
    def symmetric(self) -> bool:
        return self.weight_zero_point is None

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor (codes, scales and zero points)."""
        tensors = [self.weight_packed, self.weight_scale, self.weight_zero_point]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(
            self.weight_packed, self.weight_scale, self.weight_zero_point,
            bits=self.bits, group_size=self.group_size, in_features=self.shape[1], dtype=dtype,
        )

    def to(self, device) -> "PackedWeight":
        zp = None if self.weight_zero_point is None else self.weight_zero_point.to(device)
        return PackedWeight(self.weight_packed.to(device), self.weight_scale.to(device), zp,
                            self.shape, self.bits, self.group_size)


def default_scale_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """Scales are stored in bf16 for bf16 weights, else fp16."""
    return torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float16


def _grouped(w: torch.Tensor, g: int) -> torch.Tensor:
    """[N, K] -> [N, G, g], zero-padded. Zeros never change absmax, nor min/max once 0 is included."""
    n, k = w.shape
    pad = (-k) % g
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(n, -1, g)


def quantize_with_scales(weight: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor],
                         bits: int, group_size: int) -> torch.Tensor:
    """Codes ``q`` [N, K] (int64) of ``weight`` for given per-group ``scale``/``zero_point`` ([N, G])."""
    n, k = weight.shape
    g = effective_group_size(group_size, k)
    s = scale.float().repeat_interleave(g, dim=1)[:, :k]
    z = (torch.full_like(s, 2 ** (bits - 1)) if zero_point is None
         else zero_point.float().repeat_interleave(g, dim=1)[:, :k])
    q = torch.round(weight.float() / s) + z
    return q.clamp_(0, 2**bits - 1).to(torch.int64)


def rtn_scales(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool,
               scale_dtype: torch.dtype, clip: Optional[torch.Tensor] = None):
    """Round-to-nearest scales and zero points ([N, G]) of ``weight`` [N, K] (see module docstring).

    ``clip`` ([N, G] or broadcastable, in (0, 1]) shrinks each group's range before the scale is taken.
    """
    k = weight.shape[1]
    grouped = _grouped(weight.float(), effective_group_size(group_size, k))
    maxq = 2**bits - 1
    if symmetric:
        absmax = grouped.abs().amax(dim=-1)
        if clip is not None:
            absmax = absmax * clip
        scale = absmax / (2 ** (bits - 1) - 0.5)
    else:
        lo = grouped.amin(dim=-1).clamp(max=0)
        hi = grouped.amax(dim=-1).clamp(min=0)
        if clip is not None:
            lo, hi = lo * clip, hi * clip
        scale = (hi - lo) / maxq
    scale = scale.to(scale_dtype)
    if not torch.isfinite(scale).all():
        raise ValueError(f"weight_scale overflows {scale_dtype}; pass scale_dtype=torch.float32")
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    if symmetric:
        return scale, None
    zero = torch.round(-lo / scale.float()).clamp(0, maxq).to(torch.uint8)
    return scale, zero


def quantize(weight: torch.Tensor, bits: int = 4, group_size=128, symmetric: bool = False,
             scale_dtype: Optional[torch.dtype] = None, name: str = "weight") -> PackedWeight:
    """Round-to-nearest quantize ``weight`` [out_features, in_features] into a :class:`PackedWeight`.

    ``name`` is used in error messages (e.g. the layer's name in a model).
    """
    check_tensor(name, weight, dtypes=FLOAT_DTYPES, ndim=2)
    check_choice("bits", bits, SUPPORTED_BITS)
    group_size = canonical_group_size(group_size)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    if scale_dtype is None:
        scale_dtype = default_scale_dtype(weight.dtype)
    check_choice("scale_dtype", scale_dtype, SCALE_DTYPES)
    if weight.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(weight.shape)}); nothing to quantize")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} contains NaN or Inf values; cannot quantize it")
    scale, zero = rtn_scales(weight, bits, group_size, symmetric, scale_dtype)
    return pack_weight(weight, scale, zero, bits, group_size)


def pack_weight(weight: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor],
                bits: int, group_size: int) -> PackedWeight:
    """Quantize ``weight`` with the given scales/zero points and pack it (used by RTN, GPTQ, AWQ)."""
    codes = quantize_with_scales(weight, scale, zero_point, bits, group_size)
    return PackedWeight(pack_codes(codes, bits), scale.contiguous(),
                        None if zero_point is None else zero_point.contiguous(),
                        tuple(weight.shape), bits, group_size)


def dequantize(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
               weight_zero_point: Optional[torch.Tensor], bits: int, group_size: int,
               in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference dequantization: ``(q - z) * s`` in float32, returned as ``dtype`` [N, K]."""
    k = in_features
    g = effective_group_size(group_size, k)
    q = unpack_codes(weight_packed, bits, k).float()
    s = weight_scale.float().repeat_interleave(g, dim=1)[:, :k]
    if weight_zero_point is None:
        z = float(2 ** (bits - 1))
    else:
        z = weight_zero_point.float().repeat_interleave(g, dim=1)[:, :k]
    return ((q - z) * s).to(dtype)


def check_packed(weight_packed, weight_scale, weight_zero_point, bits: int, group_size: int,
                 in_features: int, device=None):
    """Validate a packed weight's tensors against ``bits``/``group_size``/``in_features``; returns N."""
    check_choice("bits", bits, SUPPORTED_BITS)
    check_choice("group_size", group_size, SUPPORTED_GROUP_SIZES)
    check_tensor("weight_packed", weight_packed, dtypes=(torch.int32,), ndim=2, contiguous=True, device=device)
    n = weight_packed.shape[0]
    words = packed_words(in_features, bits)
    if weight_packed.shape[1] != words:
        raise ValueError(f"weight_packed has shape {tuple(weight_packed.shape)}; for in_features={in_features} "
                         f"at bits={bits} expected [out_features, {words}]")
    groups = num_groups(in_features, group_size)
    check_tensor("weight_scale", weight_scale, dtypes=SCALE_DTYPES, ndim=2, contiguous=True, device=device)
    if tuple(weight_scale.shape) != (n, groups):
        raise ValueError(f"weight_scale has shape {tuple(weight_scale.shape)}; expected ({n}, {groups})")
    if weight_zero_point is not None:
        check_tensor("weight_zero_point", weight_zero_point, dtypes=(torch.uint8,), ndim=2, contiguous=True,
                     device=device)
        if tuple(weight_zero_point.shape) != (n, groups):
            raise ValueError(f"weight_zero_point has shape {tuple(weight_zero_point.shape)}; expected ({n}, {groups})")
    return n
