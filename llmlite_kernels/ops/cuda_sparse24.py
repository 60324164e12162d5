"""CUDA implementations of ``sparse24_linear`` / ``sparse24_lowbit_linear``.

Per call: the CUDA C++ sparse-tensor-core GEMM (``mma.sp``, csrc/cuda/sparse24_mma_sp.cu) for fp16/bf16
values at M >= ``MMA_SP_MIN_M`` when ``llmlite_kernels._C_cuda`` has it, else the Triton kernels
(``kernels/sparse24_linear.py``: GEMV for small M, ``tl.dot`` GEMM above). Registered only when a CUDA
device is present; the outcome is recorded in ``dispatch.backends()`` ("triton_sparse24").
"""
from __future__ import annotations

import torch

from . import triton_backend
from .dispatch import set_status
from .reference import sparse24_linear_ref, sparse24_lowbit_linear_ref
from .schemas import LIB, check_sparse24_linear

MMA_SP_MIN_M = 64  # below this the op is bound by the weight bytes: the Triton GEMV reads fewer


def _mma_sp_available() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("llmlite::sparse24_mma_sp_linear", "CUDA")


def register() -> bool:
    if not torch.cuda.is_available():
        set_status("triton_sparse24", False, "no CUDA device (tested under TRITON_INTERPRET=1)")
        return False
    kernels, why = triton_backend.load()
    set_status("triton_sparse24", kernels is not None, why)

    def sparse24_linear_cuda(x, values, meta, bias):
        n = check_sparse24_linear(x, values, meta, bias)
        m = x.numel() // max(x.shape[-1], 1)
        if (m >= MMA_SP_MIN_M and x.dtype in (torch.float16, torch.bfloat16) and x.shape[-1] % 64 == 0
                and _mma_sp_available()):
            out = torch.ops.llmlite.sparse24_mma_sp_linear(x.reshape(m, -1), values, meta, bias)
            return out.reshape(*x.shape[:-1], n)
        if kernels is None:  # reported in backends()["triton_sparse24"]
            return sparse24_linear_ref(x, values, meta, bias)
        return kernels.w24_linear(x, values, meta, bias)

    def sparse24_lowbit_linear_cuda(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits, group_size):
        if kernels is None:
            return sparse24_lowbit_linear_ref(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits,
                                              group_size)
        return kernels.w24_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits,
                                         group_size)

    LIB.impl("sparse24_linear", sparse24_linear_cuda, "CUDA")
    LIB.impl("sparse24_lowbit_linear", sparse24_lowbit_linear_cuda, "CUDA")
    return True


registered = register()
