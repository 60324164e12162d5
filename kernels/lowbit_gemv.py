"""Dequant-fused GEMV / skinny GEMM with split-K for small M (decode): ``out = x @ dequant(W).T + bias``.

One pass over the packed weight: each program owns BLOCK_N output features and a contiguous run of
K blocks (its split); it unpacks the codes in registers and reduces against BLOCK_M rows of ``x`` with
CUDA-core FMAs (no tensor cores: at M <= 16 the op is bound by the weight bytes). With several splits
the fp32 partial sums go to a [SPLIT_K, M, N] buffer that ``splitk_reduce`` folds (with the bias).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dequant_tile import dequant_tile
from .launch_params import checked_2d, check_block_k, group_constexpr, num_sms, split_k_for
from .splitk_reduce import splitk_reduce

DEFAULT_CONFIG = {"block_m": 4, "block_n": 32, "block_k": 128, "split_k": 0, "waves": 2, "num_warps": 4,
                  "num_stages": 2}


@triton.jit
def lowbit_gemv_splitk_kernel(
    x_ptr, packed_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr,
    M, N, K, words_per_row, num_groups, blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BITS: tl.constexpr, GROUP: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K

    # This split covers K blocks [kb_start, kb_end); the last split may be shorter (or empty).
    kb_start = pid_k * blocks_per_split
    kb_end = tl.minimum(kb_start + blocks_per_split, tl.cdiv(K, BLOCK_K))
    if BLOCK_M == 1:
        # Decode: keep per-lane partial products and reduce along K once, after the loop (no cross-thread
        # reduction per iteration).
        acc_nk = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for kb in range(kb_start, kb_end):
            k0 = kb * BLOCK_K
            w = dequant_tile(packed_ptr, scale_ptr, zero_ptr, offs_n, k0, N, K, words_per_row, num_groups,
                             BLOCK_K, BITS, GROUP, SYMMETRIC)  # [BLOCK_N, BLOCK_K] fp32
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m.to(tl.int64) * K + offs_k, mask=m_mask & (offs_k < K), other=0.0)
            acc_nk += w * x.to(tl.float32)[None, :]
        acc = tl.sum(acc_nk, axis=1)[None, :]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(kb_start, kb_end):
            k0 = kb * BLOCK_K
            w = dequant_tile(packed_ptr, scale_ptr, zero_ptr, offs_n, k0, N, K, words_per_row, num_groups,
                             BLOCK_K, BITS, GROUP, SYMMETRIC)
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & (offs_k[None, :] < K), other=0.0)
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)

    if HAS_BIAS:  # only set when there is a single split (else the reduce adds it)
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    # out is [M, N] (one split) or the fp32 partials [SPLIT_K, M, N].
    out = out_ptr + pid_k.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_n[None, :] < N))


def gemv_splitk(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, config):
    """Unchecked launcher: ``x2`` [M, K] contiguous; returns [M, N] in ``x2.dtype``."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    m, k = x2.shape
    block_k = cfg["block_k"]
    check_block_k(block_k, bits)
    block_m = min(cfg["block_m"], triton.next_power_of_2(max(m, 1)))
    block_n = cfg["block_n"]
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    split_k, per_split = split_k_for(tiles, triton.cdiv(k, block_k), num_sms(x2.device), cfg["split_k"],
                                     cfg["waves"])
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if m == 0:
        return out
    dest = out if split_k == 1 else torch.empty(split_k, m, n, dtype=torch.float32, device=x2.device)
    grid = (triton.cdiv(n, block_n), split_k, triton.cdiv(m, block_m))
    lowbit_gemv_splitk_kernel[grid](
        x2, weight_packed, weight_scale,
        weight_zero_point if weight_zero_point is not None else weight_scale,
        bias if bias is not None else out, dest,
        m, n, k, weight_packed.shape[1], weight_scale.shape[1], per_split,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        BITS=bits, GROUP=group_constexpr(group_size), SYMMETRIC=weight_zero_point is None,
        HAS_BIAS=bias is not None and split_k == 1,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split_k > 1:
        splitk_reduce(dest, bias, out)
    return out


def w_lowbit_gemv(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, config=None):
    """``lowbit_linear`` on the split-K GEMV kernel (any M; meant for M <= 16). x [..., K] -> [..., N]."""
    x2, n = checked_2d(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    out = gemv_splitk(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, config)
    return out.reshape(*x.shape[:-1], n)
