"""The calibrated path of ``quantize_``: bit allocation, then AWQ and/or GPTQ block by block.

Blocks are walked with ``calibration.sequential_blocks``, so every block is calibrated on the outputs of
the blocks before it as already quantized. Selected Linears outside the decoder blocks get round-to-nearest.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import LinearInputStats, calibration_windows, decoder_blocks, sequential_blocks
from ..config import QuantConfig
from ..formats.lowbit import default_scale_dtype, pack_weight
from ..nn.quant_linear import QuantLinear, linear_weight
from .allocate import allocate, format_plan, plan_summary
from .awq import awq_scale_block, rescale_hessian
from .fisher import fisher_diagonals, output_fishers
from .clip_search import searched_scales
from .gptq import gptq_quantize, single_thread
from .sensitivity import layer_options


class SharedInputStats(LinearInputStats):
    """``LinearInputStats`` that accumulates ``X^T X`` once for Linears called one after another on the
    very same input tensor (q/k/v, gate/up), and aliases the others to it."""

    def __init__(self, modules: dict):
        self.alias = {}
        self._last = (None, None)
        super().__init__(modules)

    def _hook(self, name):
        accumulate = super()._hook(name)

        def hook(module, args, output):
            last_input, last_name = self._last
            if args[0] is last_input and self.alias.get(last_name, last_name) != name:
                self.alias[name] = self.alias.get(last_name, last_name)
                return
            self._last = (args[0], name)
            accumulate(module, args, output)
        return hook

    def hessian(self, name: str) -> torch.Tensor:
        return super().hessian(self.alias.get(name, name))

    def clear(self):
        self.xtx, self.count, self.alias, self._last = {}, {}, {}, (None, None)


def _block_prefix(model: nn.Module, blocks: nn.ModuleList) -> str:
    for name, module in model.named_modules():
        if module is blocks:
            return name
    raise ValueError("decoder blocks not found among the model's modules")


def quantize_linear(module: nn.Module, hessian: Optional[torch.Tensor], bits: int, group_size: int,
                    config: QuantConfig, use_gptq: bool) -> QuantLinear:
    """One Linear to a QuantLinear: GPTQ (needs ``hessian``) or round-to-nearest (optionally clip-searched)."""
    weight = linear_weight(module).detach()
    sdtype = default_scale_dtype(weight.dtype)
    if use_gptq:
        packed = gptq_quantize(weight, hessian, bits, group_size, config.symmetric, sdtype, config.damp,
                               config.block_size, config.act_order, config.static_groups, config.clip_search).packed
    else:
        diag = None if hessian is None else hessian.diagonal()
        s, z = searched_scales(weight, bits, group_size, config.symmetric, sdtype, diag, config.clip_search)
        packed = pack_weight(weight.float(), s, z, bits, group_size)
    return QuantLinear.from_packed(packed, module.bias, dtype=weight.dtype)


def _swap(root: nn.Module, name: str, new: nn.Module) -> None:
    from ..models import set_submodule

    set_submodule(root, name, new)


def plan_bits(model: nn.Module, targets: Dict[str, nn.Module], windows: torch.LongTensor, config: QuantConfig,
              progress: bool = True) -> dict:
    """Measure every candidate of every target on calibration data and solve the size-budget knapsack."""
    if config.sensitivity == "fisher":
        options = _fisher_options(model, targets, windows, config, progress)
    else:
        out_fisher = (output_fishers(model, targets, windows[:config.fisher_windows], progress)
                      if config.sensitivity == "output-fisher" else {})
        options = _walk_options(model, targets, windows, config, progress, out_fisher)
    numels = {name: linear_weight(module).numel() for name, module in targets.items()}
    budget = int(config.avg_bits * sum(numels.values()))
    summary = plan_summary(allocate({n: options[n] for n in targets}, budget), numels, config.avg_bits)
    if progress:
        print(format_plan(summary), flush=True)
    return summary


def _fisher_options(model, targets, windows, config, progress):
    fisher = fisher_diagonals(model, targets, windows[:config.fisher_windows], progress)
    return {name: layer_options(linear_weight(module), None, config.candidate_bits, config.candidate_group_sizes,
                                config.symmetric, clip_search=config.clip_search, fisher=fisher.pop(name))
            for name, module in tqdm(targets.items(), desc="sensitivity", disable=not progress)}


def _walk_options(model, targets, windows, config, progress, out_fisher):
    """Options of every target from its Hessian on the calibration windows (one walk over the blocks)."""
    blocks = decoder_blocks(model)
    prefix = _block_prefix(model, blocks)
    options = {}
    stats = None
    walk = sequential_blocks(model, windows, progress=progress, desc="sensitivity")
    # hooks registered at block i's yield see the walker's own run of block i (one pass per block)
    for index, block, _ in walk:
        if stats is not None:
            _measure(stats, targets, options, config, out_fisher)
            stats.remove()
        names = {n: m for n, m in targets.items() if n.startswith(f"{prefix}.{index}.")}
        stats = SharedInputStats(names)
    if stats is not None:
        _measure(stats, targets, options, config, out_fisher)
        stats.remove()
    outside = {n: m for n, m in targets.items() if n not in options}
    if outside:  # e.g. lm_head: its Hessian from one pass of the whole model
        with SharedInputStats(outside) as stats, torch.no_grad():
            for batch in windows.split(8):
                model(batch.to(next(model.parameters()).device), use_cache=False)
        _measure(stats, targets, options, config, out_fisher)
    return options


def _measure(stats, targets, options, config, out_fisher):
    """Each target's candidates, quantized the way ``config.method`` will (GPTQ with static groups, or RTN).

    Layers run in parallel, one per torch thread, each on one thread: their loops are many small ops."""
    gptq = (dict(damp=config.damp, block_size=config.block_size, act_order=config.act_order)
            if config.method in ("gptq", "awq+gptq") else None)

    def measure(name):
        with single_thread():  # OpenMP thread counts belong to the calling thread: set in the worker
            return layer_options(linear_weight(targets[name]), stats.hessian(name), config.candidate_bits,
                                 config.candidate_group_sizes, config.symmetric, clip_search=config.clip_search,
                                 output_fisher=out_fisher.get(name), gptq=gptq)

    names = sorted(stats.xtx.keys() | stats.alias.keys())
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        options.update(zip(names, pool.map(measure, names)))


def quantize_calibrated(model: nn.Module, config: QuantConfig, calibration_texts=None, tokenizer=None,
                        progress: bool = True) -> nn.Module:
    """``quantize_`` for calibrated methods and ``bits="auto"`` (see :class:`QuantConfig`)."""
    from ..models import iter_linears

    targets = dict(iter_linears(model, config.include, config.exclude))
    if not targets:
        raise ValueError("no nn.Linear/Conv1D layer matched the config's include/exclude filters")
    windows = calibration_windows(calibration_texts, tokenizer, config.calib_windows, config.calib_seq_len,
                                  config.calib_sampling, config.calib_seed)
    settings = {n: (config.bits, config.group_size) for n in targets}
    plan = None
    if config.bits == "auto":
        plan = plan_bits(model, targets, windows, config, progress)
        settings = {n: (l["bits"], l["group_size"]) for n, l in plan["layers"].items()}

    use_gptq = config.method in ("gptq", "awq+gptq")
    use_awq = config.method in ("awq", "awq+gptq")
    done = set()
    if config.method != "rtn" or config.clip_search:
        blocks = decoder_blocks(model)
        prefix = _block_prefix(model, blocks)
        for index, block, inputs in sequential_blocks(model, windows, progress=progress, desc=config.method):
            block_prefix = f"{prefix}.{index}."
            names = {n: m for n, m in targets.items() if n.startswith(block_prefix)}
            if not names:
                continue
            with SharedInputStats(names) as stats:
                inputs.run(block)
            hessians = {n: stats.hessian(n) for n in names}
            with single_thread():
                _quantize_block(model, block, names, hessians, settings, config, block_prefix, use_awq, use_gptq)
            done.update(names)
            del stats, hessians
    for name, module in targets.items():
        if name not in done:
            bits, group = settings[name]
            _swap(model, name, quantize_linear(module, None, bits, group, config, use_gptq=False))
    model.llmlite_quant_config = config.to_dict()
    if plan is not None:
        model.llmlite_bit_plan = plan
    return model


def _quantize_block(model, block, names, hessians, settings, config, block_prefix, use_awq, use_gptq):
    """AWQ scaling (optional) then GPTQ or RTN of every selected Linear of one block."""
    if use_awq:
        rel = lambda n: n[len(block_prefix):]
        scales = awq_scale_block(block, {rel(n): h for n, h in hessians.items()},
                                 {rel(n): settings[n] for n in names}, config.symmetric,
                                 grid=config.awq_grid)
        hessians = {n: rescale_hessian(h, scales[rel(n)]) if rel(n) in scales else h
                    for n, h in hessians.items()}
    for name, module in names.items():
        bits, group = settings[name]
        _swap(model, name, quantize_linear(module, hessians[name], bits, group, config, use_gptq))
