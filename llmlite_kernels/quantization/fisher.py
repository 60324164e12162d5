"""Empirical Fisher diagonal of each selected Linear weight: how much the model's loss cares about each weight.

For a small change ``dW`` the calibration loss grows by about ``1/2 * sum F * dW^2`` with
``F = E_window[(dL/dW)^2]`` (``L``: mean next-token cross-entropy of one calibration window). Summing
``F * (W - Q)^2`` over a layer gives a quantization error in *loss units*, comparable across layers: the
right currency for a knapsack that trades one layer's bits against another's.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..nn.quant_linear import linear_weight


def _logits(output):
    return output.logits if hasattr(output, "logits") else (output[0] if isinstance(output, tuple) else output)


def fisher_diagonals(model: nn.Module, targets: Dict[str, nn.Module], windows: torch.LongTensor,
                     progress: bool = True) -> Dict[str, torch.Tensor]:
    """``{name: F [out_features, in_features]}``: the mean over ``windows`` of the squared gradient of each
    window's next-token loss with respect to the target's weight. The model is left unchanged."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [W, seq_len >= 2] token ids, got shape {tuple(windows.shape)}")
    params = {name: linear_weight(module) for name, module in targets.items()}
    owners = {name: module.weight for name, module in targets.items()}  # the Parameter (Conv1D: transposed view)
    saved = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    sums = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for name, w in params.items()}
    device = next(model.parameters()).device
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in owners.values():
            p.requires_grad_(True)
        for window in tqdm(windows, desc="fisher", disable=not progress):
            ids = window[None].to(device)
            logits = _logits(model(ids, use_cache=False))
            loss = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
            grads = torch.autograd.grad(loss, list(owners.values()))
            for (name, param), grad in zip(owners.items(), grads):
                g = grad if params[name] is param else grad.t()
                sums[name].add_(g.float().square())
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return {name: s / len(windows) for name, s in sums.items()}
