"""Calibration plumbing shared by every calibrated algorithm (GPTQ, AWQ, Wanda, SparseGPT, allocation).

* :func:`calibration_windows` turns strings (with a tokenizer) or token tensors into ``[W, seq_len]`` windows.
* :func:`sequential_blocks` walks the decoder blocks of a model one at a time, feeding each block the
  outputs of the blocks before it *as already compressed*, which is what sequential GPTQ/SparseGPT need.
* :class:`LinearInputStats` accumulates, per Linear, the input second moment ``X^T X`` (the Hessian of
  the layer-output error, up to a factor 2) and the token count.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_choice
from .config import SAMPLINGS
from .eval import CALIBRATION_FILE, data_file, read_text, token_windows


def calibration_windows(calibration_texts=None, tokenizer=None, n_windows: int = 64, seq_len: int = 512,
                        sampling: str = "first", seed: int = 0) -> torch.LongTensor:
    """``[W, seq_len]`` token windows: from a LongTensor ``[W, L]`` as given, or from strings joined with
    blank lines, tokenized once, cut into non-overlapping windows. ``None``: the WikiText-2 validation split.

    sampling: "first" takes the first ``n_windows`` windows; "random" draws ``n_windows`` distinct windows
    from the whole text with a generator seeded by ``seed`` (kept in text order), as GPTQ/Wanda sample.
    """
    check_choice("sampling", sampling, SAMPLINGS)
    if isinstance(calibration_texts, torch.Tensor):
        if calibration_texts.dtype != torch.long or calibration_texts.dim() != 2:
            raise ValueError("calibration_texts as a tensor must be a LongTensor of token windows [W, seq_len]")
        return _pick(calibration_texts, n_windows, sampling, seed)
    if tokenizer is None:
        raise ValueError("calibration_texts as strings need tokenizer=")
    if calibration_texts is None:
        text = read_text(data_file(CALIBRATION_FILE))
    elif isinstance(calibration_texts, str):
        text = calibration_texts
    elif isinstance(calibration_texts, Sequence) and all(isinstance(t, str) for t in calibration_texts):
        text = "\n\n".join(calibration_texts)
    else:
        raise TypeError("calibration_texts must be a list of strings, a string, or a LongTensor [W, seq_len]")
    windows = token_windows(tokenizer, text, seq_len, n_windows if sampling == "first" else None)
    return _pick(windows, n_windows, sampling, seed)


def _pick(windows: torch.LongTensor, n_windows: Optional[int], sampling: str, seed: int) -> torch.LongTensor:
    if n_windows is None or sampling == "first" or n_windows >= windows.shape[0]:
        return windows[:n_windows]
    order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(seed))
    return windows[order[:n_windows].sort().values]


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks: its ModuleList holding the most parameters."""
    best, best_count = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            count = sum(p.numel() for p in module.parameters())
            if count > best_count:
                best, best_count = module, count
    if best is None:
        raise ValueError(f"{type(model).__name__} has no ModuleList of decoder blocks")
    return best


class _Captured(Exception):
    pass


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class BlockInputs:
    """The inputs of the current block for every calibration batch: hidden states and keyword arguments."""

    def __init__(self, hidden: list, kwargs: list):
        self.hidden, self.kwargs = hidden, kwargs

    @torch.no_grad()
    def run(self, block: nn.Module) -> list:
        """The block's outputs for every batch (hooks registered on the block fire as usual)."""
        return [_first(block(h, **kw)) for h, kw in zip(self.hidden, self.kwargs)]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: torch.LongTensor, batch_size: int = 8) -> BlockInputs:
    """Run ``model`` on ``windows`` up to its first decoder block and keep what that block receives."""
    blocks = decoder_blocks(model)
    hidden, kwargs = [], []

    def hook(module, args, kw):
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k not in ("cache", "past_key_values", "layer_past")} | {"use_cache": False})
        raise _Captured

    device = next(model.parameters()).device
    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, len(windows), batch_size):
            try:
                model(windows[start:start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return BlockInputs(hidden, kwargs)


def sequential_blocks(model: nn.Module, windows: torch.LongTensor, batch_size: int = 8, progress: bool = True,
                      desc: str = "blocks") -> Iterator:
    """Yield ``(index, block, inputs)`` for each decoder block in order.

    The caller compresses ``block`` (using ``inputs.run(block)`` with hooks to gather statistics); when
    the loop resumes, the compressed block's outputs become the next block's inputs.
    """
    was_training = model.training
    model.eval()
    inputs = capture_block_inputs(model, windows, batch_size)
    blocks = decoder_blocks(model)
    for index, block in enumerate(tqdm(blocks, desc=desc, disable=not progress)):
        yield index, block, inputs
        inputs = BlockInputs(inputs.run(block), inputs.kwargs)
    model.train(was_training)


class LinearInputStats:
    """Forward hooks accumulating ``X^T X`` (float32 [K, K]) and the token count per named Linear.

    ``hessian(name)`` returns ``X^T X / tokens``; Wanda's ``||X_j||_2`` is ``sqrt(diag(X^T X))``.
    """

    def __init__(self, modules: dict):
        self.xtx = {}
        self.count = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if name not in self.xtx:
                self.xtx[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                self.count[name] = 0
            self.xtx[name].addmm_(x.t(), x)
            self.count[name] += x.shape[0]
        return hook

    def hessian(self, name: str) -> torch.Tensor:
        return self.xtx[name] / max(self.count[name], 1)

    def column_norms(self, name: str) -> torch.Tensor:
        return self.xtx[name].diagonal().clamp_min(0).sqrt()

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


@torch.no_grad()
def linear_subsets(block: nn.Module, inputs: "BlockInputs", linears: dict) -> list:
    """``linears``' names grouped in call order: consecutive Linears fed the very same input tensor (q/k/v,
    gate/up) form one subset. Pruning subset by subset, each gathering statistics after the previous ones
    were pruned, is GPTQ's "true sequential" order."""
    calls = []

    def hook(name):
        def record(module, args, output):
            if all(name != n for n, _ in calls):
                calls.append((name, args[0]))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    try:
        block(inputs.hidden[0], **inputs.kwargs[0])
    finally:
        for h in handles:
            h.remove()
    subsets, last = [], None
    for name, x in calls:
        if subsets and x is last:
            subsets[-1].append(name)
        else:
            subsets.append([name])
        last = x
    missing = [n for n in linears if all(n != c for c, _ in calls)]
    return subsets + ([missing] if missing else [])


def block_linears(block: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = (),
                  prefix: Optional[str] = None) -> dict:
    """``{name: module}`` of the Linear/Conv1D layers inside ``block`` (names relative to the block,
    or prefixed with ``prefix.``), filtered by the include/exclude regexes applied to the full name."""
    from .models import iter_linears, selected

    out = {}
    for name, module in iter_linears(block):
        full = f"{prefix}.{name}" if prefix else name
        if selected(full, include, exclude):
            out[full] = module
    return out
