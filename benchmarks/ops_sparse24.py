"""GPU benchmark entries of the 2:4 sparse ops, for ``benchmarks/bench_gpu_lowbit.py``'s registry (``OPS``).

* ``2:4 fp16 op``      ``sparse24_linear`` as users call it (Triton GEMV at small M, mma.sp GEMM at M >= 64)
* ``2:4 fp16 triton``  the Triton kernels only (``w24_linear``)
* ``2:4 fp16 mma.sp``  the CUDA C++ sparse-tensor-core GEMM only (``sparse24_mma_sp_linear``)
* ``2:4+W4 g128 op``   ``sparse24_lowbit_linear``: int4 kept values, groups of 128 kept values, asymmetric
* ``torch 2:4 fp16``   torch's built-in semi-structured sparse linear (cuSPARSELt / CUTLASS), for reference

Weights: a random 2:4-pruned layer compressed with ``formats.sparse24`` (metadata in canonical order, as
``mma.sp::ordered_metadata`` requires). ``nbytes``: values/codes + metadata (+ scales and zero points).
Goals (issue 6, H200, same run): 2:4 fp16 M=1 >= 1.7x cuBLAS fp16; 2:4+W4 M=1 >= 4.5x; 2:4 fp16 M >= 256 >= 1.2x.
"""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llmlite_kernels.formats import sparse24 as S  # noqa: E402

DEVICE = "cuda"
GROUP = 128


def _pruned(k, n, device):
    """Random [n, k] fp32 weight, 2 of every 4 columns zeroed (random positions)."""
    w = torch.randn(n, k // 4, 4, device=device) * 0.02
    drop = torch.rand(n, k // 4, 4, device=device).argsort(-1)[..., :2]
    return w.scatter_(-1, drop, 0.0).reshape(n, k)


class Sparse24Op:
    def __init__(self, name, mode, dtype=torch.float16):
        self.name, self.mode, self.dtype = name, mode, dtype

    def available(self):
        if not torch.cuda.is_available():
            return False
        if self.mode == "mma_sp":
            return torch._C._dispatch_has_kernel_for_dispatch_key("llmlite::sparse24_mma_sp_linear", "CUDA")
        if self.mode == "torch":
            return hasattr(torch.sparse, "to_sparse_semi_structured")
        from llmlite_kernels.ops import triton_backend
        return triton_backend.load()[0] is not None

    def bytes_per_weight(self, k):
        meta = 4 * S.meta_words(k) / k
        if self.mode == "lowbit":
            return 0.5 * 0.5 + 3 * math.ceil(S.kept_features(k) / GROUP) / k + meta
        return 2 * 0.5 + meta

    def nbytes(self, k, n):
        return int(k * n * self.bytes_per_weight(k))

    def prepare(self, k, n, m):
        import llmlite_kernels.ops  # noqa: F401  (registers the ops)

        w = _pruned(k, n, DEVICE)
        x = torch.randn(m, k, device=DEVICE, dtype=self.dtype)
        if self.mode == "torch":
            return x, torch.sparse.to_sparse_semi_structured(w.to(self.dtype))
        if self.mode == "lowbit":
            c = S.compress_lowbit(w, bits=4, group_size=GROUP)
            p = c.packed
            return x, p.weight_packed, p.weight_scale, p.weight_zero_point, c.meta
        c = S.compress(w.to(self.dtype))
        return x, c.values, c.meta

    def compute(self, x, *w):
        if self.mode == "torch":
            return F.linear(x, w[0])
        if self.mode == "lowbit":
            return torch.ops.llmlite.sparse24_lowbit_linear(x, *w[:4], None, 4, GROUP)
        if self.mode == "mma_sp":
            return torch.ops.llmlite.sparse24_mma_sp_linear(x, *w, None)
        if self.mode == "triton":
            from llmlite_kernels.kernels import w24_linear
            return w24_linear(x, *w)
        return torch.ops.llmlite.sparse24_linear(x, *w, None)


OPS = [Sparse24Op("2:4 fp16 op", "op"), Sparse24Op("2:4 fp16 triton", "triton"),
       Sparse24Op("2:4 fp16 mma.sp", "mma_sp"), Sparse24Op("2:4+W4 g128 op", "lowbit"),
       Sparse24Op("torch 2:4 fp16", "torch")]
