"""``prune_``: replace the selected Linears of a model by :class:`SparseLinear` layers holding their masks.

Calibrated methods walk the decoder blocks in order (``calibration.sequential_blocks``): each block's
statistics are gathered on the outputs of the blocks before it *as already pruned* (``sequential=False``:
as in the dense model), then all its selected
Linears are pruned at once (``true_sequential=True``: subset by subset in call order, q/k/v then o then
gate/up then down, each subset's statistics gathered after the subsets before it were pruned). Selected Linears outside the decoder blocks (none by default: ``lm_head`` is
excluded) have no calibration statistics and are pruned by magnitude.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import (LinearInputStats, block_linears, calibration_windows, decoder_blocks, linear_subsets,
                           sequential_blocks)
from ..config import PruneConfig
from ..models import iter_linears, set_submodule
from ..nn.quant_linear import linear_weight
from ..nn.sparse_linear import SparseLinear
from .magnitude import magnitude_scores
from .masks import check_nm_shape, select_mask
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_scores

log = logging.getLogger("llmlite_kernels")


def _prune_layer(module: nn.Module, config: PruneConfig, stats: Optional[LinearInputStats], name: str
                 ) -> SparseLinear:
    weight = linear_weight(module).detach()
    if stats is None or config.method == "magnitude":
        mask = select_mask(magnitude_scores(weight), config.sparsity, config.nm, config.scope)
        return SparseLinear.from_linear(module, mask)
    if config.method == "wanda":
        mask = select_mask(wanda_scores(weight, stats.column_norms(name)), config.sparsity, config.nm, config.scope)
        return SparseLinear.from_linear(module, mask)
    # sparsegpt, and the pruning step of sparsegpt_recon
    new, mask = sparsegpt_prune(weight, stats.hessian(name), config.sparsity, config.nm, config.scope,
                                config.blocksize, config.damp)
    return SparseLinear.from_linear(module, mask, weight=new)


def prune_(model: nn.Module, config: Optional[PruneConfig] = None, calibration_texts=None, tokenizer=None,
           progress: bool = True) -> nn.Module:
    """Prune ``model`` in place; returns it. Every selected Linear becomes a :class:`SparseLinear`.

    ``calibration_texts``: strings (tokenized with ``tokenizer``), a LongTensor of token windows, or None
    for the WikiText-2 validation text; unused by magnitude pruning.
    """
    config = config or PruneConfig()
    targets = dict(iter_linears(model, config.include, config.exclude))
    if not targets:
        raise ValueError("no nn.Linear/Conv1D layer matched the config's include/exclude filters")
    if config.nm is not None:
        for name, module in targets.items():
            check_nm_shape(linear_weight(module).shape[1], config.nm[1], name)
    done = set()
    if config.calibrated:
        windows = calibration_windows(calibration_texts, tokenizer, config.calib_windows, config.calib_seq_len,
                                  config.calib_sampling, config.calib_seed)
        names = {id(m): n for n, m in model.named_modules()}
        if config.method == "sparsegpt_recon":
            from .reconstruct import prune_blocks_reconstructed

            done = prune_blocks_reconstructed(model, config, windows, targets, progress)
        else:
            pending = {}  # sequential=False: swapped in after the walk, so every block sees dense inputs
            for _, block, inputs in sequential_blocks(model, windows, progress=progress,
                                                      desc=f"prune {config.describe()}"):
                linears = {n: m for n, m in block_linears(block, prefix=names[id(block)]).items() if n in targets}
                subsets = linear_subsets(block, inputs, linears) if config.true_sequential else [list(linears)]
                for subset in subsets:
                    with LinearInputStats({n: linears[n] for n in subset}) as stats:
                        inputs.run(block)
                    for name in subset:
                        layer = _prune_layer(linears[name], config, stats, name)
                        if config.sequential:
                            set_submodule(model, name, layer)
                        else:
                            pending[name] = layer
                        done.add(name)
                    del stats
            for name, layer in pending.items():
                set_submodule(model, name, layer)
    rest = [n for n in targets if n not in done]
    if config.calibrated and rest:
        log.warning("pruning %d layers outside the decoder blocks by magnitude: %s", len(rest), rest[:4])
    for name in tqdm(rest, desc=f"prune {config.describe()}", disable=not progress or not rest):
        set_submodule(model, name, _prune_layer(targets[name], config, None, name))
    model.llmlite_prune_config = config.to_dict()
    return model


def model_sparsity(model: nn.Module) -> float:
    """Fraction of pruned weights over the model's SparseLinear layers (0 when there are none)."""
    kept = total = 0
    for module in model.modules():
        if isinstance(module, SparseLinear):
            kept += int(module.mask().sum())
            total += module.in_features * module.out_features
    return 1.0 - kept / total if total else 0.0
