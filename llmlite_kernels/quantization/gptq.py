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

from ..formats.lowbit import PackedWeight, default_scale_dtype, effective_group_size, num_groups, pack_weight
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
    if not 0 <= damp < 1:
        raise ValueError(f"damp={damp!r} must be in [0, 1)")
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


def _prepare(weight: torch.Tensor, hessian: torch.Tensor, scale_dtype: Optional[torch.dtype]):
    """``(scale_dtype, W, H, diag H)`` in float32 copies; input columns never activated (``H_jj = 0``) are
    zeroed in ``W`` and get ``H_jj = 1``."""
    scale_dtype = scale_dtype or default_scale_dtype(weight.dtype)
    k = weight.shape[1]
    if hessian.shape != (k, k):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}; expected ({k}, {k}) for weight {tuple(weight.shape)}")
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    return scale_dtype, w, h, h.diagonal().clone()


def _ordered_factor(h: torch.Tensor, diag: torch.Tensor, act_order: bool, damp: float):
    """``(perm, U)``: the column visiting order (decreasing ``H_jj`` with act-order) and the upper Cholesky
    factor of the permuted, dampened inverse Hessian."""
    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(h.shape[0], device=h.device)
    return perm, _inverse_hessian_cholesky(h[perm][:, perm], damp)


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
    scale_dtype, w, h, diag = _prepare(weight, hessian, scale_dtype)
    n, k = w.shape
    g = effective_group_size(group_size, k)
    groups = num_groups(k, group_size)

    perm, u = _ordered_factor(h, diag, act_order, damp)
    if static_groups or group_size == -1:
        scale, zero = searched_scales(w, bits, group_size, symmetric, scale_dtype, diag, clip_search)
        codes = _static_pass(w, u, perm, scale, zero, bits, group_size, block_size)
        return _result(weight, hessian, codes, scale, zero, bits, group_size)

    # dynamic groups (no act-order: columns in natural order): a group is decided when the pass reaches
    # its first column, from the already-updated weight
    scale = torch.empty(n, groups, dtype=scale_dtype, device=w.device)
    zero = None if symmetric else torch.empty(n, groups, dtype=torch.uint8, device=w.device)
    s_col = torch.empty(n, k, device=w.device)
    z_col = torch.empty(n, k, device=w.device)

    def decide(col, cols):
        s, z = searched_scales(cols, bits, -1, symmetric, scale_dtype, diag[col:col + g], clip_search)
        scale[:, col // g] = s[:, 0]
        if zero is not None:
            zero[:, col // g] = z[:, 0]
        s_col[:, col:col + g] = s.float()
        z_col[:, col:col + g] = float(2 ** (bits - 1)) if z is None else z.float()
    with single_thread():
        codes = _quantize_columns(w, u, s_col, z_col, float(2**bits - 1), block_size, (g, decide))
    return _result(weight, hessian, codes, scale, zero, bits, group_size)


def _static_pass(w, u, perm, scale, zero, bits, group_size, block_size) -> torch.Tensor:
    """Codes [N, K] (original column order) of the GPTQ pass over ``w``'s columns in the order ``perm``, with
    every group's scale and zero point fixed beforehand; ``u``: the factor of the permuted Hessian."""
    k = w.shape[1]
    s_col, z_col = (t[:, perm] for t in _column_scales(scale, zero, bits, effective_group_size(group_size, k), k))
    with single_thread():
        codes = _quantize_columns(w[:, perm].clone(), u, s_col, z_col, float(2**bits - 1), block_size)
    return codes[:, torch.argsort(perm)]


def _column_scales(scale, zero, bits, g, k):
    """Each column's float scale and zero point, ``[N, K]``, from the per-group ones."""
    s_col = scale.float().repeat_interleave(g, dim=1)[:, :k]
    z_col = (torch.full_like(s_col, float(2 ** (bits - 1))) if zero is None
             else zero.float().repeat_interleave(g, dim=1)[:, :k])
    return s_col, z_col


def _quantize_columns(w, u, s_col, z_col, maxq, block_size, decide=None) -> torch.Tensor:
    """The GPTQ pass over the (permuted) columns of ``w`` [N, K], updating ``w`` in place.

    ``s_col``/``z_col`` [N, K]: each column's scale and zero point; ``maxq``: the largest code.
    ``decide = (g, fn)``, when given: at each multiple ``col`` of ``g``, ``fn(col, cols)`` fills them for
    the group of ``g`` columns starting there from the group's already-updated columns ``cols`` (dynamic
    groups; columns in natural order).
    """
    n, k = w.shape
    q_all = torch.zeros(n, k, dtype=torch.int64, device=w.device)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if decide is not None and col % decide[0] == 0:
                end = min(col + decide[0], k)
                decide[1](col, torch.cat([wb[:, i:], w[:, b1:end]], dim=1)[:, :end - col])
            s, z = s_col[:, col], z_col[:, col]
            x = wb[:, i]
            q = (torch.round(x / s) + z).clamp_(0, maxq)
            q_all[:, col] = q.to(torch.int64)
            e = (x - (q - z) * s) / ub[i, i]
            wb[:, i:] -= e[:, None] * ub[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return q_all


def _dequantized(codes, scale, zero, bits, group_size) -> torch.Tensor:
    k = codes.shape[1]
    s_col, z_col = _column_scales(scale, zero, bits, effective_group_size(group_size, k), k)
    return (codes.float() - z_col) * s_col


def _result(weight, hessian, codes, scale, zero, bits, group_size) -> GPTQResult:
    dequant = _dequantized(codes, scale, zero, bits, group_size)
    packed = pack_weight(dequant, scale, zero, bits, group_size)
    return GPTQResult(packed, codes, output_error(weight, dequant, hessian))


@torch.no_grad()
def gptq_candidates(weight: torch.Tensor, hessian: torch.Tensor, candidates, symmetric: bool = False,
                    scale_dtype: Optional[torch.dtype] = None, damp: float = 0.01, block_size: int = 128,
                    act_order: bool = False, clip_search: bool = False) -> list:
    """GPTQ with static groups of one layer for several ``(bits, group_size)`` candidates, sharing the
    Hessian's factorisation. Returns ``[(scale, zero_point, dequantized weight [N, K])]``, one per candidate,
    equal to ``gptq_quantize(..., static_groups=True)`` of each."""
    scale_dtype, w, h, diag = _prepare(weight, hessian, scale_dtype)
    perm, u = _ordered_factor(h, diag, act_order, damp)
    results = []
    for bits, group in candidates:
        s, z = searched_scales(w, bits, group, symmetric, scale_dtype, diag, clip_search)
        codes = _static_pass(w, u, perm, s, z, bits, group, block_size)
        results.append((s, z, _dequantized(codes, s, z, bits, group)))
    return results


def rtn_error(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, symmetric: bool,
              scale_dtype: torch.dtype = torch.float16, clip_search: bool = False) -> float:
    """The GPTQ objective for round-to-nearest (optionally clip-searched) quantization, for comparison."""
    s, z = searched_scales(weight, bits, group_size, symmetric, scale_dtype, hessian.diagonal(), clip_search)
    return output_error(weight, fake_quantize(weight, s, z, bits, group_size), hessian)
