"""QuantLinear: a drop-in ``nn.Linear`` whose weight is stored in the packed low-bit format."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .._checks import check_choice, check_tensor
from ..formats import PackedWeight, num_groups, packed_words, quantize
from ..formats.cpu_interleave import INTERLEAVE_BITS, InterleavedWeight, interleave_weight
from ..formats.lowbit import SCALE_DTYPES, canonical_group_size

ACT_QUANTS = (None, "int8")
# Batches up to this many rows of int8 activations run the row-interleaved VNNI GEMV on CPU.
INTERLEAVED_MAX_ROWS = 8


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The ``[out_features, in_features]`` weight of an ``nn.Linear`` or a GPT-2 style ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D":  # transformers' Conv1D stores [in_features, out_features]
        return module.weight.t()
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}")


class QuantLinear(nn.Module):
    """``y = x @ dequantize(W).T + b`` computed by ``torch.ops.llmlite.lowbit_linear``.

    The packed weight, scales and zero points are frozen buffers; ``bias`` stays a Parameter so it can
    be fine-tuned. Gradients flow to the input and the bias.

    ``act_quant="int8"``: the activations are quantized to int8 on the fly (per row, per block of 128
    inputs) and the layer runs ``torch.ops.llmlite.lowbit_linear_a8`` (VNNI dot products on CPUs that have
    them); ``None`` (default): float activations. On a CPU with AVX512-VNNI, 2/3/4/8-bit layers with int8
    activations run batches of up to ``INTERLEAVED_MAX_ROWS`` rows that need no gradient (decoding) on
    ``lowbit_linear_a8_interleaved`` (same result), with a copy of the weight interleaved 16 rows at a
    time, built on first use and rebuilt if the weight changes (:meth:`cpu_interleaved`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4,
                 group_size: Optional[int] = 128, symmetric: bool = False,
                 scale_dtype: torch.dtype = torch.float16, dtype: torch.dtype = torch.float32, device=None,
                 act_quant: Optional[str] = None):
        super().__init__()
        group_size = canonical_group_size(group_size)
        check_choice("act_quant", act_quant, ACT_QUANTS)
        self.act_quant = act_quant
        if scale_dtype not in SCALE_DTYPES:
            raise TypeError(f"scale_dtype {scale_dtype} not supported; accepted: {SCALE_DTYPES}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        groups = num_groups(in_features, group_size)
        self.register_buffer("weight_packed", torch.zeros(out_features, packed_words(in_features, bits),
                                                          dtype=torch.int32, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=scale_dtype, device=device))
        zp = None if symmetric else torch.zeros(out_features, groups, dtype=torch.uint8, device=device)
        self.register_buffer("weight_zero_point", zp)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_packed(cls, packed: PackedWeight, bias: Optional[torch.Tensor] = None,
                    dtype: torch.dtype = torch.float32) -> "QuantLinear":
        out_features, in_features = packed.shape
        layer = cls(in_features, out_features, bias=bias is not None, bits=packed.bits,
                    group_size=packed.group_size, symmetric=packed.symmetric,
                    scale_dtype=packed.weight_scale.dtype, dtype=dtype, device=packed.weight_packed.device)
        layer.weight_packed.copy_(packed.weight_packed)
        layer.weight_scale.copy_(packed.weight_scale)
        if packed.weight_zero_point is not None:
            layer.weight_zero_point.copy_(packed.weight_zero_point)
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Module, bits: int = 4, group_size: Optional[int] = 128,
                    symmetric: bool = False, scale_dtype: Optional[torch.dtype] = None,
                    name: str = "weight") -> "QuantLinear":
        """Round-to-nearest quantize an ``nn.Linear`` (or ``Conv1D``); ``name`` labels errors."""
        weight = linear_weight(linear).detach()
        packed = quantize(weight, bits=bits, group_size=group_size, symmetric=symmetric,
                          scale_dtype=scale_dtype, name=name)
        return cls.from_packed(packed, linear.bias, dtype=weight.dtype)

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.weight_packed, self.weight_scale, self.weight_zero_point,
                            (self.out_features, self.in_features), self.bits, self.group_size)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The dequantized ``[out_features, in_features]`` weight (in the bias/compute dtype by default)."""
        dtype = dtype or (self.bias.dtype if self.bias is not None else torch.float32)
        return torch.ops.llmlite.lowbit_dequantize(self.weight_packed, self.weight_scale, self.weight_zero_point,
                                                   self.bits, self.group_size, self.in_features, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features in its last dimension; expected in_features={self.in_features}")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        iw = self._interleaved_for(x) if _decoding_batch(x, self.in_features, self.bias) else None
        if iw is not None:
            return torch.ops.llmlite.lowbit_linear_a8_interleaved(x.contiguous(), iw.weight, iw.scale, iw.zero, bias,
                                                                  self.bits, self.group_size, self.out_features)
        op = torch.ops.llmlite.lowbit_linear_a8 if self.act_quant == "int8" else torch.ops.llmlite.lowbit_linear
        return op(x.contiguous(), self.weight_packed, self.weight_scale, self.weight_zero_point, bias, self.bits,
                  self.group_size)

    def frozen_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``forward`` for no-grad inference with the weights as they are now: the kernel and its arguments
        are bound once, so each call skips the module's checks and cache lookups (~35 µs per call on a small
        CPU). For decoding loops; call it again after changing the weights."""
        bias = None if self.bias is None else self.bias.detach()
        args = (self.weight_packed, self.weight_scale, self.weight_zero_point, bias, self.bits, self.group_size)
        op = torch.ops.llmlite.lowbit_linear_a8 if self.act_quant == "int8" else torch.ops.llmlite.lowbit_linear
        iw = self._interleaved_for(self.weight_packed)
        if iw is None:
            return lambda x: op(x, *args)
        interleaved = torch.ops.llmlite.lowbit_linear_a8_interleaved
        iw_args = (iw.weight, iw.scale, iw.zero, bias, self.bits, self.group_size, self.out_features)
        k = self.in_features
        return lambda x: interleaved(x, *iw_args) if _decoding_batch(x, k, None) else op(x, *args)

    def _interleaved_for(self, x: torch.Tensor) -> Optional[InterleavedWeight]:
        """The interleaved weight when this layer's int8 activations on ``x``'s device can use it, else None."""
        if self.act_quant != "int8" or x.device.type != "cpu" or self.bits not in INTERLEAVE_BITS:
            return None
        return self.cpu_interleaved()

    def cpu_interleaved(self) -> Optional[InterleavedWeight]:
        """The weight interleaved for the CPU VNNI GEMV, or None where that kernel does not run (no
        AVX512-VNNI, or the C++ extension is not loaded). Cached; rebuilt when the weight changes."""
        key = tuple(None if t is None else (t.data_ptr(), _version(t))
                    for t in (self.weight_packed, self.weight_scale, self.weight_zero_point))
        cached = getattr(self, "_interleaved", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        iw = None
        if self.weight_packed.device.type == "cpu" and vnni_available():
            iw = interleave_weight(self.weight_packed, self.weight_scale, self.weight_zero_point, self.bits,
                                   self.group_size, self.in_features)
        self._interleaved = (key, iw)
        return iw

    def spec(self) -> dict:
        """What ``io`` needs to rebuild this layer."""
        return {"type": "QuantLinear", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "bits": self.bits, "group_size": self.group_size,
                "symmetric": self.symmetric, "scale_dtype": str(self.weight_scale.dtype).replace("torch.", ""),
                "dtype": str(self.bias.dtype if self.bias is not None else torch.float32).replace("torch.", ""),
                "act_quant": self.act_quant}

    @classmethod
    def from_spec(cls, spec: dict) -> "QuantLinear":
        return cls(spec["in_features"], spec["out_features"], bias=spec["bias"], bits=spec["bits"],
                   group_size=spec["group_size"], symmetric=spec["symmetric"],
                   scale_dtype=getattr(torch, spec["scale_dtype"]), dtype=getattr(torch, spec["dtype"]),
                   act_quant=spec.get("act_quant"))

    def extra_repr(self) -> str:
        group = "per-channel" if self.group_size == -1 else self.group_size
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}, group_size={group}, symmetric={self.symmetric}"
                + (f", act_quant={self.act_quant}" if self.act_quant else ""))


def _decoding_batch(x: torch.Tensor, in_features: int, bias: Optional[torch.Tensor]) -> bool:
    """At most INTERLEAVED_MAX_ROWS rows and no gradient wanted (the interleaved op has no autograd)."""
    if not 0 < x.numel() <= INTERLEAVED_MAX_ROWS * in_features:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)))


def _version(t: torch.Tensor) -> int:
    """The tensor's version counter (inference tensors have none: they count as never modified)."""
    return -1 if t.is_inference() else t._version


def vnni_available() -> bool:
    """Whether the CPU kernels run AVX512-VNNI now (per-channel W8 is a VNNI format on every CPU that has it)."""
    try:
        return torch.ops.llmlite.cpu_a8_path(8, -1, 128) == "vnni"
    except (AttributeError, RuntimeError, NotImplementedError):  # C++ extension not loaded
        return False


def set_act_quant_(model: nn.Module, act_quant: Optional[str] = "int8") -> int:
    """Set ``act_quant`` on every :class:`QuantLinear` of ``model``; returns how many were set."""
    check_choice("act_quant", act_quant, ACT_QUANTS)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for layer in layers:
        layer.act_quant = act_quant
    return len(layers)
