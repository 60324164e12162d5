"""SparseGPT, then each block reconstructed against the **dense** model ("sparsegpt_recon").

SparseGPT fits each layer to the outputs its *own* pruned inputs would give through the dense weights, so
the error that earlier blocks introduced is never corrected. Here the dense model and the pruned model are
run side by side, block by block:

1. the block's Linears are pruned by SparseGPT on the pruned stream's inputs (N:M masks chosen inside the
   OBS sweep), exactly as ``prune_(method="sparsegpt")`` does;
2. with the masks fixed, ``recon_steps`` Adam steps on the kept weights of the whole block minimise the
   normalised squared error between the pruned block's output (on the *pruned* stream) and the dense
   block's output (on the *dense* stream), so each block also absorbs the drift of the blocks before it;
   ``masked_linear``'s gradient is zero at pruned positions, so the masks are kept exactly.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import (BlockInputs, LinearInputStats, _first, block_linears, capture_block_inputs,
                           decoder_blocks)
from ..config import PruneConfig
from ..models import set_submodule
from ..nn.sparse_linear import SparseLinear

log = logging.getLogger("llmlite_kernels")


def _slice_batch(value, rows: slice, batch: int):
    """Samples ``rows`` of a keyword argument whose leading dimension is the batch."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[rows]
    if isinstance(value, tuple):
        return tuple(_slice_batch(v, rows, batch) for v in value)
    return value


def reconstruct_block(block: nn.Module, pruned: BlockInputs, dense_out: list, steps: int, lr: float,
                      batch: int) -> None:
    """Adam steps on the SparseLinear weights of ``block`` towards the dense block outputs.

    The loss is each token's squared error relative to its dense output's squared norm, averaged over
    tokens: a few tokens with huge activations (attention sinks) would otherwise dominate a plain MSE."""
    params = [m.weight for m in block.modules() if isinstance(m, SparseLinear)]
    if steps <= 0 or not params:
        return
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
                start = (step // len(pruned.hidden) * n) % h.shape[0]
                rows = slice(start, start + n)
                kwargs = {k: _slice_batch(v, rows, h.shape[0]) for k, v in pruned.kwargs[b].items()}
                target = dense_out[b][rows]
                out = _first(block(h[rows], **kwargs))
                loss = ((out - target).square().sum(-1) / target.square().sum(-1).clamp_min(1e-12)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step in (0, steps - 1):
                    log.info("block reconstruction step %d/%d: relative error %.4g", step + 1, steps, loss.item())
    finally:
        for p, flag in zip(frozen, saved):
            p.requires_grad_(flag)
        for p in params:
            p.grad = None


def prune_blocks_reconstructed(model: nn.Module, config: PruneConfig, windows: torch.LongTensor, targets: dict,
                               progress: bool = True) -> set:
    """Prune the selected Linears inside the decoder blocks of ``model``; returns their names."""
    from .apply import _prune_layer  # apply imports this module lazily: no cycle at import time

    was_training = model.training
    model.eval()
    names = {id(m): n for n, m in model.named_modules()}
    pruned = capture_block_inputs(model, windows)
    dense = BlockInputs(list(pruned.hidden), pruned.kwargs)
    done = set()
    for block in tqdm(decoder_blocks(model), desc=f"prune {config.describe()}", disable=not progress):
        dense_out = dense.run(block)
        linears = {n: m for n, m in block_linears(block, prefix=names[id(block)]).items() if n in targets}
        with LinearInputStats(linears) as stats:
            pruned.run(block)
        for name, module in linears.items():
            set_submodule(model, name, _prune_layer(module, config, stats, name))
            done.add(name)
        del stats
        reconstruct_block(block, pruned, dense_out, config.recon_steps, config.recon_lr, config.recon_batch)
        pruned = BlockInputs(pruned.run(block), pruned.kwargs)
        dense = BlockInputs(dense_out, pruned.kwargs)
    model.train(was_training)
    return done
