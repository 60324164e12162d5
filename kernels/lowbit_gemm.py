"""Tensor-core GEMM for larger M: ``out = x @ dequant(W).T + bias``, each weight tile dequantized on the
fly (in registers, to the activation dtype) right before ``tl.dot``; fp32 accumulation; optional split-K
(fp32 partials folded by ``splitk_reduce``) for shapes with too few output tiles to fill the GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dequant_tile import dequant_tile
from .launch_params import checked_2d, check_block_k, group_constexpr, num_sms, split_k_for
from .splitk_reduce import splitk_reduce

DEFAULT_CONFIG = {"block_m": 64, "block_n": 128, "block_k": 64, "group_m": 8, "split_k": 1, "waves": 2,
                  "num_warps": 4, "num_stages": 3}


@triton.jit
def lowbit_gemm_kernel(
    x_ptr, packed_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr,
    M, N, K, words_per_row, num_groups, blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BITS: tl.constexpr, GROUP: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr,
    IEEE_DOT: tl.constexpr, BF16_DOT_AS_FP32: tl.constexpr,
):
    # Grouped tile order (as in Triton's matmul tutorial): GROUP_M row-tiles share each weight column-tile
    # while it is still in L2, so the packed weight is read from DRAM about once per GROUP_M tiles of M.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * num_pid_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_rows
    pid_n = (pid % tiles_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K

    kb_start = pid_k * blocks_per_split
    kb_end = tl.minimum(kb_start + blocks_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & (offs_k[None, :] < K), other=0.0)
        w = dequant_tile(packed_ptr, scale_ptr, zero_ptr, offs_n, k0, N, K, words_per_row, num_groups,
                         BLOCK_K, BITS, GROUP, SYMMETRIC).to(x.dtype)  # [BLOCK_N, BLOCK_K]
        if BF16_DOT_AS_FP32:
            # Only under TRITON_INTERPRET=1, whose tl.dot multiplies bf16 bit patterns (triton#11584);
            # bf16 products are exact in fp32, so this matches the tensor-core result.
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee", out_dtype=tl.float32)
        elif IEEE_DOT:  # fp32 activations: no TF32 rounding
            acc += tl.dot(x, tl.trans(w), input_precision="ieee", out_dtype=tl.float32)
        else:
            acc += tl.dot(x, tl.trans(w), out_dtype=tl.float32)

    if HAS_BIAS:  # only set when there is a single split (else the reduce adds it)
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + pid_k.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_n[None, :] < N))


def gemm(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, config):
    """Unchecked launcher: ``x2`` [M, K] contiguous; returns [M, N] in ``x2.dtype``."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    m, k = x2.shape
    block_m, block_n, block_k = cfg["block_m"], cfg["block_n"], cfg["block_k"]
    check_block_k(block_k, bits)
    if min(block_m, block_n) < 16:
        raise ValueError(f"block_m={block_m} and block_n={block_n} must be >= 16 (tl.dot)")
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split_k, per_split = split_k_for(tiles, triton.cdiv(k, block_k), num_sms(x2.device), cfg["split_k"],
                                     cfg["waves"])
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if m == 0:
        return out
    dest = out if split_k == 1 else torch.empty(split_k, m, n, dtype=torch.float32, device=x2.device)
    lowbit_gemm_kernel[(tiles, split_k)](
        x2, weight_packed, weight_scale,
        weight_zero_point if weight_zero_point is not None else weight_scale,
        bias if bias is not None else out, dest,
        m, n, k, weight_packed.shape[1], weight_scale.shape[1], per_split,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=cfg["group_m"],
        BITS=bits, GROUP=group_constexpr(group_size), SYMMETRIC=weight_zero_point is None,
        HAS_BIAS=bias is not None and split_k == 1, IEEE_DOT=x2.dtype == torch.float32,
        BF16_DOT_AS_FP32=x2.dtype == torch.bfloat16 and x2.device.type != "cuda",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split_k > 1:
        splitk_reduce(dest, bias, out)
    return out


def w_lowbit_gemm(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, config=None):
    """``lowbit_linear`` on the tensor-core GEMM kernel (any M; meant for M > 16). x [..., K] -> [..., N]."""
    x2, n = checked_2d(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    out = gemm(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, config)
    return out.reshape(*x.shape[:-1], n)
