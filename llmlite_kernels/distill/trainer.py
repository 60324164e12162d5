"""``distill``: train a compressed student to match its uncompressed teacher.

What trains (``train="auto"``), decided once at the start; everything else is frozen:

1. the model has LoRA adapters (:func:`llmlite_kernels.nn.lora.add_lora_`): ``lora_A`` / ``lora_B`` only
   (and the group-scale factors of adapters added with ``train_scales=True``; with ``rank=0``, those alone);
2. else it has ``SparseLinear`` layers: their weights (the masked op gives pruned positions a zero gradient,
   and they are re-zeroed after every step as a guard) and biases, plus the norms when ``train_norms``;
3. else it has ``QuantLinear`` layers: an error (packed weights are frozen buffers: call ``add_lora_`` first);
4. else (a dense student): every parameter.

``train="current"`` keeps whatever ``requires_grad`` the caller set.

The student runs in eval mode (no dropout: the targets are the teacher's deterministic outputs); the teacher
runs in eval mode under ``no_grad``. Logits are computed chunk-wise (``losses.chunked_logit_loss``) from the
final hidden state of ``model.base_model`` and ``model.get_output_embeddings()`` (models that rescale or
soft-cap their logits are not supported).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_choice
from ..calibration import calibration_windows
from ..nn.lora import LoRALinear
from ..nn.quant_linear import QuantLinear
from .losses import LOSSES, chunked_logit_loss, hidden_state_loss, per_token_loss

TRAIN_MODES = ("auto", "current")
STATE_FILE = "distill_state.safetensors"
META_FILE = "distill_state.json"


def _is_sparse(module: nn.Module) -> bool:
    return type(module).__name__ == "SparseLinear"


def select_trainable_(student: nn.Module, train: str = "auto", train_norms: bool = False) -> str:
    """Set ``requires_grad`` on ``student`` by the rule in the module docstring; returns what trains."""
    check_choice("train", train, TRAIN_MODES)
    if train == "current":
        if not any(p.requires_grad for p in student.parameters()):
            raise ValueError("train='current' but no parameter of the student has requires_grad=True")
        return "current"
    modules = list(student.modules())
    student.requires_grad_(False)
    if any(isinstance(m, LoRALinear) for m in modules):
        for m in modules:
            if isinstance(m, LoRALinear):
                if m.rank > 0:
                    m.lora_A.requires_grad_(True)
                    m.lora_B.requires_grad_(True)
                if m.scale_factor is not None:
                    m.scale_factor.requires_grad_(True)
        return "lora"
    if any(_is_sparse(m) for m in modules):
        for m in modules:
            if _is_sparse(m):
                m.requires_grad_(True)
            elif train_norms and "norm" in type(m).__name__.lower():
                m.requires_grad_(True)
        return "sparse"
    if any(isinstance(m, QuantLinear) for m in modules):
        raise ValueError("the student's QuantLinear weights are frozen packed buffers: call "
                         "llmlite_kernels.add_lora_(student) first (or pass train='current')")
    student.requires_grad_(True)
    return "all"


def _final_hidden(model: nn.Module, ids: torch.Tensor, want_states: bool):
    out = model.base_model(input_ids=ids, output_hidden_states=want_states, use_cache=False)
    if getattr(out, "last_hidden_state", None) is None:
        raise TypeError(f"{type(model).__name__}.base_model does not return last_hidden_state: distill needs a "
                        "transformers causal LM (base model + get_output_embeddings())")
    states = list(out.hidden_states[1:-1]) if want_states else []
    return out.last_hidden_state, states


def batch_loss(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, per_token, hidden_weight: float = 0.0,
               chunk_tokens: int = 256) -> torch.Tensor:
    """The distillation loss of one batch of token ids ``[B, L]`` (``per_token`` from ``losses.per_token_loss``);
    differentiable with respect to the student's trainable parameters."""
    with torch.no_grad():
        hidden_t, states_t = _final_hidden(teacher, ids, hidden_weight > 0)
    hidden_s, states_s = _final_hidden(student, ids, hidden_weight > 0)
    value = chunked_logit_loss(per_token, hidden_s, hidden_t, student.get_output_embeddings(),
                               teacher.get_output_embeddings(), chunk_tokens)
    if hidden_weight > 0:
        value = value + hidden_weight * hidden_state_loss(states_s, states_t)
    return value


