"""GPU benchmark entry of the CUDA C++ W4/W8 x fp16/bf16 GEMM, plus a small standalone runner.

``CudaCppLowbitLinear`` is one op of the GPU benchmark registry (``benchmarks/bench_gpu_lowbit.py``):
an untimed ``prepare`` (random codes/scales/zeros of one layer, repacked once, as at load) and a timed
``compute``; ``nbytes`` is what one call must read (repacked codes, scales, zero points), and
``bytes_per_weight`` the same per weight element.

Standalone (``python benchmarks/ops_cuda_cpp.py [--quick]``): the Llama-3 8B/70B layer shapes, M in
{1, 16, 32, 64}, against cuBLAS fp16 (``F.linear``) in the same run. Each op is called over a ring of
distinct layers larger than 2x the L2 cache, so every call streams its weights from HBM as in decode.
"% roof" divides GB/s by the streaming-read bandwidth measured in the same run (a sum over 2 GiB).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llmlite_kernels.formats.bitpack import packed_words  # noqa: E402
from llmlite_kernels.formats.lowbit import num_groups  # noqa: E402
from llmlite_kernels.formats.mma_repack import padded_out_features  # noqa: E402
from llmlite_kernels.ops import cuda_cpp_backend as cpp  # noqa: E402

SHAPES = {  # name: (K in_features, N out_features)
    "8b-qkv": (4096, 6144), "8b-o": (4096, 4096), "8b-gate_up": (4096, 28672), "8b-down": (14336, 4096),
    "70b-qkv": (8192, 10240), "70b-o": (8192, 8192), "70b-gate_up": (8192, 57344), "70b-down": (28672, 8192),
}
BATCHES = (1, 16, 32, 64)


class CudaCppLowbitLinear:
    """``lowbit_linear`` on the CUDA C++ tensor-core kernel, weight prepared (repacked) once."""

    def __init__(self, bits: int = 4, group_size: int = 128, symmetric: bool = False, dtype=torch.float16):
        self.bits, self.group_size, self.symmetric, self.dtype = bits, group_size, symmetric, dtype
        g = "pc" if group_size == -1 else group_size
        self.name = f"cuda_cpp W{bits} g{g}{'' if symmetric else ' asym'}"
        self._weights = {}

    def available(self) -> bool:
        return cpp.available()

    def bytes_per_weight(self, k: int) -> float:
        per_group = 2 * (1 if self.symmetric else 2)  # scale (+ zero point), both in the activation dtype
        return self.bits / 8 + per_group * num_groups(k, self.group_size) / k

    def nbytes(self, k: int, n: int) -> int:
        return int(padded_out_features(n) * k * self.bytes_per_weight(k))

    def new_weights(self, k: int, n: int, device="cuda"):
        """A fresh random layer (every bit pattern is a valid code), repacked as at load time."""
        words = packed_words(k, self.bits)
        groups = num_groups(k, self.group_size)
        packed = torch.randint(-2**31, 2**31 - 1, (n, words), dtype=torch.int32, device=device)
        scale = (torch.rand(n, groups, device=device) * 0.01 + 0.001).to(self.dtype)
        zero = None if self.symmetric else torch.randint(0, 2**self.bits, (n, groups), dtype=torch.uint8,
                                                          device=device)
        return cpp.prepare(packed, scale, zero, self.bits, self.group_size, k, self.dtype)

    def prepare(self, k: int, n: int, m: int, device="cuda"):
        # One repacked layer per shape, reused across M (the kernel's speed does not depend on values).
        key = (k, n, str(device))
        if key not in self._weights:
            self._weights[key] = self.new_weights(k, n, device)
        return torch.randn(m, k, device=device, dtype=self.dtype), self._weights[key]

    def compute(self, x, rw):
        return cpp.linear_repacked(x, rw)


class CublasDense:
    """Baseline: dense fp16/bf16 ``F.linear`` (cuBLAS)."""

    def __init__(self, dtype=torch.float16):
        self.dtype = dtype
        self.name = f"cuBLAS {str(dtype).replace('torch.', '')}"

    def available(self) -> bool:
        return torch.cuda.is_available()

    def nbytes(self, k: int, n: int) -> int:
        return 2 * n * k

    def new_weights(self, k: int, n: int, device="cuda"):
        return torch.randn(n, k, device=device, dtype=self.dtype)

    def prepare(self, k: int, n: int, m: int, device="cuda"):
        return torch.randn(m, k, device=device, dtype=self.dtype), self.new_weights(k, n, device)

    def compute(self, x, w):
        return F.linear(x, w)


OPS = [CublasDense(), CudaCppLowbitLinear(4, 128), CudaCppLowbitLinear(4, 128, symmetric=True),
       CudaCppLowbitLinear(8, -1, symmetric=True)]


def streaming_read_gbps(nbytes=2**31) -> float:
    t = torch.ones(nbytes // 4, device="cuda")
    t.sum()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(5):
        start.record()
        t.sum()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del t
    return nbytes / best / 1e9


def time_op(op, k, n, m, ring_bytes, reps=20) -> float:
    """Seconds per call, median over passes of a ring of distinct layers (weights cold in L2)."""
    x, w = op.prepare(k, n, m)
    ring = [w] + [op.new_weights(k, n) for _ in range(max(1, math.ceil(ring_bytes / op.nbytes(k, n))) - 1)]
    op.compute(x, ring[0])  # warm-up: plan caches, lazy init
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(reps):
        start.record()
        for wi in ring:
            op.compute(x, wi)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / len(ring))
    samples.sort()
    return samples[len(samples) // 2]


def run(shapes, batches, ops, out=print):
    props = torch.cuda.get_device_properties(0)
    ring_bytes = 2 * getattr(props, "L2_cache_size", 50 * 2**20)
    bw = streaming_read_gbps()
    out(f"# {props.name}, {props.multi_processor_count} SMs, L2 {ring_bytes / 2 / 2**20:.0f} MiB, "
        f"streaming read {bw:.0f} GB/s, torch {torch.__version__}")
    ops = [op for op in ops if op.available()]
    rows = []
    for name, (k, n) in shapes.items():
        for m in batches:
            times = {op.name: time_op(op, k, n, m, ring_bytes) for op in ops}
            base = times.get(ops[0].name)
            out(f"\n{name} ({k}->{n})  M={m}")
            out(f"{'op':<24}{'µs':>9}{'GB/s':>8}{'% roof':>8}{'x cuBLAS':>10}")
            for op in ops:
                t = times[op.name]
                gbps = op.nbytes(k, n) / t / 1e9
                rows.append(dict(shape=name, M=m, op=op.name, us=t * 1e6, gbps=gbps, roof=100 * gbps / bw,
                                 speedup=base / t))
                out(f"{op.name:<24}{t * 1e6:>9.1f}{gbps:>8.0f}{100 * gbps / bw:>8.0f}{base / t:>10.2f}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8b-o and 70b-gate_up, M in {1, 16, 64}")
    args = p.parse_args(argv)
    if not cpp.available():
        sys.exit("CUDA C++ backend not available (needs a GPU and llmlite_kernels._C_cuda built)")
    torch.manual_seed(0)
    if args.quick:
        run({k: SHAPES[k] for k in ("8b-o", "70b-gate_up")}, (1, 16, 64), OPS)
    else:
        run(SHAPES, BATCHES, OPS)


if __name__ == "__main__":
    main()
