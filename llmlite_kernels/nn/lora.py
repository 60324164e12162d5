"""Low-rank adapters (LoRA) over frozen layers, QLoRA style: ``y = base(x) + (x A^T B^T) * scale``.

The base layer (a :class:`QuantLinear` with its packed weight, or an ``nn.Linear``) stays frozen; its op's
autograd carries the gradient through the low-bit weight to the input, so adapters of earlier layers learn.
``B`` starts at zero, so a freshly added adapter does not change the model. Adapters are a training-time
wrapper: merge them (:func:`merge_lora_and_requantize_`) before ``llmlite_kernels.save``.

``train_scales=True`` (QuantLinear bases) also learns a multiplicative factor per group scale, codes fixed:
``W = (q - z) * (s * factor)``. The gradient with respect to the factor is exact (no rounding in the path,
so no straight-through estimator is needed); that path computes ``x @ W.T`` on the dequantized weight, and
:func:`merge_lora_and_requantize_` folds the factors into the stored scales without any re-rounding.
``rank=0`` with ``train_scales=True`` trains the factors alone (no adapter): after merging, the model has
exactly the quantized format and size it had, only its scales changed (:func:`tune_scales_`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .quant_linear import QuantLinear


class LoRALinear(nn.Module):
    """``base(x) + (x @ lora_A.T @ lora_B.T) * (alpha / rank)``; only ``lora_A`` [rank, in] and
    ``lora_B`` [out, rank] are trainable (and ``scale_factor`` with ``train_scales``). ``rank=0`` (only with
    ``train_scales=True``): no adapter, ``lora_A`` and ``lora_B`` are None."""

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0, train_scales: bool = False):
        super().__init__()
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0 or (rank == 0 and not train_scales):
            raise ValueError(f"rank must be a positive int (or 0 with train_scales=True), got {rank!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / max(rank, 1)
        for p in base.parameters():
            p.requires_grad_(False)
        ref = next(iter(base.parameters()), None)
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        device = next(iter(base.buffers()), ref).device
        self.lora_A = self.lora_B = None
        if rank > 0:
            self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=dtype, device=device))
            self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=dtype, device=device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if train_scales and not isinstance(base, QuantLinear):
            raise ValueError(f"train_scales=True needs a QuantLinear base, got {type(base).__name__}")
        self.scale_factor = (nn.Parameter(torch.ones_like(base.weight_scale, dtype=torch.float32))
                             if train_scales else None)

    def scaled_base_weight(self) -> torch.Tensor:
        """The base's dequantized weight with the trained group-scale factors applied (float32)."""
        base = self.base
        g = base.in_features if base.group_size == -1 else base.group_size
        factor = self.scale_factor.repeat_interleave(g, dim=1)[:, :base.in_features]
        return base.dequantize(torch.float32) * factor

    def delta_weight(self) -> torch.Tensor:
        """``scale * B @ A``: what the adapter adds to the ``[out, in]`` weight (zeros when ``rank=0``)."""
        if self.rank == 0:
            return torch.zeros(self.out_features, self.in_features, dtype=self.scale_factor.dtype,
                               device=self.scale_factor.device)
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_factor is None:
            base = self.base(x)
        else:
            bias = None if self.base.bias is None else self.base.bias.float()
            base = torch.nn.functional.linear(x.float(), self.scaled_base_weight(), bias).to(x.dtype)
        if self.rank == 0:
            return base
        update = (x.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()
        return base + (update * self.scale).to(x.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, train_scales={self.scale_factor is not None}"


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, (QuantLinear, nn.Linear)) or type(module).__name__ == "SparseLinear"


def add_lora_(model: nn.Module, rank: int = 8, alpha: float = 16.0, include: Sequence[str] = (),
              exclude: Sequence[str] = ("lm_head",), quantized_only: bool = True, train_scales: bool = False
              ) -> nn.Module:
    """Wrap, in place, the selected layers of ``model`` in :class:`LoRALinear`; freezes every other parameter.

    Selected: QuantLinear layers (every Linear too when ``quantized_only=False``) whose name matches some
    ``include`` regex (all if empty) and no ``exclude`` regex. ``train_scales``: also learn the group scales
    of QuantLinear layers (see the module docstring); ``rank=0`` with ``train_scales=True``: only those (every
    selected layer must then be a QuantLinear). Returns ``model``.
    """
    from ..models import selected, set_submodule

    targets = [(name, m) for name, m in model.named_modules()
               if (isinstance(m, QuantLinear) if quantized_only else _adaptable(m))
               and not isinstance(m, LoRALinear) and selected(name, include, exclude)
               and not name.endswith(".base")]
    if not targets:
        what = "QuantLinear" if quantized_only else "Linear/QuantLinear/SparseLinear"
        raise ValueError(f"include={list(include)!r}/exclude={list(exclude)!r} matched no {what} layer to adapt")
    if rank == 0:
        for name, module in targets:
            if not isinstance(module, QuantLinear):
                raise ValueError(f"rank=0 trains group scales only, but {name} is a {type(module).__name__}, "
                                 "not a QuantLinear: pass quantized_only=True or exclude it")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in targets:
        set_submodule(model, name, LoRALinear(module, rank=rank, alpha=alpha,
                                              train_scales=train_scales and isinstance(module, QuantLinear)))
    return model


def lora_layers(model: nn.Module) -> dict:
    """``{name: LoRALinear}`` of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@torch.no_grad()
def merge_lora_and_requantize_(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base and drop the wrapper, in place; returns ``model``.

    QuantLinear bases: trained scale factors are folded into the stored scales (exact); then, unless ``B A``
    is zero, ``W + scale * B A`` is re-quantized round-to-nearest with the layer's bits / group size /
    symmetry (changes smaller than half a quantization step round away).
    ``nn.Linear`` bases: the weight is updated exactly.
    """
    from ..formats import quantize
    from ..models import set_submodule

    for name, layer in lora_layers(model).items():
        base = layer.base
        if isinstance(base, QuantLinear):
            if layer.scale_factor is not None:
                base.weight_scale.copy_((base.weight_scale.float() * layer.scale_factor).to(base.weight_scale.dtype))
            new = base
            if layer.rank > 0 and bool(layer.lora_B.any()):
                merged = base.dequantize(torch.float32) + layer.delta_weight().float()
                packed = quantize(merged, bits=base.bits, group_size=base.group_size, symmetric=base.symmetric,
                                  scale_dtype=base.weight_scale.dtype, name=name)
                new = QuantLinear.from_packed(packed, base.bias, dtype=base.bias.dtype if base.bias is not None
                                              else torch.float32)
        elif isinstance(base, nn.Linear):
            base.weight += layer.delta_weight().to(base.weight.dtype)
            new = base
        else:
            raise TypeError(f"{name}: cannot merge an adapter into a {type(base).__name__}")
        set_submodule(model, name, new)
    return model
