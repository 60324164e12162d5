"""2:4 sparse linear on Triton: ``out = x @ W.T + bias`` reading only the compressed weight
(``llmlite_kernels.formats.sparse24``: kept values [N, K4/2] + 2-bit indices ``meta`` [N, ceil(K/32)]).

The kept values are dense fp16/bf16/fp32 (``w24a16``) or in the low-bit format (``w24_lowbit``, decoded by
``dequant_tile`` as a weight of K4/2 columns). Each program rebuilds, in registers, the dense
[BLOCK_N, BLOCK_K] weight tile from its BLOCK_K/2 kept values and their indices, then

* ``sparse24_gemv_kernel``  (small M): CUDA-core FMAs against BLOCK_M rows of x (bound by the weight bytes),
* ``sparse24_gemm_kernel``  (larger M): ``tl.dot`` on the dense tile (dense tensor cores; the sparse tensor
  cores are the CUDA C++ path, csrc/cuda/sparse24_mma_sp.cu).

Launchers run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dequant_tile import dequant_tile
from .launch_params import group_constexpr

GEMV_CONFIG = {"block_m": 4, "block_n": 16, "block_k": 512, "num_warps": 4, "num_stages": 2}  # untuned (no GPU yet)
GEMM_CONFIG = {"block_m": 64, "block_n": 64, "block_k": 64, "num_warps": 4, "num_stages": 3}
GEMV_MAX_M = 16


@triton.jit
def _weight_tile(values_ptr, packed_ptr, scale_ptr, zero_ptr, meta_ptr, offs_n, k0, N, K2, meta_words,
                 code_words, num_groups, BLOCK_K: tl.constexpr, LOWBIT: tl.constexpr, BITS: tl.constexpr,
                 GROUP: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Dense fp32 tile W[offs_n, k0:k0+BLOCK_K] rebuilt from its BLOCK_K/2 kept values; k0 % BLOCK_K == 0."""
    HALF: tl.constexpr = BLOCK_K // 2
    j0 = k0 // 2
    offs_j = j0 + tl.arange(0, HALF)  # kept-value index
    n_mask = offs_n < N
    mask = n_mask[:, None] & (offs_j[None, :] < K2)
    rows = offs_n[:, None].to(tl.int64)
    if LOWBIT:
        vals = dequant_tile(packed_ptr, scale_ptr, zero_ptr, offs_n, j0, N, K2, code_words, num_groups,
                            HALF, BITS, GROUP, SYMMETRIC)
    else:
        vals = tl.load(values_ptr + rows * K2 + offs_j[None, :], mask=mask, other=0.0).to(tl.float32)
    # Index of kept value j: bits [2*(j%16), 2*(j%16)+2) of meta word j//16 (same word for 16 lanes: cached).
    words = tl.load(meta_ptr + rows * meta_words + (offs_j // 16)[None, :], mask=mask, other=0)
    idx = (words >> (2 * (offs_j % 16))[None, :]) & 3
    # [BN, HALF] -> quads [BN, HALF/2, 4]: column p of quad t is value 2t if idx==p, value 2t+1 if idx==p, else 0.
    v0, v1 = tl.split(tl.reshape(vals, (offs_n.shape[0], HALF // 2, 2)))
    i0, i1 = tl.split(tl.reshape(idx, (offs_n.shape[0], HALF // 2, 2)))
    p = tl.arange(0, 4)[None, None, :]
    quad = tl.where(p == i0[:, :, None], v0[:, :, None], tl.where(p == i1[:, :, None], v1[:, :, None], 0.0))
    return tl.reshape(quad, (offs_n.shape[0], BLOCK_K))


@triton.jit
def sparse24_gemv_kernel(
    x_ptr, values_ptr, packed_ptr, scale_ptr, zero_ptr, meta_ptr, bias_ptr, out_ptr,
    M, N, K, K2, meta_words, code_words, num_groups,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LOWBIT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, 2 * K2, BLOCK_K):
        w = _weight_tile(values_ptr, packed_ptr, scale_ptr, zero_ptr, meta_ptr, offs_n, k0, N, K2, meta_words,
                         code_words, num_groups, BLOCK_K, LOWBIT, BITS, GROUP, SYMMETRIC)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        # Padding columns (K % 4 != 0) may be "kept" with value 0: read their activation as 0.
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & (offs_k[None, :] < K), other=0.0)
        acc += tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_n[None, :] < N))


@triton.jit
def sparse24_gemm_kernel(
    x_ptr, values_ptr, packed_ptr, scale_ptr, zero_ptr, meta_ptr, bias_ptr, out_ptr,
    M, N, K, K2, meta_words, code_words, num_groups,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LOWBIT: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, 2 * K2, BLOCK_K):
        w = _weight_tile(values_ptr, packed_ptr, scale_ptr, zero_ptr, meta_ptr, offs_n, k0, N, K2, meta_words,
                         code_words, num_groups, BLOCK_K, LOWBIT, BITS, GROUP, SYMMETRIC)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & (offs_k[None, :] < K), other=0.0)
        if DOT_FP32:  # fp32 activations (no TF32 rounding), or bf16 under TRITON_INTERPRET=1 (triton#11584)
            acc += tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee", out_dtype=tl.float32)
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)), out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_n[None, :] < N))


