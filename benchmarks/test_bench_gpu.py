"""pytest-benchmark version of ``bench_gpu_lowbit.py`` (same op registry and shapes); skips without CUDA.

    pytest benchmarks/test_bench_gpu.py --benchmark-only [-k "70B and M1"]

Each round flushes the L2 (a 256 MiB write) outside the timed call and synchronizes after it; the script's
table (``bench_gpu_lowbit.py``) remains the reference figures (median µs, GB/s, % roofline, speed-ups).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_gpu_lowbit as bench  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs CUDA")]

OPS = bench.registry()
CASES = [(shape, m) for shape in bench.SHAPES for m in bench.BATCHES]


@pytest.fixture(scope="module")
def l2_flush():
    buf = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    return buf.zero_


@pytest.mark.parametrize("op", OPS, ids=[op.name.replace(" ", "_") for op in OPS])
@pytest.mark.parametrize("shape, m", CASES, ids=[f"{s.replace(' ', '_')}-M{m}" for s, m in CASES])
def test_bench_lowbit_linear(benchmark, l2_flush, op, shape, m):
    pytest.importorskip("pytest_benchmark")
    if not op.available():
        pytest.skip(f"{op.name} not available")
    k, n = bench.SHAPES[shape]
    state = op.prepare(k, n, m)
    op.compute(*state)

    def setup():
        l2_flush()
        torch.cuda.synchronize()
        return state, {}

    def call(*args):
        op.compute(*args)
        torch.cuda.synchronize()

    benchmark.extra_info.update(shape=shape, K=k, N=n, M=m, weight_bytes=op.nbytes(k, n))
    benchmark.pedantic(call, setup=setup, rounds=50, warmup_rounds=3)
