"""GPTQ (Frantar et al., 2022): quantize a weight column by column, spreading each column's rounding error
onto the columns not yet quantized through the inverse Hessian of the layer-output error.

The minimised error is ``tr((W - Q) H (W - Q)^T)`` with ``H = X^T X / tokens`` (``calibration.LinearInputStats``).

* dampening: ``H += damp * mean(diag H) * I``; input columns never activated (``H_jj = 0``) are zeroed;
* lazy block updates: columns are processed in blocks of ``block_size``; the rest of the matrix is updated
  once per block;
* ``act_order``: columns are visited by decreasing ``H_jj``. Group membership stays by the *original*
  column index (static groups: every group's scale and zero point are fixed from the original weight
  before the pass), so the stored format is unchanged and needs no ``g_idx`` permutation;
* without ``static_groups`` a group's scale is decided when the pass reaches its first column, from the
  already-updated weight (the reference algorithm).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from ..formats.lowbit import PackedWeight, effective_group_size, num_groups, pack_weight, quantize_with_scales
from .clip_search import fake_quantize, searched_scales


@dataclass
class GPTQResult:
    packed: PackedWeight
    codes: torch.Tensor  # int64 [N, K]
    error: float         # tr((W - Q) H (W - Q)^T)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T)``: the mean squared layer-output error over the calibration tokens."""
    e = weight.float() - quantized.float()
    return float(((e @ hessian.float()) * e).sum())


def _inverse_hessian_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``, dampening more if ``H`` is not PD."""
    k = h.shape[0]
    eye = torch.eye(k, device=h.device, dtype=h.dtype)
    mean_diag = h.diagonal().mean()
    for attempt in range(6):
        l, info = torch.linalg.cholesky_ex(h + damp * (10 ** attempt) * mean_diag * eye)
        if info == 0:
            hinv = torch.cholesky_inverse(l)
            u, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if info == 0:
                return u
    raise ValueError("the calibration Hessian is not positive definite even after dampening; "
                     "use more calibration tokens or a larger damp")


class single_thread(contextlib.ContextDecorator):
    """Run on one thread: the many small ops of these loops only pay for thread synchronisation."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128,
                  symmetric: bool = False, scale_dtype: Optional[torch.dtype] = None, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False, static_groups: Optional[bool] = None,
                  clip_search: bool = False) -> GPTQResult:
    """GPTQ-quantize ``weight`` [N, K] given ``hessian`` [K, K]; returns the packed weight and its codes.

    ``static_groups`` defaults to ``act_order`` (act-order requires it: the format has no ``g_idx``).
    ``clip_search`` picks each group's clip ratio minimising its ``diag(H)``-weighted squared error.
    """
    if static_groups is None:
        static_groups = act_order
    if act_order and not static_groups:
        raise ValueError("act_order=True needs static_groups=True (the packed format stores no g_idx)")
    if not 0 <= damp < 1:
        raise ValueError(f"damp={damp!r} must be in [0, 1)")
    if scale_dtype is None:
        scale_dtype = torch.bfloat16 if weight.dtype == torch.bfloat16 else torch.float16
    n, k = weight.shape
    if hessian.shape != (k, k):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}; expected ({k}, {k}) for weight {tuple(weight.shape)}")
    g = effective_group_size(group_size, k)
    groups = num_groups(k, group_size)
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    diag = h.diagonal().clone()

    scale = torch.empty(n, groups, dtype=scale_dtype, device=w.device)
    zero = None if symmetric else torch.empty(n, groups, dtype=torch.uint8, device=w.device)
    if static_groups or group_size == -1:
        s, z = searched_scales(w, bits, group_size, symmetric, scale_dtype, diag, clip_search)
        scale.copy_(s)
        if zero is not None:
            zero.copy_(z)
        decided = torch.ones(groups, dtype=torch.bool)
    else:
        decided = torch.zeros(groups, dtype=torch.bool)

    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(k, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    group_of = (perm // g).tolist()  # group of each visited column, by its original index
    u = _inverse_hessian_cholesky(h, damp)
    with single_thread():
        codes = _quantize_columns(w, u, scale, zero, decided, group_of, diag, bits, g, symmetric, scale_dtype,
                                  block_size, clip_search)
    return _result(weight, hessian, codes[:, torch.argsort(perm)], scale, zero, bits, group_size)


def _quantize_columns(w, u, scale, zero, decided, group_of, diag, bits, g, symmetric, scale_dtype, block_size,
                      clip_search) -> torch.Tensor:
    """The GPTQ pass over the (permuted) columns of ``w``, updating ``w``, ``scale`` and ``zero`` in place."""
    n, k = w.shape
    maxq = 2**bits - 1
    sf = scale.float()
    zf = None if zero is None else zero.float()
    half = float(2 ** (bits - 1))
    q_all = torch.zeros(n, k, dtype=torch.int64, device=w.device)

    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            grp = group_of[col]
            if not decided[grp]:  # not static: columns are in natural order, so this is the group's start
                end = min(col + g, k)
                cols = torch.cat([wb[:, i:], w[:, b1:end]], dim=1)[:, :end - col]
                s, z = searched_scales(cols, bits, -1, symmetric, scale_dtype, diag[col:end], clip_search)
                scale[:, grp] = s[:, 0]
                if zero is not None:
                    zero[:, grp] = z[:, 0]
                sf = scale.float()
                zf = None if zero is None else zero.float()
                decided[grp] = True
            s_col = sf[:, grp]
            z_col = half if zf is None else zf[:, grp]
            x = wb[:, i]
            q = (torch.round(x / s_col) + z_col).clamp_(0, maxq)
            q_all[:, col] = q.to(torch.int64)
            dq = (q - z_col) * s_col
            e = (x - dq) / ub[i, i]
            wb[:, i:] -= e[:, None] * ub[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return q_all


def _result(weight, hessian, codes, scale, zero, bits, group_size) -> GPTQResult:
    k = weight.shape[1]
    g = effective_group_size(group_size, k)
    s_full = scale.float().repeat_interleave(g, dim=1)[:, :k]
    z_full = (float(2 ** (bits - 1)) if zero is None
              else zero.float().repeat_interleave(g, dim=1)[:, :k])
    dequant = (codes.float() - z_full) * s_full
    packed = pack_weight(dequant, scale, zero, bits, group_size)
    return GPTQResult(packed, codes, output_error(weight, dequant, hessian))


def rtn_error(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, symmetric: bool,
              scale_dtype: torch.dtype = torch.float16, clip_search: bool = False) -> float:
    """The GPTQ objective for round-to-nearest (optionally clip-searched) quantization, for comparison."""
    s, z = searched_scales(weight, bits, group_size, symmetric, scale_dtype, hessian.diagonal(), clip_search)
    return output_error(weight, fake_quantize(weight, s, z, bits, group_size), hessian)
