"""CPU 2:4 sparse linear benchmark: llmlite's 2:4 GEMV (fp32 kept values, and int4 kept values) vs dense
torch fp32 on a 14336 -> 4096 layer (Llama-3-8B down projection), same run.

Same method as ``bench_cpu_lowbit.py`` (its timing, cold ring and streaming-bandwidth helpers are reused):
hot = one layer called repeatedly; cold = a ring of distinct layers together more than
``max(2 x L3, 960 MiB)``, so every call streams its weights from DRAM as in decode. GB/s = bytes of the
stored weight read per call / time (values + metadata + scales). Weights are random bits (the kernels'
speed does not depend on the values). Goal: 2:4 fp32 >= 1.7x dense fp32 at M=1.
Run ``python benchmarks/bench_cpu_sparse24.py [--batches 1 8]``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_lowbit import (Op, _dense_prepare, _lowbit_bytes, _lowbit_compute, _lowbit_prepare,  # noqa: E402
                              l3_bytes, time_cell)

from llmlite_kernels.formats.bitpack import packed_words  # noqa: E402
from llmlite_kernels.formats.sparse24 import kept_features, meta_words  # noqa: E402

K, N = 14336, 4096
GROUP = 128


def _meta(k, n):
    return torch.randint(-2**31, 2**31 - 1, (n, meta_words(k)), dtype=torch.int32)


def _s24_prepare(k, n, m):
    return torch.randn(m, k), (torch.randn(n, kept_features(k)), _meta(k, n))


def _s24_lowbit_prepare(k, n, m):
    k2 = kept_features(k)
    packed = torch.randint(-2**31, 2**31 - 1, (n, packed_words(k2, 4)), dtype=torch.int32)
    scale = (torch.rand(n, math.ceil(k2 / GROUP)) * 0.01 + 0.001).half()
    zero = torch.randint(0, 16, scale.shape, dtype=torch.uint8)
    return torch.randn(m, k), (packed, scale, zero, _meta(k, n))


def _s24_lowbit_bytes(k, n):
    k2 = kept_features(k)
    return n * packed_words(k2, 4) * 4 + n * math.ceil(k2 / GROUP) * 3 + n * meta_words(k) * 4


OPS = [
    Op("torch fp32", _dense_prepare(torch.float32), lambda x, w: F.linear(x, w[0]), lambda k, n: 4 * n * k),
    Op("2:4 fp32", _s24_prepare, lambda x, w: torch.ops.llmlite.sparse24_linear(x, w[0], w[1], None),
       lambda k, n: 4 * n * kept_features(k) + 4 * n * meta_words(k)),
    Op("2:4+W4 g128", _s24_lowbit_prepare,
       lambda x, w: torch.ops.llmlite.sparse24_lowbit_linear(x, w[0], w[1], w[2], w[3], None, 4, GROUP),
       _s24_lowbit_bytes),
    Op("dense W4 g128", _lowbit_prepare(4), _lowbit_compute, _lowbit_bytes(4)),
]


def run(batches, cold_bytes, min_time, out=print):
    out(f"# torch {torch.__version__}, threads={torch.get_num_threads()}, isa={torch.ops.llmlite.cpu_isa()}, "
        f"L3={l3_bytes() / 2**20:.1f} MiB, cold ring >= {cold_bytes / 2**20:.0f} MiB")
    rows = []
    for m in batches:
        for mode in ("cold", "hot"):
            times, cell_bw = time_cell(OPS, K, N, m, mode == "cold", cold_bytes, min_time)
            out(f"\n{K}->{N}  M={m}  {mode}  (streaming read {cell_bw:.1f} GB/s, median)")
            out(f"{'op':<14}{'MiB':>8}{'µs':>11}{'GB/s':>8}{'% roof':>8}{'x fp32':>8}")
            for op in OPS:
                t, nbytes = times[op.name], op.nbytes(K, N)
                row = dict(M=m, mode=mode, op=op.name, mib=nbytes / 2**20, us=t * 1e6, gbps=nbytes / t / 1e9,
                           vs_fp32=times["torch fp32"] / t)
                row["roof"] = 100 * row["gbps"] / cell_bw
                rows.append(row)
                out(f"{op.name:<14}{row['mib']:>8.1f}{row['us']:>11.1f}{row['gbps']:>8.1f}{row['roof']:>8.0f}"
                    f"{row['vs_fp32']:>8.2f}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1])
    p.add_argument("--cold-mib", type=float, default=None, help="size of the cold ring (default max(2 x L3, 960))")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per cell, at least")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cold = int((args.cold_mib or max(2 * l3_bytes() / 2**20, 960)) * 2**20)
    run(args.batches, cold, args.min_time)


if __name__ == "__main__":
    main()
