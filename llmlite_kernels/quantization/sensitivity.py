"""Per-layer sensitivity of each candidate (bits, group_size): its size and its quantization error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..formats.bitpack import packed_words
from ..formats.lowbit import PackedWeight, default_scale_dtype
from .clip_search import fake_quantize, searched_scales
from .gptq import gptq_candidates, output_error


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
                  clip_search: bool = False, fisher: Optional[torch.Tensor] = None,
                  output_fisher: Optional[torch.Tensor] = None, gptq: Optional[dict] = None) -> list:
    """Every candidate's exact packed size and its error for the quantized weight ``Q``.

    ``Q`` is round-to-nearest (clip-searched if asked), or GPTQ with static groups when ``gptq`` gives its
    options (``damp``, ``block_size``, ``act_order``; needs ``hessian``). The error is:

    * ``output_fisher`` [out_features] given (``quantization.fisher.output_fishers``):
      ``sum_o F_o (E H E^T)_oo`` with ``E = W - Q``: each output channel's mean squared error weighted by
      how much the loss cares about that channel, the predicted loss increase (needs ``hessian``);
    * ``fisher`` [out, in] given (``quantization.fisher.fisher_diagonals``): ``sum F * E^2``;
    * else the *relative* Hessian-weighted error ``tr(E H E^T) / tr(W H W^T)`` (noise over signal of the
      layer output; ``hessian=None``: the plain relative squared error). The absolute output error is not
      comparable across layers (early layers have small inputs, yet their errors propagate).
    """
    scale_dtype = scale_dtype or default_scale_dtype(weight.dtype)
    w = weight.detach().float()
    if fisher is not None and fisher.shape != w.shape:
        raise ValueError(f"fisher has shape {tuple(fisher.shape)}; expected the weight's {tuple(w.shape)}")
    if output_fisher is not None and output_fisher.shape != (w.shape[0],):
        raise ValueError(f"output_fisher has shape {tuple(output_fisher.shape)}; expected ({w.shape[0]},)")
    if (output_fisher is not None or gptq is not None) and hessian is None:
        raise ValueError("output_fisher and gptq need the layer's hessian")
    candidates = [(bits, group) for bits in candidate_bits for group in candidate_group_sizes]
    if gptq is not None:
        quantized = gptq_candidates(w, hessian, candidates, symmetric, scale_dtype, clip_search=clip_search, **gptq)
    else:
        diag = fisher.float().mean(0) if fisher is not None else None if hessian is None else hessian.diagonal()
        quantized = []
        for bits, group in candidates:
            s, z = searched_scales(w, bits, group, symmetric, scale_dtype, diag, clip_search)
            quantized.append((s, z, fake_quantize(w, s, z, bits, group)))
    signal = 1.0 if fisher is not None or output_fisher is not None else (
        float(w.pow(2).sum()) if hessian is None else output_error(w, torch.zeros_like(w), hessian))
    signal = max(signal, 1e-30)
    options = []
    for (bits, group), (s, z, q) in zip(candidates, quantized):
        codes = torch.empty(w.shape[0], packed_words(w.shape[1], bits), dtype=torch.int32)  # sized, unused
        size = PackedWeight(codes, s, z, tuple(w.shape), bits, group).nbytes * 8
        e = w - q
        if output_fisher is not None:
            err = float((((e @ hessian.float()) * e).sum(1) * output_fisher.float()).sum())
        elif fisher is not None:
            err = float((e.pow(2) * fisher.float()).sum())
        else:
            err = float(e.pow(2).sum()) if hessian is None else output_error(w, q, hessian)
        options.append(Option(bits, group, size, err / signal))
    return options
