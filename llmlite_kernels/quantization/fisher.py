"""Empirical Fisher information of the selected Linears: how much the model's loss cares about each weight
(``fisher_diagonals``) or about each output channel (``output_fishers``).

For a small change ``dW`` the calibration loss grows by about ``1/2 * sum F * dW^2`` with
``F = E_window[(dL/dW)^2]`` (``L``: mean next-token cross-entropy of one calibration window). Summing
``F * (W - Q)^2`` over a layer gives a quantization error in *loss units*, comparable across layers: the
right currency for a knapsack that trades one layer's bits against another's.

Per output channel, with ``g_t = dL/dy_t`` the gradient at token ``t`` of the layer's output ``y_t = W x_t``,
the same expansion over tokens gives ``sum_o F_o (E H E^T)_oo`` with ``F_o = E_window[sum_t g_to^2]``,
``E = W - Q`` and ``H = X^T X / tokens``: it keeps the input correlations that GPTQ exploits, which the
weight diagonal drops.
"""
from __future__ import annotations

import contextlib
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..nn.quant_linear import linear_weight


def _logits(output):
    return output.logits if hasattr(output, "logits") else (output[0] if isinstance(output, tuple) else output)


def _check_windows(windows: torch.LongTensor):
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [W, seq_len >= 2] token ids, got shape {tuple(windows.shape)}")


@contextlib.contextmanager
def _no_parameter_grads(model: nn.Module):
    """Eval mode with every parameter frozen; both restored on exit."""
    saved = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.train(was_training)


def _window_loss(model: nn.Module, ids: torch.LongTensor, inputs_embeds=None) -> torch.Tensor:
    """Mean next-token cross-entropy of one window ``ids`` [1, T]."""
    output = model(ids, use_cache=False) if inputs_embeds is None else model(inputs_embeds=inputs_embeds,
                                                                            use_cache=False)
    return F.cross_entropy(_logits(output)[0, :-1].float(), ids[0, 1:])


def fisher_diagonals(model: nn.Module, targets: Dict[str, nn.Module], windows: torch.LongTensor,
                     progress: bool = True) -> Dict[str, torch.Tensor]:
    """``{name: F [out_features, in_features]}``: the mean over ``windows`` of the squared gradient of each
    window's next-token loss with respect to the target's weight. The model is left unchanged."""
    _check_windows(windows)
    params = {name: linear_weight(module) for name, module in targets.items()}
    owners = {name: module.weight for name, module in targets.items()}  # the Parameter (Conv1D: transposed view)
    sums = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for name, w in params.items()}
    device = next(model.parameters()).device
    with _no_parameter_grads(model):
        for p in owners.values():
            p.requires_grad_(True)
        for window in tqdm(windows, desc="fisher", disable=not progress):
            grads = torch.autograd.grad(_window_loss(model, window[None].to(device)), list(owners.values()))
            for (name, param), grad in zip(owners.items(), grads):
                g = grad if params[name] is param else grad.t()
                sums[name].add_(g.float().square())
    return {name: s / len(windows) for name, s in sums.items()}


def output_fishers(model: nn.Module, targets: Dict[str, nn.Module], windows: torch.LongTensor,
                   progress: bool = True) -> Dict[str, torch.Tensor]:
    """``{name: F [out_features]}``: the mean over ``windows`` of ``sum_t g_to^2``, the squared gradient of
    each window's next-token loss with respect to the target's output channel ``o`` at token ``t``, summed
    over tokens. The model is left unchanged."""
    _check_windows(windows)
    weights = {name: linear_weight(m) for name, m in targets.items()}
    sums = {name: torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) for name, w in weights.items()}

    def hook(name):
        def on_output(module, args, output):
            def accumulate(grad):
                sums[name].add_(grad.detach().float().square().reshape(-1, grad.shape[-1]).sum(0))
            output.register_hook(accumulate)
        return on_output

    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    handles = [m.register_forward_hook(hook(name)) for name, m in targets.items()]
    try:
        with _no_parameter_grads(model):
            for window in tqdm(windows, desc="output fisher", disable=not progress):
                ids = window[None].to(device)
                # gradients flow from the input embeddings, so no weight gradient is ever formed
                _window_loss(model, ids, embed(ids).detach().requires_grad_()).backward()
    finally:
        for h in handles:
            h.remove()
    return {name: s / len(windows) for name, s in sums.items()}
