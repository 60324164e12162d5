"""CUDA implementation of ``masked_linear``: the Triton masked GEMM (``kernels/masked_gemm.py``).

Registered for the CUDA key when a CUDA device is present and Triton imports; fp64 inputs (gradcheck)
go to the reference. The backward (``schemas.py``) runs on torch matmuls of the masked weight.
On the CPU the reference runs (the mask unpacked once per call, then torch's matmul); ``backends()``
reports both under "masked_linear".
"""
from __future__ import annotations

import importlib

import torch

from . import triton_backend
from .dispatch import set_status
from .reference import masked_linear_ref
from .schemas import LIB

CPU_PATH = "CPU: reference (mask unpacked once per call + torch matmul)"


def register() -> bool:
    if not torch.cuda.is_available():
        set_status("masked_linear", True, f"{CPU_PATH}; CUDA: no device (Triton kernel tested under TRITON_INTERPRET=1)")
        return False
    kernels, why = triton_backend.load()
    if kernels is None:
        set_status("masked_linear", True, f"{CPU_PATH}; CUDA: reference ({why})")
        return False
    masked_gemm = importlib.import_module(f"{triton_backend.KERNELS_MODULE}.masked_gemm")

    def masked_linear_cuda(x, weight, mask_bits, bias):
        if x.dtype not in masked_gemm.TRITON_DTYPES:
            return masked_linear_ref(x, weight, mask_bits, bias)
        return masked_gemm.masked_linear(x, weight, mask_bits, bias)

    LIB.impl("masked_linear", masked_linear_cuda, "CUDA")
    set_status("masked_linear", True, f"{CPU_PATH}; CUDA: Triton masked GEMM ({why})")
    return True


registered = register()
