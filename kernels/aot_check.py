"""Compile the kernels ahead of time for a GPU architecture, without a GPU (``triton.compile`` to a cubin):
proves they are valid compiled Triton, not just interpretable, and reports registers / shared memory.

    python -m llmlite_kernels.kernels.aot_check [--arch 90] [--case NAME ...]

Must run without TRITON_INTERPRET=1 (under the interpreter ``@triton.jit`` yields no compilable function).
"""
from __future__ import annotations

import argparse
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import lowbit_dequant, lowbit_gemm, lowbit_gemv, splitk_reduce

_SCALARS = ["M", "N", "K", "words_per_row", "num_groups", "blocks_per_split"]


def _linear_pointers(act: str, out: str):
    return {"x_ptr": f"*{act}", "packed_ptr": "*i32", "scale_ptr": f"*{act}", "zero_ptr": "*u8",
            "bias_ptr": f"*{act}", "out_ptr": f"*{out}"}


def _fmt(bits, group, symmetric):
    return {"BITS": bits, "GROUP": group, "SYMMETRIC": symmetric}


# name -> (kernel, pointer types, int scalars, constexprs, launch options)
CASES = {
    "gemv-w3-asym-bf16": (lowbit_gemv.lowbit_gemv_splitk_kernel, _linear_pointers("bf16", "fp32"), _SCALARS,
                          {"BLOCK_M": 4, "BLOCK_N": 32, "BLOCK_K": 128, **_fmt(3, 32, False), "HAS_BIAS": False},
                          {"num_warps": 4, "num_stages": 2}),
    "gemv-w4-sym-fp16-m1": (lowbit_gemv.lowbit_gemv_splitk_kernel, _linear_pointers("fp16", "fp16"), _SCALARS,
                            {"BLOCK_M": 1, "BLOCK_N": 32, "BLOCK_K": 256, **_fmt(4, 128, True), "HAS_BIAS": True},
                            {"num_warps": 4, "num_stages": 2}),
    "gemm-w4-sym-fp16": (lowbit_gemm.lowbit_gemm_kernel, _linear_pointers("fp16", "fp16"), _SCALARS,
                         {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, **_fmt(4, 128, True),
                          "HAS_BIAS": True, "IEEE_DOT": False, "BF16_DOT_AS_FP32": False},
                         {"num_warps": 4, "num_stages": 3}),
    "gemm-w3-asym-bf16-g32": (lowbit_gemm.lowbit_gemm_kernel, _linear_pointers("bf16", "bf16"), _SCALARS,
                              {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, **_fmt(3, 32, False),
                               "HAS_BIAS": False, "IEEE_DOT": False, "BF16_DOT_AS_FP32": False},
                              {"num_warps": 8, "num_stages": 3}),
    "gemm-w8-fp32": (lowbit_gemm.lowbit_gemm_kernel, _linear_pointers("fp32", "fp32"), _SCALARS,
                     {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, **_fmt(8, 0, True),
                      "HAS_BIAS": True, "IEEE_DOT": True, "BF16_DOT_AS_FP32": False},
                     {"num_warps": 4, "num_stages": 2}),
    "dequant-w2-per-channel": (lowbit_dequant.lowbit_dequantize_kernel,
                               {"packed_ptr": "*i32", "scale_ptr": "*fp16", "zero_ptr": "*u8", "out_ptr": "*fp16"},
                               ["N", "K", "words_per_row", "num_groups"],
                               {"BLOCK_N": 32, "BLOCK_K": 128, **_fmt(2, 0, False)}, {"num_warps": 4}),
    "splitk-reduce": (splitk_reduce.splitk_reduce_kernel,
                      {"partial_ptr": "*fp32", "bias_ptr": "*bf16", "out_ptr": "*bf16"}, ["numel", "N"],
                      {"SPLIT_K": 3, "HAS_BIAS": True, "BLOCK": 1024}, {"num_warps": 4}),
}


def compile_case(name: str, arch: int = 90):
    kernel, pointers, scalars, constexprs, options = CASES[name]
    signature = {**pointers, **{s: "i32" for s in scalars}, **{c: "constexpr" for c in constexprs}}
    return triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("aot_check: unset TRITON_INTERPRET (the interpreter cannot compile kernels)")
    for name in args.case or sorted(CASES):
        compiled = compile_case(name, args.arch)
        meta = compiled.metadata
        print(f"{name:24s} sm_{args.arch}: cubin {len(compiled.asm['cubin'])} B, shared {meta.shared} B, "
              f"{meta.num_warps} warps")
        if meta.shared > 227 * 1024:
            raise SystemExit(f"{name}: {meta.shared} B of shared memory exceeds an sm_90 block's 227 KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
