"""Registered ops (``torch.ops.llmlite.*``): schemas + fakes + autograd, the reference, the backends."""
import torch

from . import schemas  # noqa: F401  (defines the ops)
from . import reference  # noqa: F401  (the default kernel of every op)
from .dispatch import backends, kernel_for, load_extension, log_inactive, set_status
from .reference import lowbit_dequantize_ref, lowbit_linear_ref

_cpu = load_extension("_C", "cpu_cpp")
if _cpu is not None:
    set_status("cpu_cpp", True, f"llmlite_kernels._C loaded, isa={torch.ops.llmlite.cpu_isa()}")

from . import cuda  # noqa: E402,F401  (CUDA kernels: Triton / CUDA C++, when a GPU is present)
from . import cuda_sparse24  # noqa: E402,F401  (2:4 sparse ops on CUDA)
from . import cuda_sparse  # noqa: E402,F401  (masked_linear: Triton masked GEMM on CUDA)

log_inactive()

lowbit_linear = torch.ops.llmlite.lowbit_linear
lowbit_dequantize = torch.ops.llmlite.lowbit_dequantize

__all__ = ["backends", "kernel_for", "lowbit_dequantize", "lowbit_dequantize_ref", "lowbit_linear",
           "lowbit_linear_ref"]
