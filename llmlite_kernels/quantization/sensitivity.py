"""Per-layer sensitivity of each candidate (bits, group_size): its size and its layer-output error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..formats.bitpack import packed_words
from ..formats.lowbit import PackedWeight
from .clip_search import fake_quantize, searched_scales
from .gptq import output_error


@dataclass(frozen=True)
class Option:
    """One way to store one layer: ``size_bits`` counts codes, scales and zero points."""

    bits: int
    group_size: int
    size_bits: int
    error: float


@torch.no_grad()
def layer_options(weight: torch.Tensor, hessian: Optional[torch.Tensor], candidate_bits: Sequence[int],
                  candidate_group_sizes: Sequence[int], symmetric: bool, scale_dtype: Optional[torch.dtype] = None,
                  clip_search: bool = False, fisher: Optional[torch.Tensor] = None) -> list:
    """Every candidate's exact packed size and its error for round-to-nearest ``Q``:

    * ``fisher`` given (``quantization.fisher``): ``sum F * (W-Q)^2``, the loss increase (x2) it predicts;
    * else the *relative* Hessian-weighted error ``tr((W-Q) H (W-Q)^T) / tr(W H W^T)`` (noise over signal
      of the layer output; ``hessian=None``: the plain relative squared error). The absolute output error
      is not comparable across layers (early layers have small inputs, yet their errors propagate)."""
    scale_dtype = scale_dtype or (torch.bfloat16 if weight.dtype == torch.bfloat16 else torch.float16)
    w = weight.detach().float()
    if fisher is not None and fisher.shape != w.shape:
        raise ValueError(f"fisher has shape {tuple(fisher.shape)}; expected the weight's {tuple(w.shape)}")
    diag = fisher.float().mean(0) if fisher is not None else None if hessian is None else hessian.diagonal()
    signal = 1.0 if fisher is not None else (float(w.pow(2).sum()) if hessian is None
                                             else output_error(w, torch.zeros_like(w), hessian))
    signal = max(signal, 1e-30)
    options = []
    for bits in candidate_bits:
        for group in candidate_group_sizes:
            s, z = searched_scales(w, bits, group, symmetric, scale_dtype, diag, clip_search)
            codes = torch.empty(w.shape[0], packed_words(w.shape[1], bits), dtype=torch.int32)  # sized, unused
            size = PackedWeight(codes, s, z, tuple(w.shape), bits, group).nbytes * 8
            q = fake_quantize(w, s, z, bits, group)
            if fisher is not None:
                err = float(((w - q).pow(2) * fisher.float()).sum())
            else:
                err = float((w - q).pow(2).sum()) if hessian is None else output_error(w, q, hessian)
            options.append(Option(bits, group, size, err / signal))
    return options
