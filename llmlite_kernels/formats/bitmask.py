"""Pruning masks stored as bits: ``mask_bits`` uint8 ``[N, ceil(K/8)]`` for a weight ``[N, K]``.

Column ``k`` of row ``n`` is bit ``k % 8`` (least significant first) of byte ``mask_bits[n, k // 8]``;
1 = kept, 0 = pruned. Each row starts on a fresh byte; the unused high bits of a row's last byte are 0.
"""
from __future__ import annotations

import torch

from .._checks import check_tensor

def mask_bytes(in_features: int) -> int:
    """Bytes per row of a mask over ``in_features`` columns."""
    return (in_features + 7) // 8


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool (or 0/1) ``[N, K]`` -> uint8 ``[N, ceil(K/8)]``."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [out_features, in_features], got shape {tuple(mask.shape)}")
    n, k = mask.shape
    padded = torch.zeros(n, mask_bytes(k) * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :k] = mask.to(torch.bool)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=mask.device)
    return (padded.view(n, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_mask(mask_bits: torch.Tensor, in_features: int) -> torch.Tensor:
    """uint8 ``[N, ceil(K/8)]`` -> bool ``[N, K]``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=mask_bits.device)
    bits = (mask_bits[..., None] >> shifts) & 1
    return bits.view(mask_bits.shape[0], -1)[:, :in_features].bool()


def check_mask_bits(mask_bits, out_features: int, in_features: int, device=None) -> None:
    check_tensor("mask_bits", mask_bits, dtypes=(torch.uint8,), ndim=2, contiguous=True, device=device)
    expected = (out_features, mask_bytes(in_features))
    if tuple(mask_bits.shape) != expected:
        raise ValueError(f"mask_bits has shape {tuple(mask_bits.shape)}; expected {expected} "
                         f"for a weight [{out_features}, {in_features}]")


def masked_weight(weight: torch.Tensor, mask_bits: torch.Tensor) -> torch.Tensor:
    """``W * M`` as a dense tensor (pruned positions exactly 0, whatever W holds there)."""
    mask = unpack_mask(mask_bits, weight.shape[1])
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
