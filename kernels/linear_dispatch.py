"""``lowbit_linear`` on the Triton kernels, the kernel chosen by M from the GPU's config table:
split-K GEMV (small M), tensor-core GEMM (medium M), dequantize + dense GEMM (large M)."""
from __future__ import annotations

from . import tuned_configs
from .launch_params import checked_2d
from .lowbit_dequant import dequant_matmul, dequantize
from .lowbit_gemm import gemm
from .lowbit_gemv import gemv_splitk

RUNNERS = {"gemv": gemv_splitk, "gemm": gemm, "dequant_matmul": dequant_matmul}


def lowbit_linear_2d(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, table=None):
    """Unchecked: ``x2`` [M, K] contiguous -> [M, N]. ``table`` defaults to the device's config table."""
    table = tuned_configs.table_for(x2.device) if table is None else table
    kernel, config = tuned_configs.choose(table, x2.shape[0], bits, group_size)
    return RUNNERS[kernel](x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, config)


def lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, table=None):
    """``llmlite::lowbit_linear`` semantics on the Triton kernels. x [..., K] -> [..., N] in x.dtype."""
    x2, n = checked_2d(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    out = lowbit_linear_2d(x2, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size, n, table)
    return out.reshape(*x.shape[:-1], n)


def lowbit_dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype,
                      table=None):
    """Unchecked ``llmlite::lowbit_dequantize`` on the Triton kernel."""
    table = tuned_configs.table_for(weight_packed.device) if table is None else table
    return dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype,
                      table.get("dequantize"))
