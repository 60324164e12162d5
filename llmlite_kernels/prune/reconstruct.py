"""SparseGPT against the dense model ("sparsegpt_recon", EXPERIMENTAL: diverges on SmolLM2 with 4k calibration tokens).

SparseGPT fits each layer to the outputs its *own* pruned inputs would give through the dense weights,
so errors of earlier blocks are never corrected. Here every Linear is fitted to the **dense model's**
outputs instead. Per block, the dense model and the pruned model are run side by side (the block is still
dense at that point, so the same module serves both streams) and each Linear accumulates
``H = X_p^T X_p`` and ``C = X_p^T X_d`` (pruned-stream inputs X_p, dense-stream inputs X_d). For a row w of
the dense weight, ``min ||X_p v - X_d w||^2`` equals ``(v - w*)^T H (v - w*)`` + const with
``w* = H^-1 C w``; so:

1. target ``W* = W C^T H^-1`` (the unpruned least-squares fit to the dense outputs);
2. SparseGPT (OBS sweep, N:M masks chosen inside it) of ``W*`` under ``H``;
3. with the mask fixed, the kept weights of every row are refitted to the exact masked least-squares
   optimum by conjugate gradient on ``(v - w*)^T H (v - w*)`` (all rows at once, a few K x K matmuls);
4. optionally (``recon_steps`` > 0) a few Adam steps on the kept weights of the whole block, minimising
   the error between the pruned block's outputs and the dense block's outputs (the mask stays fixed:
   ``masked_linear``'s gradient is zero at pruned positions).
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import BlockInputs, _first, block_linears, capture_block_inputs, decoder_blocks
from ..config import PruneConfig
from ..models import set_submodule
from ..nn.quant_linear import linear_weight
from ..nn.sparse_linear import SparseLinear
from .sparsegpt import sparsegpt_prune


class _PairedStats:
    """Per Linear: ``X_p^T X_p`` and ``X_p^T X_d`` over paired dense / pruned runs of the same block."""

    def __init__(self, modules: dict):
        self.modules = modules
        self.h, self.c, self.count = {}, {}, {}
        self._dense_inputs = {}

    def _hooks(self, fn):
        return [m.register_forward_hook(lambda mod, args, out, name=name: fn(name, args[0]))
                for name, m in self.modules.items()]

    @torch.no_grad()
    def run_pair(self, block, dense_h, pruned_h, kwargs):
        """Run the (still dense) block on the dense then the pruned batch; returns the dense output."""
        def keep(name, x):
            self._dense_inputs[name] = x.detach().reshape(-1, x.shape[-1]).float()

        def accumulate(name, x):
            xp = x.detach().reshape(-1, x.shape[-1]).float()
            xd = self._dense_inputs.pop(name)
            if name not in self.h:
                k = xp.shape[1]
                self.h[name] = torch.zeros(k, k, device=xp.device)
                self.c[name] = torch.zeros(k, k, device=xp.device)
                self.count[name] = 0
            self.h[name].addmm_(xp.t(), xp)
            self.c[name].addmm_(xp.t(), xd)
            self.count[name] += xp.shape[0]

        handles = self._hooks(keep)
        try:
            dense_out = _first(block(dense_h, **kwargs))
        finally:
            for h in handles:
                h.remove()
        handles = self._hooks(accumulate)
        try:
            block(pruned_h, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return dense_out

    def hessian(self, name):
        return self.h[name] / self.count[name], self.c[name] / self.count[name]


def dense_target(weight: torch.Tensor, h: torch.Tensor, c: torch.Tensor, damp: float) -> torch.Tensor:
    """``W C^T (H + damp*mean(diag H)*I)^-1``: the least-squares fit of ``X_p v`` to ``X_d w`` per row."""
    hd = h.double().clone()
    hd.diagonal().add_(damp * hd.diagonal().mean().clamp_min(1e-12))
    rhs = c.double() @ weight.double().t()  # [K, N] = C w for every row w
    return torch.linalg.solve(hd, rhs).t().float()


@torch.no_grad()
def masked_refit(weight: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, h: torch.Tensor,
                 damp: float, iters: int = 40) -> torch.Tensor:
    """Kept weights minimising ``(v - target)^T H (v - target)`` per row, by conjugate gradient from ``weight``.

    CG on each row's system restricted to its kept entries (masked matvec ``(P H) * M``); all rows advance
    together. Pruned entries stay exactly 0."""
    hd = h.float().clone()
    hd.diagonal().add_(damp * hd.diagonal().mean().clamp_min(1e-12))
    m = mask.float()
    w = weight.float() * m
    r = ((target - w) @ hd) * m
    p = r.clone()
    rr = (r * r).sum(1)
    tiny = torch.finfo(torch.float32).tiny
    for _ in range(iters):
        ap = (p @ hd) * m
        alpha = rr / (p * ap).sum(1).clamp_min(tiny)
        w += alpha[:, None] * p
        r -= alpha[:, None] * ap
        rr_new = (r * r).sum(1)
        p = r + (rr_new / rr.clamp_min(tiny))[:, None] * p
        rr = rr_new
    return (w * m).to(weight.dtype)


def _slice_batch(value, n: int, batch: int):
    """The first ``n`` samples of a keyword argument whose leading dimension is the batch."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[:n]
    if isinstance(value, tuple):
        return tuple(_slice_batch(v, n, batch) for v in value)
    return value


