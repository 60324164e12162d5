"""Pure-torch reference implementations: they define what every op computes, and run on any device.

``lowbit_linear(x, W, b) = (x.float() @ dequantize(W).T + b.float()).to(x.dtype)``: float32
accumulation of the float32-dequantized weight (see ``formats.lowbit`` for the dequantization).
"""
from __future__ import annotations

import torch

from ..formats.lowbit import canonical_group_size, check_packed, dequantize
from ..formats.mma_repack import MmaRepackedWeight, check_repacked, unrepack_weight
from .schemas import LIB, check_lowbit_linear


def lowbit_linear_ref(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
    check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    w = dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, x.shape[-1])
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def lowbit_dequantize_ref(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype):
    check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                 weight_packed.device)
    return dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype)


# The reference is the default kernel for every device; backends register device keys over it.
LIB.impl("lowbit_linear", lowbit_linear_ref, "CompositeExplicitAutograd")
LIB.impl("lowbit_dequantize", lowbit_dequantize_ref, "CompositeExplicitAutograd")


def lowbit_linear_repacked_ref(x, weight_repacked, scale_repacked, zero_repacked, bias, bits, group_size,
                               out_features):
    """``lowbit_linear`` of a weight in the CUDA GEMM's fragment order: undo the repack, then the reference."""
    check_repacked(x, weight_repacked, scale_repacked, zero_repacked, bias, bits, group_size, out_features)
    rw = MmaRepackedWeight(weight_repacked, scale_repacked, zero_repacked, bits, canonical_group_size(group_size),
                           out_features, x.shape[-1])
    packed, scale, zero = unrepack_weight(rw)
    return lowbit_linear_ref(x, packed, scale, zero, bias, bits, rw.group_size)


LIB.impl("lowbit_linear_repacked", lowbit_linear_repacked_ref, "CompositeExplicitAutograd")
