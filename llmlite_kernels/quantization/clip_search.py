"""Per-group clipping search: shrink each group's range to minimise its (importance-weighted) squared error."""
from __future__ import annotations

from typing import Optional

import torch

from ..formats.lowbit import _grouped, effective_group_size, quantize_with_scales, rtn_scales

CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(17))  # 1.0 .. 0.6


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor], bits: int,
                  group_size: int) -> torch.Tensor:
    """``dequantize(quantize_with_scales(weight))`` in float32, without packing."""
    k = weight.shape[1]
    g = effective_group_size(group_size, k)
    q = quantize_with_scales(weight, scale, zero_point, bits, group_size).float()
    s = scale.float().repeat_interleave(g, dim=1)[:, :k]
    z = (float(2 ** (bits - 1)) if zero_point is None
         else zero_point.float().repeat_interleave(g, dim=1)[:, :k])
    return (q - z) * s


def search_clip(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool, scale_dtype: torch.dtype,
                column_weight: Optional[torch.Tensor] = None, grid=CLIP_GRID) -> torch.Tensor:
    """The clip ratio ([N, G]) from ``grid`` minimising each group's ``sum_k c_k (w - Q(w))^2``.

    ``column_weight`` [K] (e.g. ``diag(H)``, the input's second moment) weighs the columns; default 1.
    """
    w = weight.float()
    n, k = w.shape
    g = effective_group_size(group_size, k)
    c = torch.ones(k, device=w.device) if column_weight is None else column_weight.float().clamp_min(0)
    best_err = best_clip = None
    for ratio in grid:
        clip = torch.full((1, 1), ratio, device=w.device)
        scale, zero = rtn_scales(w, bits, group_size, symmetric, scale_dtype, clip=clip)
        err = _grouped((w - fake_quantize(w, scale, zero, bits, group_size)).pow(2) * c, g).sum(-1)
        if best_err is None:
            best_err, best_clip = err, torch.full_like(err, ratio)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_clip = torch.where(better, torch.full_like(err, ratio), best_clip)
    return best_clip


def searched_scales(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool, scale_dtype: torch.dtype,
                    column_weight: Optional[torch.Tensor] = None, clip_search: bool = True):
    """``(scale, zero_point)`` of ``weight``: round-to-nearest, with the clip search when asked."""
    clip = (search_clip(weight, bits, group_size, symmetric, scale_dtype, column_weight)
            if clip_search else None)
    return rtn_scales(weight, bits, group_size, symmetric, scale_dtype, clip=clip)