def reconstruct_block(block: nn.Module, pruned: BlockInputs, dense_out: list, steps: int, lr: float,
                      batch: int) -> None:
    """A few Adam steps on the SparseLinear weights of ``block`` towards the dense block outputs."""
    if steps <= 0:
        return
    params = [m.weight for m in block.modules() if isinstance(m, SparseLinear)]
    frozen = [p for p in block.parameters() if all(p is not q for q in params)]
    saved = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    try:
        with torch.enable_grad():
            for step in range(steps):
                b = step % len(pruned.hidden)
                h = pruned.hidden[b]
                n = min(batch, h.shape[0])
                kwargs = {k: _slice_batch(v, n, h.shape[0]) for k, v in pruned.kwargs[b].items()}
                target = dense_out[b][:n]
                out = _first(block(h[:n], **kwargs))
                loss = (out - target).square().mean() / target.square().mean().clamp_min(1e-12)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        for p, flag in zip(frozen, saved):
            p.requires_grad_(flag)
        for p in params:
            p.grad = None


def prune_blocks_reconstructed(model: nn.Module, config: PruneConfig, windows: torch.LongTensor, targets: dict,
                               progress: bool = True) -> set:
    """Prune the selected Linears inside the decoder blocks of ``model``; returns their names."""
    was_training = model.training
    model.eval()
    names = {id(m): n for n, m in model.named_modules()}
    pruned = capture_block_inputs(model, windows)
    dense = BlockInputs(list(pruned.hidden), pruned.kwargs)
    done = set()
    blocks = decoder_blocks(model)
    for block in tqdm(blocks, desc=f"prune {config.describe()}", disable=not progress):
        linears = {n: m for n, m in block_linears(block, prefix=names[id(block)]).items() if n in targets}
        stats = _PairedStats(linears)
        dense_out = [stats.run_pair(block, hd, hp, kw) for hd, hp, kw in zip(dense.hidden, pruned.hidden, pruned.kwargs)]
        for name, module in linears.items():
            h, c = stats.hessian(name)
            weight = linear_weight(module).detach().float()
            target = dense_target(weight, h, c, config.damp)
            new, mask = sparsegpt_prune(target, h, config.sparsity, config.nm, config.scope, config.blocksize,
                                        config.damp)
            new = masked_refit(new, target, mask, h, config.damp)
            set_submodule(model, name, SparseLinear.from_linear(module, mask, weight=new.to(module.weight.dtype)))
            done.add(name)
        del stats
        reconstruct_block(block, pruned, dense_out, config.recon_steps, config.recon_lr, config.recon_batch)
        with torch.no_grad():
            pruned = BlockInputs(pruned.run(block), pruned.kwargs)
        dense = BlockInputs(dense_out, pruned.kwargs)
    model.train(was_training)
    return done
