"""Pure-torch reference implementations: they define what every op computes, and run on any device.

``lowbit_linear(x, W, b) = (x.float() @ dequantize(W).T + b.float()).to(x.dtype)``: float32
accumulation of the float32-dequantized weight (see ``formats.lowbit`` for the dequantization).

``lowbit_linear_a8(x, W, b) = lowbit_linear`` of ``x`` fake-quantized by :func:`quantize_activations_int8`
(float32 ``xq * sx``), accumulated in float32, cast to ``x.dtype``.
"""
from __future__ import annotations

import torch

from ..formats.cpu_interleave import InterleavedWeight, check_interleaved, deinterleave_weight
from ..formats.lowbit import canonical_group_size, check_packed, dequantize
from ..formats.mma_repack import MmaRepackedWeight, check_repacked, unrepack_weight
from ..formats.sparse24 import decompress as sparse24_decompress
from ..formats.sparse24 import decompress_lowbit as sparse24_decompress_lowbit
from .schemas import (LIB, check_lowbit_linear, check_sparse24_linear, check_sparse24_lowbit_linear,
                      check_sparse24_mma_sp_linear)


def _lowbit_matmul(x_float, dtype, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
    """float32 ``x_float @ dequantize(W).T + bias``, cast to ``dtype``."""
    w = dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, x_float.shape[-1])
    out = x_float @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype)


def lowbit_linear_ref(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
    check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    return _lowbit_matmul(x.float(), x.dtype, weight_packed, weight_scale, weight_zero_point, bias, bits,
                          group_size)


A8_BLOCK = 128  # inputs per activation scale


def quantize_activations_int8(x: torch.Tensor):
    """Symmetric dynamic int8 quantization of ``x [..., K]`` per row and per block of 128 inputs (the last
    block may be shorter): ``sx = max|x_block| / 127`` (float32), ``xq = round_half_even(x / sx)`` in
    [-127, 127] (0 where ``sx == 0``). Returns ``(xq int8 [..., K], sx float32 [..., ceil(K / 128)])``."""
    xf = x.float()
    k = xf.shape[-1]
    blocks = -(-k // A8_BLOCK)
    padded = torch.nn.functional.pad(xf, (0, blocks * A8_BLOCK - k)).unflatten(-1, (blocks, A8_BLOCK))
    sx = padded.abs().amax(-1) / 127.0
    safe = torch.where(sx > 0, sx, torch.ones_like(sx))
    xq = torch.round(padded / safe[..., None]).clamp_(-127, 127)
    xq = torch.where(sx[..., None] > 0, xq, torch.zeros_like(xq))
    return xq.flatten(-2)[..., :k].to(torch.int8), sx


def dequantize_activations_int8(xq: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """float32 ``xq * sx`` (each block of 128 inputs by its scale)."""
    scale = sx.repeat_interleave(A8_BLOCK, dim=-1)[..., :xq.shape[-1]]
    return xq.float() * scale


def lowbit_linear_a8_ref(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
    check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    x_hat = dequantize_activations_int8(*quantize_activations_int8(x))
    return _lowbit_matmul(x_hat, x.dtype, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)


def lowbit_dequantize_ref(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype):
    check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                 weight_packed.device)
    return dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype)


# The reference is the default kernel for every device; backends register device keys over it.
LIB.impl("lowbit_linear", lowbit_linear_ref, "CompositeExplicitAutograd")
LIB.impl("lowbit_dequantize", lowbit_dequantize_ref, "CompositeExplicitAutograd")
LIB.impl("lowbit_linear_a8", lowbit_linear_a8_ref, "CompositeExplicitAutograd")


def lowbit_linear_a8_interleaved_ref(x, weight, scale, zero, bias, bits, group_size, out_features):
    """``lowbit_linear_a8`` of a weight in the CPU GEMV's interleaved order: undo the interleave, then the reference."""
    check_interleaved(x, weight, scale, zero, bias, bits, group_size, out_features)
    iw = InterleavedWeight(weight, scale, zero, bits, canonical_group_size(group_size), out_features, x.shape[-1])
    return lowbit_linear_a8_ref(x, *deinterleave_weight(iw), bias, bits, iw.group_size)


LIB.impl("lowbit_linear_a8_interleaved", lowbit_linear_a8_interleaved_ref, "CompositeExplicitAutograd")


def lowbit_linear_repacked_ref(x, weight_repacked, scale_repacked, zero_repacked, bias, bits, group_size,
                               out_features):
    """``lowbit_linear`` of a weight in the CUDA GEMM's fragment order: undo the repack, then the reference."""
    check_repacked(x, weight_repacked, scale_repacked, zero_repacked, bias, bits, group_size, out_features)
    rw = MmaRepackedWeight(weight_repacked, scale_repacked, zero_repacked, bits, canonical_group_size(group_size),
                           out_features, x.shape[-1])
    packed, scale, zero = unrepack_weight(rw)
    return lowbit_linear_ref(x, packed, scale, zero, bias, bits, rw.group_size)


LIB.impl("lowbit_linear_repacked", lowbit_linear_repacked_ref, "CompositeExplicitAutograd")


def sparse24_linear_ref(x, values, meta, bias):
    """``sparse24_linear``: float32 product with the decompressed 2:4 weight (formats/sparse24.py)."""
    check_sparse24_linear(x, values, meta, bias)
    w = sparse24_decompress(values, meta, x.shape[-1], torch.float32)
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def sparse24_lowbit_linear_ref(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits, group_size):
    """``sparse24_lowbit_linear``: the kept values dequantized to float32, scattered, multiplied in float32."""
    check_sparse24_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits, group_size)
    w = sparse24_decompress_lowbit(weight_packed, weight_scale, weight_zero_point, meta, bits,
                                   canonical_group_size(group_size), x.shape[-1], torch.float32)
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


LIB.impl("sparse24_linear", sparse24_linear_ref, "CompositeExplicitAutograd")
LIB.impl("sparse24_lowbit_linear", sparse24_lowbit_linear_ref, "CompositeExplicitAutograd")


def sparse24_mma_sp_linear_ref(x, values, meta, bias):
    """``sparse24_mma_sp_linear``: the same as ``sparse24_linear`` (restricted to 2-D fp16/bf16 x, K % 32 == 0)."""
    check_sparse24_mma_sp_linear(x, values, meta, bias)
    return sparse24_linear_ref(x, values, meta, bias)


LIB.impl("sparse24_mma_sp_linear", sparse24_mma_sp_linear_ref, "CompositeExplicitAutograd")


def masked_linear_ref(x, weight, mask_bits, bias):
    """``masked_linear``: ``x @ (W * M).T + bias`` accumulated in float32 (float64 for float64 inputs).

    Also the CPU path: the mask is unpacked once per call and the product runs on torch's matmul."""
    from ..formats.bitmask import masked_weight
    from .schemas import check_masked_linear

    check_masked_linear(x, weight, mask_bits, bias)
    acc = torch.promote_types(x.dtype, torch.float32)
    w = masked_weight(weight, mask_bits).to(acc)
    out = torch.nn.functional.linear(x.to(acc), w, None if bias is None else bias.to(acc))
    return out.to(x.dtype)


LIB.impl("masked_linear", masked_linear_ref, "CompositeExplicitAutograd")
