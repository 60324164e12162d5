"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling searched per layer group.

For a group of Linears reading the same input ``X`` (produced by a *preceding op* P), weights are scaled
``W' = W diag(s)`` and P's output divided by ``s`` (folded into P's weight, and bias), so the full-precision
model is unchanged while salient input channels (large ``E[x^2]``) get finer quantization. ``s = rms(x)^a``
(normalised), with ``a`` searched on a grid minimising the summed layer-output error
``tr((W - Q(W s)/s) H (W - Q(W s)/s)^T)`` computed from the calibration Hessians alone.

Folding needs to know the block's structure: Llama/Qwen2/Mistral-style blocks are supported
(``input_layernorm -> q/k/v``, ``v_proj -> o_proj`` when shapes match (no grouped-query attention),
``post_attention_layernorm -> gate/up``, ``up_proj -> down_proj``). Other blocks raise a ValueError.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..nn.quant_linear import linear_weight
from .clip_search import fake_quantize
from ..formats.lowbit import rtn_scales
from .gptq import output_error

# (preceding op, Linears reading its output), paths relative to a decoder block
LLAMA_GROUPS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("self_attn.v_proj", ("self_attn.o_proj",)),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", ("mlp.down_proj",)),
)


def _get(block: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def check_supported(block: nn.Module) -> None:
    missing = [p for prev, lins in LLAMA_GROUPS for p in (prev, *lins) if _get(block, p) is None]
    if missing:
        raise ValueError(f"method='awq' supports Llama/Qwen2-style decoder blocks; {type(block).__name__} has no "
                         f"{', '.join(sorted(set(missing)))} (use method='gptq' or 'rtn' for this model)")


def _fold_into_prev(prev: nn.Module, scale: torch.Tensor) -> None:
    """Divide the output channels of ``prev`` (a norm or a Linear) by ``scale``."""
    if isinstance(prev, nn.Linear):
        prev.weight.data.div_(scale[:, None].to(prev.weight.dtype))
    else:
        prev.weight.data.div_(scale.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.data.div_(scale.to(prev.bias.dtype))


def _group_loss(weights, hessian, scale, settings, symmetric, scale_dtype) -> float:
    total = 0.0
    for w, (bits, group) in zip(weights, settings):
        ws = w * scale
        s, z = rtn_scales(ws, bits, group, symmetric, scale_dtype)
        total += output_error(w, fake_quantize(ws, s, z, bits, group) / scale, hessian)
    return total


@torch.no_grad()
def search_scale(weights, hessian: torch.Tensor, settings, symmetric: bool, scale_dtype: torch.dtype,
                 grid: int = 20) -> Tuple[torch.Tensor, float]:
    """The per-input-channel scale ``s`` [K] (and its exponent) minimising the group's output error."""
    weights = [w.float() for w in weights]
    rms = hessian.diagonal().clamp_min(0).sqrt().clamp_min(1e-8)
    best = (float("inf"), torch.ones_like(rms), 0.0)
    for i in range(grid):
        alpha = i / grid
        s = rms.pow(alpha).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = _group_loss(weights, hessian, s, settings, symmetric, scale_dtype)
        if loss < best[0]:
            best = (loss, s, alpha)
    return best[1], best[2]


@torch.no_grad()
def awq_scale_block(block: nn.Module, hessians: Dict[str, torch.Tensor], settings: Dict[str, tuple],
                    symmetric: bool, scale_dtype: torch.dtype = torch.float16, grid: int = 20) -> Dict[str, torch.Tensor]:
    """Search and fold AWQ scales in ``block`` (in place; the full-precision function is unchanged).

    ``hessians``/``settings`` ((bits, group_size)) are keyed by paths relative to the block and given for
    the Linears to be quantized. Returns ``{path: s}``: the input of ``path`` is now divided by ``s``,
    so its Hessian becomes ``H / (s s^T)`` (see :func:`rescale_hessian`).
    """
    check_supported(block)
    applied = {}
    for prev_path, paths in LLAMA_GROUPS:
        chosen = [p for p in paths if p in settings]
        if not chosen:
            continue
        prev = _get(block, prev_path)
        linears = [_get(block, p) for p in paths]
        k = linear_weight(linears[0]).shape[1]
        prev_out = prev.weight.shape[0]
        if prev_out != k:  # e.g. v_proj -> o_proj under grouped-query attention: cannot fold
            continue
        scale, _ = search_scale([linear_weight(_get(block, p)).detach() for p in chosen], hessians[chosen[0]],
                                [settings[p] for p in chosen], symmetric, scale_dtype, grid)
        for lin in linears:
            lin.weight.data.mul_(scale.to(lin.weight.dtype))
        _fold_into_prev(prev, scale)
        for p in paths:
            applied[p] = scale
    return applied


def rescale_hessian(hessian: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The Hessian of a layer whose input was divided by ``scale``."""
    return hessian / (scale[:, None] * scale[None, :])
