"""Triton kernels of llmlite-kernels (installed as ``llmlite_kernels.kernels``).

* ``w_lowbit_gemv``       dequant-fused split-K GEMV / skinny GEMM (small M)
* ``w_lowbit_gemm``       tensor-core GEMM dequantizing weight tiles on the fly (medium M)
* ``w_lowbit_dequantize`` packed weight -> dense (``lowbit_dequantize``; large-M dequant + cuBLAS)
* ``lowbit_linear``       the three above, chosen by M from ``configs/<gpu>.json``

Each launcher checks its arguments and runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
"""
from .lowbit_dequant import w_lowbit_dequantize
from .lowbit_gemm import w_lowbit_gemm
from .lowbit_gemv import w_lowbit_gemv
from .linear_dispatch import lowbit_dequantize, lowbit_linear, lowbit_linear_2d

__all__ = ["lowbit_dequantize", "lowbit_linear", "lowbit_linear_2d", "w_lowbit_dequantize", "w_lowbit_gemm",
           "w_lowbit_gemv"]
