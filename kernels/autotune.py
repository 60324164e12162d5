"""Measure kernel configs on the current GPU and write its table ``configs/<gpu-name slug>.json``.

    python -m llmlite_kernels.kernels.autotune [--out FILE] [--budget-s 180] [--quick]

Offline (a few minutes, e.g. from ``benchmarks/gpu_check.sh``), so that users pay no tuning at call time.
For each M bucket it times candidate configs (median µs, L2 flushed, ``triton.testing.do_bench``) on two
representative layer shapes and keeps the one with the least total time:

* M = 1: the split-K GEMV, per bits (2/3/4/8, group 128, asymmetric);
* M = 4, 16: GEMV vs tensor-core GEMM (W4 g128), the GEMM configs then serve every bits;
* M = 64, 256, 1024, 2048: GEMM configs, and dequantize + cuBLAS, which sets the crossover;
* if the CUDA C++ kernel is available, the M buckets where it beats the Triton choice (``prefer_cuda_cpp``).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from llmlite_kernels.formats.bitpack import packed_words
from llmlite_kernels.formats.lowbit import num_groups

from . import tuned_configs
from .linear_dispatch import RUNNERS

DEVICE = "cuda"  # a CPU smoke test sets "cpu" (TRITON_INTERPRET=1)
SHAPES = [(4096, 14336), (14336, 4096)]  # (K, N): an up- and a down-projection
QUICK_SHAPES = [(4096, 14336)]

GEMV_M1 = [dict(block_m=1, block_n=bn, block_k=bk, split_k=sk, waves=wv, num_warps=w, num_stages=s)
           for bn, bk, sk, wv, w, s in [
               (16, 256, 0, 2, 4, 2), (32, 256, 0, 2, 4, 2), (32, 512, 0, 2, 4, 2), (64, 128, 0, 2, 4, 2),
               (64, 256, 0, 2, 8, 2), (16, 512, 0, 4, 4, 3), (32, 128, 0, 4, 2, 2), (128, 128, 0, 2, 8, 2),
               (32, 256, 1, 2, 4, 3), (16, 256, 0, 8, 4, 2)]]
GEMV_SMALL = [dict(block_m=bm, block_n=bn, block_k=bk, split_k=0, num_warps=w, num_stages=2)
              for bm, bn, bk, w in [(4, 32, 64, 4), (4, 32, 128, 4), (4, 64, 64, 8), (16, 32, 32, 4), (16, 16, 64, 4)]]
GEMM = [dict(block_m=bm, block_n=bn, block_k=bk, group_m=8, split_k=sk, num_warps=w, num_stages=s)
        for bm, bn, bk, sk, w, s in [
            (16, 64, 128, 0, 4, 3), (16, 128, 64, 0, 4, 4), (32, 64, 128, 0, 4, 3), (32, 128, 64, 0, 4, 3),
            (64, 64, 64, 0, 4, 3), (64, 128, 64, 0, 4, 3), (64, 128, 64, 1, 4, 4), (128, 128, 64, 1, 8, 3),
            (128, 256, 64, 1, 8, 3), (128, 128, 32, 1, 4, 4), (64, 256, 64, 1, 8, 3)]]
DEQUANT = dict(block_n=32, block_k=128, num_warps=4)
LARGE_M = (64, 256, 1024, 2048)  # GEMM buckets; the last one's rule (if GEMM still wins) covers every larger M


def _layer(k, n, bits, group_size=128, dtype=torch.float16):
    packed = torch.randint(-2**31, 2**31 - 1, (n, packed_words(k, bits)), dtype=torch.int32, device=DEVICE)
    groups = num_groups(k, group_size)
    scale = (torch.rand(n, groups, device=DEVICE) * 0.01 + 0.001).to(dtype)
    zero = torch.randint(0, 2**bits, (n, groups), dtype=torch.uint8, device=DEVICE)
    return packed, scale, zero


class Tuner:
    def __init__(self, shapes, budget_s, stages, log=print):
        self.shapes, self.log = shapes, log
        self.deadline = time.monotonic() + budget_s
        self.stage_s = budget_s / stages  # each bucket gets its share; unused time rolls over
        self.default = tuned_configs.load(tuned_configs.config_path(None))
        self.layers = {}

    def layer(self, k, n, bits):
        if (k, n, bits) not in self.layers:
            self.layers[(k, n, bits)] = _layer(k, n, bits)
        return self.layers[(k, n, bits)]

    def time_us(self, kernel, config, m, bits, cpp=None) -> float:
        """Total median µs over the shapes (inf if the config fails to compile or run)."""
        from triton.testing import do_bench
        total = 0.0
        for k, n in self.shapes:
            packed, scale, zero = self.layer(k, n, bits)
            x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
            if cpp is not None:
                fn = lambda: cpp.lowbit_linear(x, packed, scale, zero, None, bits, 128)  # noqa: E731
            else:
                fn = lambda: RUNNERS[kernel](x, packed, scale, zero, None, bits, 128, n, config)  # noqa: E731
            try:
                fn()
                total += do_bench(fn, warmup=3, rep=15, return_mode="median") * 1e3
            except Exception as exc:  # e.g. out of shared memory for this config
                self.log(f"    {kernel} {config}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                return float("inf")
        return total

    def best(self, candidates, m, bits):
        """(kernel, config, µs) with the least total time among the default table's choice for (m, bits)
        (always tried first, so a spent budget never does worse than the defaults) and ``candidates``."""
        default = tuned_configs.choose(self.default, m, bits, 128)
        candidates = [default] + [c for c in candidates if c != default]
        stage_deadline = min(self.deadline, time.monotonic() + self.stage_s)
        results = []
        for kernel, config in candidates:
            if results and time.monotonic() > stage_deadline:
                self.log(f"    (time share spent after {len(results)} of {len(candidates)} configs)")
                break
            results.append((self.time_us(kernel, config, m, bits), kernel, config))
        us, kernel, config = min(results, key=lambda r: r[0])
        self.log(f"  M={m:<5} W{bits}: {kernel} {config} {us:.1f} µs")
        return kernel, config, us


def tune(shapes=SHAPES, budget_s=180.0, log=print) -> dict:
    t = Tuner(shapes, budget_s, stages=4 + 2 + len(LARGE_M), log=log)
    rules = []
    for bits in (4, 8, 3, 2):  # M = 1 per bits: the decode case, where the weight bytes differ most
        kernel, config, _ = t.best([("gemv", c) for c in GEMV_M1], 1, bits)
        rules.append({"max_m": 1, "bits": [bits], "kernel": kernel, "config": config})
    chosen = {}
    for m in (4, 16):
        gemm = [("gemm", c) for c in GEMM if c["block_m"] <= max(16, m)]
        gemv = [("gemv", c) for c in GEMV_SMALL if c["block_m"] <= m]
        chosen[m] = t.best(gemv + gemm, m, 4)
        rules.append({"max_m": m, "kernel": chosen[m][0], "config": chosen[m][1]})
    crossover = None
    for m in LARGE_M:
        kernel, config, us = t.best([("gemm", c) for c in GEMM if c["block_m"] <= m], m, 4)
        dense_us = t.time_us("dequant_matmul", DEQUANT, m, 4)
        log(f"  M={m:<5} dequant + cuBLAS: {dense_us:.1f} µs")
        chosen[m] = (kernel, config, us)
        if dense_us < us:
            crossover = m
            break
        rules.append({"max_m": None if m == LARGE_M[-1] else m, "kernel": kernel, "config": config})
    if crossover is not None or rules[-1]["max_m"] is not None:
        rules.append({"max_m": None, "kernel": "dequant_matmul", "config": DEQUANT})

    prefer_cpp = []
    try:
        from llmlite_kernels.ops import cuda_cpp_backend as cpp
    except ImportError:
        cpp = None
    if cpp is not None and cpp.available():
        low = 1
        for m in (1, 4, 16, 64):  # bucket [low, m] follows its measurement at M = m
            cpp_us = t.time_us(None, None, m, 4, cpp=cpp)
            triton_us = chosen[m][2] if m in chosen else t.time_us("gemv", rules[0]["config"], m, 4)
            log(f"  M={m:<5} CUDA C++ {cpp_us:.1f} µs vs Triton {triton_us:.1f} µs")
            if cpp_us < triton_us:
                prefer_cpp.append({"min_m": low, "max_m": m})
            low = m + 1
    else:
        prefer_cpp = [{"max_m": 64}]  # untested here: keep the default preference

    name = torch.cuda.get_device_name()
    return tuned_configs.validate({
        "gpu": name,
        "source": f"kernels/autotune.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch "
                  f"{torch.__version__}, triton {__import__('triton').__version__}, shapes {shapes}",
        "dispatch": rules,
        "dequantize": DEQUANT,
        "prefer_cuda_cpp": prefer_cpp,
    })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="default: configs/<gpu-name slug>.json beside this file")
    parser.add_argument("--budget-s", type=float, default=180.0, help="stop trying configs after this long")
    parser.add_argument("--quick", action="store_true", help="one shape instead of two")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("autotune: needs a CUDA GPU")
    torch.manual_seed(0)
    table = tune(QUICK_SHAPES if args.quick else SHAPES, args.budget_s)
    out = args.out or os.path.join(tuned_configs.CONFIG_DIR, tuned_configs.gpu_slug(table["gpu"]) + ".json")
    with open(out, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
