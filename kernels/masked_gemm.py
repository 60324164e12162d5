"""Masked dense GEMM for pruned layers: ``out = x @ (W * M).T + bias`` with the pruning mask read as bits.

``mask_bits`` is uint8 ``[N, ceil(K/8)]`` (``formats/bitmask.py``: column k of row n is bit k % 8 of byte
k // 8). Each weight tile is loaded with its mask bytes, pruned positions are zeroed in registers right
before ``tl.dot``; ``W * M`` is never written to memory. fp32 accumulation, output in x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmlite_kernels.ops.schemas import check_masked_linear

DEFAULT_CONFIG = {"block_m": 64, "block_n": 64, "block_k": 64, "group_m": 8, "num_warps": 4, "num_stages": 3}
SKINNY_CONFIG = {"block_m": 16, "block_n": 64, "block_k": 128, "group_m": 1, "num_warps": 4, "num_stages": 3}
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def masked_gemm_kernel(
    x_ptr, w_ptr, mask_ptr, bias_ptr, out_ptr,
    M, N, K, mask_bytes_per_row,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, IEEE_DOT: tl.constexpr, BF16_DOT_AS_FP32: tl.constexpr,
):
    # Grouped tile order (Triton's matmul tutorial): GROUP_M row-tiles share each weight column-tile in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * num_pid_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_rows
    pid_n = (pid % tiles_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * K
    mask_rows = mask_ptr + offs_n[:, None].to(tl.int64) * mask_bytes_per_row

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        tile_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_rows + offs_k[None, :], mask=tile_ok, other=0.0)            # [BLOCK_N, BLOCK_K]
        # Byte k // 8 of the row holds column k's bit at position k % 8 (the 8 columns of a byte share
        # one load through the cache). Out-of-range columns read as pruned.
        byte = tl.load(mask_rows + (offs_k // 8)[None, :], mask=tile_ok, other=0)
        kept = ((byte >> (offs_k % 8).to(tl.uint8)[None, :]) & 1) != 0
        w = tl.where(kept, w, tl.zeros_like(w))
        if BF16_DOT_AS_FP32:
            # Only under TRITON_INTERPRET=1, whose tl.dot multiplies bf16 bit patterns (triton#11584);
            # bf16 products are exact in fp32, so this matches the tensor-core result.
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee", out_dtype=tl.float32)
        elif IEEE_DOT:  # fp32 activations: no TF32 rounding
            acc += tl.dot(x, tl.trans(w), input_precision="ieee", out_dtype=tl.float32)
        else:
            acc += tl.dot(x, tl.trans(w), out_dtype=tl.float32)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def masked_gemm_2d(x2, weight, mask_bits, bias, config=None):
    """Unchecked launcher: ``x2`` [M, K] contiguous, fp32/fp16/bf16; returns [M, N] in ``x2.dtype``."""
    m, k = x2.shape
    n = weight.shape[0]
    cfg = {**(SKINNY_CONFIG if m <= 16 else DEFAULT_CONFIG), **(config or {})}
    if min(cfg["block_m"], cfg["block_n"], cfg["block_k"]) < 16:
        raise ValueError(f"block sizes {cfg} must be >= 16 (tl.dot)")
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(m, n))
    grid = (triton.cdiv(m, cfg["block_m"]) * triton.cdiv(n, cfg["block_n"]),)
    masked_gemm_kernel[grid](
        x2, weight, mask_bits, bias if bias is not None else out, out,
        m, n, k, mask_bits.shape[1],
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], GROUP_M=cfg["group_m"],
        HAS_BIAS=bias is not None, IEEE_DOT=x2.dtype == torch.float32,
        BF16_DOT_AS_FP32=x2.dtype == torch.bfloat16 and x2.device.type != "cuda",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def masked_linear(x, weight, mask_bits, bias, config=None):
    """``llmlite::masked_linear`` on the Triton kernel. x [..., K] -> [..., N] in x.dtype (fp32/fp16/bf16)."""
    n = check_masked_linear(x, weight, mask_bits, bias)
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; the Triton masked GEMM accepts float32, float16, bfloat16")
    out = masked_gemm_2d(x.reshape(-1, x.shape[-1]), weight, mask_bits, bias, config)
    return out.reshape(*x.shape[:-1], n)
