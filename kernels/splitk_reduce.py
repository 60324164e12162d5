"""Split-K epilogue shared by the GEMV and GEMM kernels: out[m, n] = sum_s partial[s, m, n] + bias[n],
cast to the output dtype. One deterministic pass (no atomics), so results do not depend on timing."""
import torch
import triton
import triton.language as tl


@triton.jit
def splitk_reduce_kernel(partial_ptr, bias_ptr, out_ptr, numel, N, SPLIT_K: tl.constexpr,
                         HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    partial = partial_ptr + offs
    for _ in range(SPLIT_K):
        acc += tl.load(partial, mask=mask, other=0.0)
        partial += numel  # pointer arithmetic is 64-bit: no overflow for large S*M*N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def splitk_reduce(partial: torch.Tensor, bias, out: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Reduce ``partial`` fp32 [S, M, N] into ``out`` [M, N] (adding ``bias`` [N] if given)."""
    split_k, m, n = partial.shape
    numel = m * n
    grid = (triton.cdiv(numel, block),)
    splitk_reduce_kernel[grid](partial, bias if bias is not None else out, out, numel, n,
                               SPLIT_K=split_k, HAS_BIAS=bias is not None, BLOCK=block)
    return out
