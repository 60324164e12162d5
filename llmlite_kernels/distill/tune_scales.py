"""``tune_scales_``: distil a quantized model's group scales from its float teacher, codes fixed.

Each QuantLinear's stored weight is ``W = (q - z) * s``. Only a factor per group scale trains
(``W = (q - z) * (s * f)``, :class:`~llmlite_kernels.nn.lora.LoRALinear` with ``rank=0``); codes and zero
points stay as GPTQ/AWQ/RTN chose them, so the tuned model has exactly the format and size it had. The loss
is the distillation loss of the whole model's output (forward KL by default), so the scales of every layer
move together to undo the error the quantized layers compound, which no layer-by-layer method sees.
"""
from __future__ import annotations

from torch import nn

from ..nn.lora import add_lora_, lora_layers, merge_lora_and_requantize_
from .trainer import distill


def tune_scales_(model: nn.Module, teacher: nn.Module, texts=None, steps: int = 80, seq_len: int = 512,
                 batch_size: int = 1, lr: float = 1e-3, loss: str = "kl", tokenizer=None, exclude=("lm_head",),
                 **distill_kwargs):
    """Train the group-scale factors of ``model``'s QuantLinear layers (those not matching ``exclude``) to
    match ``teacher``, then fold them into the stored scales, in place; returns ``(model, log)``.

    ``texts``, ``steps``, ``seq_len``, ``batch_size``, ``lr``, ``loss``, ``tokenizer`` and ``distill_kwargs``
    (e.g. ``max_seconds``, ``progress``) go to :func:`~llmlite_kernels.distill.distill`; ``texts=None`` is
    the WikiText-2 validation split, never the test text.
    """
    if lora_layers(model):
        raise ValueError("model already has LoRA adapters: merge them (merge_lora_and_requantize_) first")
    add_lora_(model, rank=0, train_scales=True, exclude=exclude)
    try:
        model, log = distill(model, teacher, texts, loss=loss, steps=steps, seq_len=seq_len, batch_size=batch_size,
                             lr=lr, tokenizer=tokenizer, train="auto", **distill_kwargs)
    finally:
        merge_lora_and_requantize_(model)  # rank 0: folds the factors into the scales, no re-rounding of codes
    return model, log