def _launch(x2, n, meta, bias, values, packed, scale, zero, bits, group_size, config):
    """Unchecked launcher: x2 [M, K] contiguous; returns [M, N] in x2.dtype."""
    m, k = x2.shape
    use_gemv = config.get("kernel") == "gemv" if "kernel" in config else m <= GEMV_MAX_M
    cfg = {**(GEMV_CONFIG if use_gemv else GEMM_CONFIG), **{c: v for c, v in config.items() if c != "kernel"}}
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if m == 0 or n == 0:
        return out
    lowbit = packed is not None
    k2 = (k + 3) // 4 * 2  # kept values per row
    block_k = cfg["block_k"]
    if block_k < 32 or block_k & (block_k - 1):
        raise ValueError(f"block_k={block_k} must be a power of two >= 32")
    dummy = meta
    args = (x2, values if values is not None else dummy, packed if lowbit else dummy,
            scale if lowbit else dummy, zero if zero is not None else dummy, meta,
            bias if bias is not None else out, out,
            m, n, k, k2, meta.shape[1], packed.shape[1] if lowbit else 0, scale.shape[1] if lowbit else 0)
    meta_args = dict(BLOCK_M=min(cfg["block_m"], max(16, triton.next_power_of_2(m))) if not use_gemv
                     else min(cfg["block_m"], triton.next_power_of_2(m)),
                     BLOCK_N=cfg["block_n"], BLOCK_K=block_k, LOWBIT=lowbit, BITS=bits if lowbit else 4,
                     GROUP=group_constexpr(group_size) if lowbit else 0, SYMMETRIC=zero is None,
                     HAS_BIAS=bias is not None, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if use_gemv:
        grid = (triton.cdiv(n, cfg["block_n"]), triton.cdiv(m, meta_args["BLOCK_M"]))
        sparse24_gemv_kernel[grid](*args, **meta_args)
    else:
        grid = (triton.cdiv(m, meta_args["BLOCK_M"]), triton.cdiv(n, cfg["block_n"]))
        dot_fp32 = x2.dtype == torch.float32 or (x2.dtype == torch.bfloat16 and x2.device.type != "cuda")
        sparse24_gemm_kernel[grid](*args, **meta_args, DOT_FP32=dot_fp32)
    return out


def w24_linear(x, values, meta, bias=None, config=None):
    """``sparse24_linear`` (kept values in x's dtype): x [..., K] -> [..., N]. ``config``: block sizes,
    ``kernel``: "gemv" / "gemm" (default: gemv for M <= 16)."""
    from llmlite_kernels.ops.schemas import check_sparse24_linear

    n = check_sparse24_linear(x, values, meta, bias)
    out = _launch(x.reshape(-1, x.shape[-1]), n, meta, bias, values, None, None, None, 0, 0, config or {})
    return out.reshape(*x.shape[:-1], n)


def w24_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits, group_size, config=None):
    """``sparse24_lowbit_linear``: x [..., K] -> [..., N]; the kept values decoded by ``dequant_tile``."""
    from llmlite_kernels.ops.schemas import check_sparse24_lowbit_linear

    n = check_sparse24_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits, group_size)
    group_size = -1 if group_size is None else group_size
    out = _launch(x.reshape(-1, x.shape[-1]), n, meta, bias, None, weight_packed, weight_scale, weight_zero_point,
                  bits, group_size, config or {})
    return out.reshape(*x.shape[:-1], n)
