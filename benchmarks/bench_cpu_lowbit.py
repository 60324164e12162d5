"""CPU low-bit linear benchmark: llmlite's C++ kernels vs torch fp32 / bf16 / int4 on LLM layer shapes.

Each op in OPS has an untimed ``prepare`` (weights for one layer, in its own format) and a timed
``compute``; ``nbytes`` is what one call must read from memory (weights, scales, zero points).

* hot:  one layer, called repeatedly (it stays in the last-level cache, as a micro-benchmark does).
* cold: a ring of distinct layers, together more than ``--cold-mib`` (default: 2x the L3 size, at least
  960 MiB), called in turn, so every call streams its weights from DRAM as in real decode.

GB/s = weight bytes / time; "% roof" divides by the streaming-read bandwidth measured in the same cell
(a sum over a 1 GiB tensor, same threads). The ops of a cell and that read are timed in rotation, pass
after pass, and each figure is a median over passes (``time_cell``): drifts of a shared VM then move
every column together instead of whichever op was running. Weights are random bits: the kernels' speed does not
depend on the values. Run ``python benchmarks/bench_cpu_lowbit.py [--quick] [--repeat 5] [--png speedups.png]``;
``--repeat`` reruns everything and prints the median of each figure, since whole runs still differ by up to 20%
on a shared VM.

On a machine shared with other jobs, wall-clock times measure the neighbours too; ``--threads 1
--clock thread`` times the CPU time of the one compute thread instead (memory stalls included), which
compares the kernels' own cost independently of the load.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import llmlite_kernels.ops  # noqa: E402,F401  (registers torch.ops.llmlite.*)
from llmlite_kernels.formats.bitpack import packed_words  # noqa: E402
from llmlite_kernels.formats.cpu_interleave import interleave_weight  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (in_features K, out_features N)
BATCHES = [1, 8, 512]
GROUP = 128


@dataclass
class Op:
    name: str
    prepare: Callable  # (K, N, M) -> (x, weights tuple); untimed
    compute: Callable  # (x, weights) -> out
    nbytes: Callable  # (K, N) -> bytes of weights read per call
    max_batch: int = 1 << 30  # larger M is not this op's job (skipped)


def _lowbit_prepare(bits):
    def prepare(k, n, m):
        words = packed_words(k, bits)
        g = math.ceil(k / GROUP)
        packed = torch.randint(-2**31, 2**31 - 1, (n, words), dtype=torch.int32)
        scale = (torch.rand(n, g) * 0.01 + 0.001).half()
        zero = torch.randint(0, 2**bits, (n, g), dtype=torch.uint8)
        return torch.randn(m, k), (packed, scale, zero, bits)
    return prepare


def _lowbit_compute(x, w):
    packed, scale, zero, bits = w
    return torch.ops.llmlite.lowbit_linear(x, packed, scale, zero, None, bits, GROUP)


def _lowbit_a8_compute(x, w):
    packed, scale, zero, bits = w
    return torch.ops.llmlite.lowbit_linear_a8(x, packed, scale, zero, None, bits, GROUP)


def _interleaved_prepare(bits):
    def prepare(k, n, m):
        x, (packed, scale, zero, _) = _lowbit_prepare(bits)(k, n, m)
        iw = interleave_weight(packed, scale, zero, bits, GROUP, k)
        return x, (iw.weight, iw.scale, iw.zero, bits, n)
    return prepare


def _interleaved_compute(x, w):
    weight, scale, zero, bits, n = w
    return torch.ops.llmlite.lowbit_linear_a8_interleaved(x, weight, scale, zero, None, bits, GROUP, n)


def _interleaved_bytes(bits):  # codes + fp32 scales + uint8 zero points
    return lambda k, n: n * math.ceil(k * bits / 32) * 4 + n * math.ceil(k / GROUP) * 5


def _lowbit_bytes(bits):
    return lambda k, n: n * packed_words(k, bits) * 4 + n * math.ceil(k / GROUP) * 3


def _dense_prepare(dtype):
    def prepare(k, n, m):
        return torch.randn(m, k).to(dtype), (torch.randn(n, k).to(dtype),)
    return prepare


def _int4_prepare(k, n, m):
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scale_zeros = torch.rand(k // GROUP, n, 2).to(torch.bfloat16)
    return torch.randn(m, k).to(torch.bfloat16), (packed, scale_zeros)


def _int4_compute(x, w):
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, w[0], GROUP, w[1])


OPS = [Op(f"ours W{b}", _lowbit_prepare(b), _lowbit_compute, _lowbit_bytes(b)) for b in (4, 3, 2, 8)] + [
    Op(f"ours W{b}A8", _lowbit_prepare(b), _lowbit_a8_compute, _lowbit_bytes(b)) for b in (4, 2, 8)] + [
    # the layout QuantLinear decodes with (int8 activations, AVX512-VNNI, batches <= 8 rows)
    Op(f"ours W{b}A8-il", _interleaved_prepare(b), _interleaved_compute, _interleaved_bytes(b), max_batch=8)
    for b in (4, 3, 2, 8)] + [
    Op("torch fp32", _dense_prepare(torch.float32), lambda x, w: F.linear(x, w[0]), lambda k, n: 4 * n * k),
    Op("torch bf16", _dense_prepare(torch.bfloat16), lambda x, w: F.linear(x, w[0]), lambda k, n: 2 * n * k),
    Op("torch int4", _int4_prepare, _int4_compute, lambda k, n: n * k // 2 + n * (k // GROUP) * 4),
]


def l3_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        return int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 480 * 2**20


CLOCK = time.perf_counter  # or time.thread_time (--clock thread, with --threads 1)


def _timed(fn) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def _clone(w):
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in w)


def time_cell(ops, k: int, n: int, m: int, cold: bool, cold_bytes: int, min_time: float,
              probe_bytes: int = 2**30):
    """``({op name: seconds per call}, streaming-read GB/s)`` of one (shape, M, mode) cell, measured in rotation.

    Every pass gives each op one turn (a different op first in each pass) and then times a sum over a
    ``probe_bytes`` tensor, so the slow drifts of a shared machine hit every op and the roofline alike;
    each figure is the median over passes. A cold turn calls every layer of the op's ring once; a hot
    turn calls its one layer once untimed, then as many times as the ring would have layers.
    """
    rings, inputs, reps = {}, {}, {}
    for op in ops:
        x, w = op.prepare(k, n, m)
        copies = max(1, math.ceil(cold_bytes / op.nbytes(k, n)))
        rings[op.name] = [w] + ([_clone(w) for _ in range(copies - 1)] if cold else [])
        inputs[op.name], reps[op.name] = x, 1 if cold else copies
        op.compute(x, w)  # warm-up (first-call allocations, lazy init)
    probe = torch.ones(probe_bytes // 4)
    probe.sum()
    samples, reads = {op.name: [] for op in ops}, []
    passes, total = 0, 0.0
    while passes < 3 or (total < min_time * len(ops) and passes < 200):
        for op in ops[passes % len(ops):] + ops[:passes % len(ops)]:
            x, ring = inputs[op.name], rings[op.name]
            if not cold:
                op.compute(x, ring[0])
            t0 = CLOCK()
            for _ in range(reps[op.name]):
                for wi in ring:
                    op.compute(x, wi)
            dt = CLOCK() - t0
            samples[op.name].append(dt / (len(ring) * reps[op.name]))
            total += dt
        reads.append(probe_bytes / _timed(probe.sum) / 1e9)
        passes += 1
    return {name: statistics.median(s) for name, s in samples.items()}, statistics.median(reads)


def run(shapes, batches, ops, cold_bytes, min_time, out=print):
    out(f"# torch {torch.__version__}, threads={torch.get_num_threads()}, clock={CLOCK.__name__}, "
        f"llmlite isa={torch.ops.llmlite.cpu_isa()}, L3={l3_bytes() / 2**20:.1f} MiB, "
        f"cold ring >= {cold_bytes / 2**20:.0f} MiB (each cell measures the streaming read in rotation with its ops)")
    rows = []
    for k, n in shapes:
        for m in batches:
            cell_ops = [op for op in ops if m <= op.max_batch]
            for mode in (("cold", "hot") if m <= 8 else ("hot",)):
                times, cell_bw = time_cell(cell_ops, k, n, m, mode == "cold", cold_bytes, min_time)
                for op in cell_ops:
                    t = times[op.name]
                    gbps = op.nbytes(k, n) / t / 1e9
                    rows.append(dict(shape=f"{k}->{n}", M=m, mode=mode, op=op.name, us=t * 1e6, gbps=gbps,
                                     roof=100 * gbps / cell_bw, read_gbps=cell_bw,
                                     vs_fp32=times.get("torch fp32", math.nan) / t,
                                     vs_int4=times.get("torch int4", math.nan) / t))
                _print_rows(rows[-len(cell_ops):], out)
    return rows


def _print_rows(rows, out):
    r0 = rows[0]
    out(f"\n{r0['shape']}  M={r0['M']}  {r0['mode']}  (streaming read {r0['read_gbps']:.1f} GB/s, median)")
    out(f"{'op':<12}{'µs':>11}{'GB/s':>8}{'% roof':>8}{'x fp32':>8}{'x int4':>8}")
    for r in rows:
        out(f"{r['op']:<12}{r['us']:>11.1f}{r['gbps']:>8.1f}{r['roof']:>8.0f}{r['vs_fp32']:>8.2f}{r['vs_int4']:>8.2f}")


def summarize(runs, out=print):
    """Median over repeated runs of every (shape, M, mode, op) figure, with the range of the ratio to int4.

    On a shared VM the same cell moves up to 20% from one run to the next (neighbours, memory placement), more
    than the ops differ within a run; ratios are taken within each run, then their median is reported.
    "x ours W4" divides by our W4 op of the same run and cell (the interleaved one when it ran).
    """
    keyed = {}
    for rows in runs:
        cells = {}
        for r in rows:
            cells.setdefault((r["shape"], r["M"], r["mode"]), {})[r["op"]] = r["us"]
        for r in rows:
            times = cells[(r["shape"], r["M"], r["mode"])]
            w4 = times.get("ours W4A8-il", times.get("ours W4", math.nan))
            keyed.setdefault((r["shape"], r["M"], r["mode"], r["op"]), []).append(dict(r, vs_w4=w4 / r["us"]))
    out(f"\nmedian of {len(runs)} runs (ratios within each run; [min..max] over runs)")
    out(f"{'cell':<24}{'op':<16}{'µs':>9}{'% roof':>8}{'x fp32':>8}{'x int4':>8}{'x int4 range':>16}"
        f"{'x ours W4':>11}")
    for (shape, m, mode, op), rs in keyed.items():
        med = {f: statistics.median(r[f] for r in rs) for f in ("us", "roof", "vs_fp32", "vs_int4", "vs_w4")}
        lo, hi = min(r["vs_int4"] for r in rs), max(r["vs_int4"] for r in rs)
        out(f"{f'{shape} M={m} {mode}':<24}{op:<16}{med['us']:>9.1f}{med['roof']:>8.0f}{med['vs_fp32']:>8.2f}"
            f"{med['vs_int4']:>8.2f}{f'[{lo:.2f}..{hi:.2f}]':>16}{med['vs_w4']:>11.2f}")


def plot(rows, path):
    """Bars of the speed-up over torch fp32, one panel per (shape, M, mode) cell (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys((r["shape"], r["M"], r["mode"]) for r in rows))
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.5), sharey=True, squeeze=False)
    for ax, cell in zip(axes[0], cells):
        cell_rows = [r for r in rows if (r["shape"], r["M"], r["mode"]) == cell]
        ax.bar([r["op"] for r in cell_rows], [r["vs_fp32"] for r in cell_rows])
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.set_title(f"{cell[0]} M={cell[1]} {cell[2]}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    axes[0][0].set_ylabel("speed-up vs torch fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one shape (14336->4096), M in {1, 8}: about a minute")
    p.add_argument("--cold-mib", type=float, default=None, help="size of the cold ring (default max(2 x L3, 960))")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per cell, at least")
    p.add_argument("--ops", nargs="+", default=None, help="only these ops (names as in the table, e.g. 'ours W4A8')")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes M (default 1 8 512)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run everything this many times (fresh rings each time) and print the medians")
    p.add_argument("--png", help="also write a bar chart of the speed-ups over torch fp32 (needs matplotlib)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="thread: CPU time of the calling thread (only meaningful with --threads 1)")
    args = p.parse_args(argv)
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread":
        if torch.get_num_threads() != 1:
            p.error("--clock thread needs --threads 1 (other threads' time would not be counted)")
        CLOCK = time.thread_time
    torch.manual_seed(0)
    cold = int((args.cold_mib or max(2 * l3_bytes() / 2**20, 960)) * 2**20)
    ops = OPS if args.ops is None else [op for op in OPS if op.name in args.ops]
    if not ops:
        p.error(f"--ops matched nothing; names: {', '.join(op.name for op in OPS)}")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    shapes, batches = ([(14336, 4096)], args.batches or [1, 8]) if args.quick else (SHAPES, args.batches or BATCHES)
    runs = [run(shapes, batches, ops, cold, 0.15 if args.quick else args.min_time) for _ in range(args.repeat)]
    rows = runs[-1]
    if args.repeat > 1:
        summarize(runs)
    if args.png:
        try:
            plot(rows, args.png)
        except ImportError:
            print("(no matplotlib: skipping the plot)")


if __name__ == "__main__":
    main()
