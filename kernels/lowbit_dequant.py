"""Dequantize a packed low-bit weight to a dense [N, K] matrix (``llmlite::lowbit_dequantize``); also the
first half of the large-M path ``dequantize + cuBLAS`` (``dequant_matmul``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from llmlite_kernels.formats.lowbit import check_packed

from .dequant_tile import dequant_tile
from .launch_params import check_block_k, group_constexpr

DEFAULT_CONFIG = {"block_n": 32, "block_k": 128, "num_warps": 4}


@triton.jit
def lowbit_dequantize_kernel(
    packed_ptr, scale_ptr, zero_ptr, out_ptr, N, K, words_per_row, num_groups,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
    SYMMETRIC: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    w = dequant_tile(packed_ptr, scale_ptr, zero_ptr, offs_n, k0, N, K, words_per_row, num_groups,
                     BLOCK_K, BITS, GROUP, SYMMETRIC)
    out = out_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    tl.store(out, w.to(out_ptr.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))


def dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype,
               config=None):
    """Unchecked launcher: dense weight [N, in_features] in ``dtype``."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    n, k = weight_packed.shape[0], in_features
    block_n, block_k = cfg["block_n"], cfg["block_k"]
    check_block_k(block_k, bits)
    out = torch.empty(n, k, dtype=dtype, device=weight_packed.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    lowbit_dequantize_kernel[grid](
        weight_packed, weight_scale, weight_zero_point if weight_zero_point is not None else weight_scale,
        out, n, k, weight_packed.shape[1], weight_scale.shape[1],
        BLOCK_N=block_n, BLOCK_K=block_k, BITS=bits, GROUP=group_constexpr(group_size),
        SYMMETRIC=weight_zero_point is None, num_warps=cfg["num_warps"],
    )
    return out


def dequant_matmul(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, config):
    """Large-M path: dequantize to ``x2.dtype`` then a dense GEMM (cuBLAS on a GPU)."""
    w = dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, x2.shape[1], x2.dtype, config)
    return F.linear(x2, w, bias)


def w_lowbit_dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                        dtype=torch.float16, config=None):
    """``lowbit_dequantize`` on the Triton kernel: [N, in_features] in ``dtype``."""
    check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                 weight_packed.device)
    return dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype, config)