def _lr_at(step: int, steps: int, lr: float, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to lr/10 at ``progress`` = 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _check_positive(name: str, value, kind=int):
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def _save_checkpoint(folder: str, student: nn.Module, optimizer: torch.optim.Optimizer, names: list,
                     meta: dict) -> None:
    from safetensors.torch import save_file

    params = dict(student.named_parameters())
    tensors = {f"param.{n}": params[n].detach().contiguous() for n in names}
    scalars = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{names[index]}.{key}"] = value.contiguous()
            else:
                scalars[f"{names[index]}.{key}"] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, META_FILE + ".tmp"), "w") as f:
        json.dump({**meta, "trainable": names, "optimizer_groups": groups, "optimizer_scalars": scalars}, f)
    os.replace(os.path.join(folder, META_FILE + ".tmp"), os.path.join(folder, META_FILE))


def _load_checkpoint(folder: str, student: nn.Module, optimizer: torch.optim.Optimizer, names: list) -> dict:
    from safetensors.torch import load_file

    with open(os.path.join(folder, META_FILE)) as f:
        meta = json.load(f)
    if meta["trainable"] != names:
        raise ValueError(f"checkpoint in {folder} trains other parameters than this student "
                         f"({len(meta['trainable'])} vs {len(names)} tensors)")
    tensors = load_file(os.path.join(folder, STATE_FILE))
    params = dict(student.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(tensors[f"param.{n}"])
    state = {}
    for index, n in enumerate(names):
        entry = {key[len(f"optim.{n}."):]: t for key, t in tensors.items() if key.startswith(f"optim.{n}.")}
        entry.update({key[len(n) + 1:]: v for key, v in meta["optimizer_scalars"].items() if key.startswith(n + ".")})
        if entry:
            state[index] = entry
    groups = [dict(g, params=list(range(len(names)))) for g in meta["optimizer_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return meta


def distill(student: nn.Module, teacher: nn.Module, texts=None, loss: str = "seed", steps: int = 100,
            seq_len: int = 256, batch_size: int = 4, lr: Optional[float] = None, tokenizer=None,
            alpha: float = 1.0, beta: Optional[float] = None, temperature: float = 1.0,
            hidden_weight: float = 0.0, train: str = "auto", train_norms: bool = False,
            weight_decay: float = 0.0, warmup: Optional[int] = None, max_grad_norm: float = 1.0,
            max_seconds: Optional[float] = None, chunk_tokens: int = 256, checkpoint_dir: Optional[str] = None,
            checkpoint_every: int = 50, resume: bool = False, seed: int = 0, progress: bool = True):
    """Train ``student`` to match ``teacher`` on ``texts``; returns ``(student, log)``.

    texts: strings (tokenized with ``tokenizer``, cut into ``seq_len`` windows), a LongTensor of windows
    ``[W, L]`` (used as they are: ``seq_len`` is then ignored), or None for the WikiText-2 validation split.
    The student and the teacher must be on the same device. Batches of ``batch_size`` windows are drawn
    from a seeded shuffle (epoch after epoch), so a resumed run sees the same batches.
    loss: "seed" (alpha * logit MSE + beta * probability MSE, see ``losses``), "kl" (forward, temperature T),
    "reverse_kl", or "jsd" (beta = mixture weight). hidden_weight > 0 adds that times the per-layer
    hidden-state loss. lr default: 1e-3 for LoRA, 2e-5 otherwise (AdamW, warm-up then cosine to lr/10).
    max_seconds: training time budget (no step starts that would end past it, judged by the slowest step
    so far); the cosine schedule follows whichever of ``steps`` and ``max_seconds`` is closer to running out. checkpoint_dir: every ``checkpoint_every`` steps and at the end,
    the trainable tensors and the optimizer state (safetensors) + step, log and hyper-parameters (JSON);
    ``resume=True`` continues from it. ``log``: one dict per step (step, loss, lr, tokens, seconds).
    """
    check_choice("loss", loss, LOSSES)
    for name, value in (("steps", steps), ("seq_len", seq_len), ("batch_size", batch_size),
                        ("chunk_tokens", chunk_tokens), ("checkpoint_every", checkpoint_every)):
        _check_positive(name, value)
    if lr is not None:
        _check_positive("lr", lr, float)
    if max_seconds is not None:
        _check_positive("max_seconds", max_seconds, float)
    if hidden_weight < 0:
        raise ValueError(f"hidden_weight must be >= 0, got {hidden_weight}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir=")
    per_token = per_token_loss(loss, alpha=alpha, beta=beta, temperature=temperature)

    windows = calibration_windows(texts, tokenizer, n_windows=None, seq_len=seq_len)
    if windows.shape[1] < 2:
        raise ValueError(f"windows must have at least 2 tokens, got seq_len={windows.shape[1]}")
    device = next(student.parameters()).device
    if next(teacher.parameters()).device != device:
        raise ValueError(f"teacher is on {next(teacher.parameters()).device} but the student on {device}: "
                         "move them to the same device")
    what = select_trainable_(student, train, train_norms)
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    sparse_masks = {m: m.mask() for m in student.modules() if _is_sparse(m) and m.weight.requires_grad}
    lr = lr if lr is not None else (1e-3 if what == "lora" else 2e-5)
    warmup = warmup if warmup is not None else max(1, min(20, steps // 10))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    teacher.eval()
    teacher.requires_grad_(False)
    student.eval()
    order = torch.Generator().manual_seed(seed)
    perms = []

    def batch_at(step: int) -> torch.Tensor:
        per_epoch = max(1, len(windows) // batch_size)
        epoch, index = divmod(step, per_epoch)
        while len(perms) <= epoch:
            perms.append(torch.randperm(len(windows), generator=order))
        rows = perms[epoch][index * batch_size:(index + 1) * batch_size]
        if len(rows) < batch_size:  # fewer windows than batch_size: repeat them
            rows = perms[epoch].repeat(math.ceil(batch_size / len(rows)))[:batch_size]
        return windows[rows].to(device)

    start_step, log, elapsed_before = 0, [], 0.0
    if resume and os.path.exists(os.path.join(checkpoint_dir, META_FILE)):
        meta = _load_checkpoint(checkpoint_dir, student, optimizer, names)
        start_step, log, elapsed_before = meta["step"], meta["log"], meta["seconds"]

    def checkpoint(step: int, elapsed: float):
        if checkpoint_dir is not None:
            _save_checkpoint(checkpoint_dir, student, optimizer, names,
                             {"step": step, "seconds": elapsed, "log": log, "what": what,
                              "hyper": {"loss": loss, "lr": lr, "alpha": alpha, "beta": beta,
                                        "temperature": temperature, "hidden_weight": hidden_weight,
                                        "seq_len": seq_len, "batch_size": batch_size, "seed": seed}})

    started = time.perf_counter() - elapsed_before
    running, slowest_step, last_top = None, 0.0, None
    bar = tqdm(range(start_step, steps), desc=f"distill {loss} ({what})", disable=not progress,
               initial=start_step, total=steps)
    for step in bar:
        now = time.perf_counter()
        elapsed = now - started
        if last_top is not None:
            slowest_step = max(slowest_step, now - last_top)
        last_top = now
        # stop when the next step (as long as the slowest so far) would end past the budget
        if max_seconds is not None and elapsed + slowest_step > max_seconds:
            break
        fraction = max((step - warmup) / max(1, steps - warmup), elapsed / max_seconds if max_seconds else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup, fraction)
        value = batch_loss(student, teacher, batch_at(step), per_token, hidden_weight, chunk_tokens)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if sparse_masks:
            with torch.no_grad():
                for m, mask in sparse_masks.items():
                    m.weight.mul_(mask)
        loss_value = value.item()
        running = loss_value if running is None else 0.9 * running + 0.1 * loss_value
        log.append({"step": step + 1, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                    "tokens": (step + 1) * batch_size * windows.shape[1], "seconds": time.perf_counter() - started})
        bar.set_postfix(loss=f"{running:.4g}")
        if (step + 1) % checkpoint_every == 0:
            checkpoint(step + 1, time.perf_counter() - started)
    bar.close()
    if log and checkpoint_dir is not None:
        checkpoint(log[-1]["step"], time.perf_counter() - started)
    return student, log
