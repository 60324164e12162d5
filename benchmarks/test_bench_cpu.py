"""pytest-benchmark view of bench_cpu_lowbit.py (same op registry): ``pytest benchmarks/test_bench_cpu.py``.

Hot (one layer, cache-resident) for every op; cold (a ring of layers larger than 2x L3) for ours W4 and
the torch baselines at M=1, the decode case.
"""
import itertools
import math

import pytest
import torch

from bench_cpu_lowbit import OPS, l3_bytes

OP_BY_NAME = {op.name: op for op in OPS}
K, N = 14336, 4096  # Llama-3-8B down projection


@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("name", list(OP_BY_NAME))
def test_hot(benchmark, name, m):
    op = OP_BY_NAME[name]
    x, w = op.prepare(K, N, m)
    benchmark.extra_info.update(bytes=op.nbytes(K, N), threads=torch.get_num_threads())
    benchmark(op.compute, x, w)


@pytest.mark.parametrize("name", ["ours W4", "ours W2", "torch fp32", "torch int4"])
def test_cold_m1(benchmark, name):
    op = OP_BY_NAME[name]
    x, w = op.prepare(K, N, 1)
    copies = math.ceil(max(2 * l3_bytes(), 960 * 2**20) / op.nbytes(K, N))
    ring = itertools.cycle([w] + [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in w)
                                  for _ in range(copies - 1)])
    benchmark.extra_info.update(bytes=op.nbytes(K, N), ring=copies)
    benchmark.pedantic(lambda: op.compute(x, next(ring)), rounds=3 * copies, warmup_rounds=copies)
