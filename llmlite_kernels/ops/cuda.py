"""CUDA implementations of ``lowbit_linear`` and ``lowbit_dequantize``.

Per call, by M (and bits/group) from the GPU's table in ``kernels/configs``: the CUDA C++ kernel
(``ops/cuda_cpp_backend.py``) where the table's ``prefer_cuda_cpp`` admits the case and the kernel
supports it, else the Triton kernels (split-K GEMV / tensor-core GEMM / dequantize + cuBLAS). Registered
only when a CUDA device is present and at least one of the two imports; the outcome is recorded in
``dispatch.backends()`` ("triton"). No host syncs: safe under CUDA graph capture and torch.compile
(the op is opaque there; its fake lives in schemas.py).
"""
from __future__ import annotations

import contextlib
import importlib

import torch

from ..formats.lowbit import check_packed
from . import triton_backend
from .dispatch import set_status
from .reference import lowbit_dequantize_ref, lowbit_linear_ref
from .schemas import LIB, check_lowbit_linear


def _cuda_cpp():
    """The CUDA C++ backend module when it imports and its extension is available, else None."""
    try:
        module = importlib.import_module("llmlite_kernels.ops.cuda_cpp_backend")
    except ImportError:
        return None
    return module if module.available() else None


def _on_device(device):
    """``torch.cuda.device(device)`` when it is not the current CUDA device, else a no-op (cheap per call)."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _make_impls(kernels, cpp):
    tables = kernels.tuned_configs if kernels is not None else None

    def lowbit_linear_cuda(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
        n = check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        m = x2.shape[0]
        table = tables.table_for(x.device) if tables is not None else None
        use_cpp = (cpp is not None
                   and (table is None or tables.prefers_cuda_cpp(table, m, bits, group_size))
                   and cpp.supports(bits, group_size, weight_zero_point is None, x.dtype, m, n, k))
        if use_cpp:
            out = cpp.lowbit_linear(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
        elif kernels is not None:
            with _on_device(x.device):  # Triton launches on the current device
                out = kernels.lowbit_linear_2d(x2, weight_packed, weight_scale, weight_zero_point, bias, bits,
                                               group_size, n, table)
        else:  # CUDA C++ only, and it does not cover this case (reported in backends()["triton"])
            return lowbit_linear_ref(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
        return out.reshape(*x.shape[:-1], n)

    def lowbit_dequantize_cuda(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype):
        if kernels is None:
            return lowbit_dequantize_ref(weight_packed, weight_scale, weight_zero_point, bits, group_size,
                                         in_features, dtype)
        check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                     weight_packed.device)
        with _on_device(weight_packed.device):
            return kernels.lowbit_dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size,
                                             in_features, dtype)

    return lowbit_linear_cuda, lowbit_dequantize_cuda


def register() -> bool:
    """Register the CUDA kernels of both ops when possible; record why in ``backends()``. Returns success."""
    if not torch.cuda.is_available():
        set_status("triton", False, "no CUDA device (the Triton kernels are tested under TRITON_INTERPRET=1)")
        return False
    kernels, why = triton_backend.load()
    set_status("triton", kernels is not None, why if kernels is None else f"{why}: registered for CUDA")
    cpp = _cuda_cpp()
    if kernels is None and cpp is None:
        return False
    linear, dequantize = _make_impls(kernels, cpp)
    LIB.impl("lowbit_linear", linear, "CUDA")
    LIB.impl("lowbit_dequantize", dequantize, "CUDA")
    return True


registered = register()
