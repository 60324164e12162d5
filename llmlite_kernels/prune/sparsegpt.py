"""SparseGPT (Frantar & Alistarh 2023): prune a layer column by column with Optimal Brain Surgeon updates.

For the layer-output error ``||X W^T - X W'^T||^2`` with input Hessian ``H = X^T X``, pruning weight
``w_ij`` costs ``w_ij^2 / [H^-1]_jj`` and the best compensation moves the not-yet-visited weights of row
``i`` by ``-(w_ij / [H^-1]_jj) [H^-1]_j,:``. Columns are visited left to right in blocks of ``blocksize``
(lazy batch updates) using the upper Cholesky factor of ``H^-1``; the mask is chosen inside the sweep:
per block for unstructured sparsity, per group of M columns (when the sweep reaches it) for N:M.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .masks import check_nm_shape, nm_mask, unstructured_mask

CHUNK = 16


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, dead input columns).

    Inputs that are always zero get ``H_jj = 1`` (their weights are pruned first: they cost nothing)."""
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    for extra in (0.0, 1e-4, 1e-2, 1e-1):
        if extra:
            h.diagonal().add_(extra * h.diagonal().mean())
        factor, info = torch.linalg.cholesky_ex(h)
        if info == 0:
            hinv = torch.cholesky_inverse(factor)
            return torch.linalg.cholesky(hinv, upper=True).float(), dead
    raise ValueError("the calibration Hessian is not positive definite even after dampening")


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    nm: Optional[Tuple[int, int]] = None, scope: str = "row", blocksize: int = 128,
                    damp: float = 0.01) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(new weight [N, K] in weight's dtype, mask bool [N, K])``; pruned entries are 0."""
    w = weight.detach().float().clone()
    rows, k = w.shape
    if nm is not None:
        check_nm_shape(k, nm[1])
        if blocksize % nm[1]:
            raise ValueError(f"blocksize={blocksize} must be a multiple of M={nm[1]} for an N:M pattern")
    hinv, dead = inverse_hessian_factor(hessian, damp)
    w[:, dead] = 0
    pruned = torch.zeros(rows, k, dtype=torch.bool, device=w.device)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        pruned1 = pruned[:, i1:i2]
        if nm is None:
            cost = w1 ** 2 / hinv1.diagonal()[None, :] ** 2
            pruned1 |= ~unstructured_mask(cost, sparsity, scope)
        # Columns in chunks (one N:M group, or CHUNK columns): the sweep updates the chunk's own columns
        # one by one, and the rest of the block once per chunk (the lazy-batch trick one level down).
        step = nm[1] if nm is not None else CHUNK
        for c1 in range(0, i2 - i1, step):
            c2 = min(c1 + step, i2 - i1)
            if nm is not None:
                n, m = nm
                cost = w1[:, c1:c2] ** 2 / hinv1.diagonal()[c1:c2][None, :] ** 2
                pruned1[:, c1:c2] |= ~nm_mask(cost, n, m)
            for i in range(c1, c2):
                col = w1[:, i]
                q = torch.where(pruned1[:, i], torch.zeros_like(col), col)
                err = (col - q) / hinv1[i, i]
                w1[:, i:c2] -= err[:, None] * hinv1[i, i:c2][None, :]
                w1[:, i] = q
                err1[:, i] = err
            w1[:, c2:] -= err1[:, c1:c2] @ hinv1[c1:c2, c2:]
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    mask = ~pruned
    return torch.where(mask, w, torch.zeros_like(w)).to(weight.dtype), mask
