"""GPU benchmark of low-bit linear layers on Llama-3 shapes; prints, last, one table.

For every shape (Llama-3-8B: 4096->6144, 4096->4096, 4096->28672, 14336->4096; Llama-3-70B: 8192->57344,
28672->8192) and M in {1, 16, 64, 256, 2048}, every op of the registry: median µs with the L2 flushed
before each call (``triton.testing.do_bench``), achieved GB/s over the weight bytes (codes + scales + zero
points), % of the weight-bytes roofline (weight bytes / device-copy bandwidth measured in the same run),
and speed-up vs cuBLAS fp16 and vs torch's ``_weight_int4pack_mm`` (tinygemm, W4 g128, bf16) of the same run.

Registry: each op has ``name``, ``available()``, ``nbytes(k, n)`` (bytes of weight data one call must
read; ``bytes_per_weight(k)`` per weight element), an untimed ``prepare(k, n, m) -> state`` and a timed
``compute(*state)``. ``benchmarks/ops_cuda_cpp.py``, if present, adds its ``OPS`` (dense baselines skipped).

    python benchmarks/bench_gpu_lowbit.py [--quick] [--ops triton_w4 ...] [--csv f] [--json f] [--png f]
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmlite_kernels.formats.bitpack import packed_words  # noqa: E402
from llmlite_kernels.formats.lowbit import num_groups  # noqa: E402

SHAPES = {  # name: (K in_features, N out_features)
    "8B qkv": (4096, 6144), "8B o": (4096, 4096), "8B gate_up": (4096, 28672), "8B down": (14336, 4096),
    "70B gate_up": (8192, 57344), "70B down": (28672, 8192),
}
BATCHES = (1, 16, 64, 256, 2048)
DEVICE = "cuda"  # the ops' tensors (a CPU smoke test of this script sets "cpu", with TRITON_INTERPRET=1)
FP16_BASELINE = "cuBLAS fp16"
INT4_BASELINE = "torch int4pack W4 g128"


def _random_packed(k, n, bits, group_size, symmetric, scale_dtype, device=None):
    """Random codes (every bit pattern is a valid code), small scales, zero points: one stored layer."""
    device = device or DEVICE
    packed = torch.randint(-2**31, 2**31 - 1, (n, packed_words(k, bits)), dtype=torch.int32, device=device)
    groups = num_groups(k, group_size)
    scale = (torch.rand(n, groups, device=device) * 0.01 + 0.001).to(scale_dtype)
    zero = None if symmetric else torch.randint(0, 2**bits, (n, groups), dtype=torch.uint8, device=device)
    return packed, scale, zero


class CublasFp16:
    """Baseline: dense fp16 ``F.linear`` (cuBLAS)."""

    name = FP16_BASELINE

    def available(self):
        return torch.cuda.is_available()

    def bytes_per_weight(self, k):
        return 2.0

    def nbytes(self, k, n):
        return 2 * k * n

    def prepare(self, k, n, m):
        return (torch.randn(m, k, device=DEVICE, dtype=torch.float16),
                torch.randn(n, k, device=DEVICE, dtype=torch.float16) * 0.02)

    def compute(self, x, w):
        return F.linear(x, w)


class TorchInt4Pack:
    """Baseline: torch's built-in int4 kernel (tinygemm ``_weight_int4pack_mm``), W4 g128, bf16."""

    name = INT4_BASELINE
    group_size = 128

    def available(self):
        return torch.cuda.is_available() and hasattr(torch, "_weight_int4pack_mm")

    def bytes_per_weight(self, k):
        return 0.5 + 2 * 2 / self.group_size  # bf16 scale + bf16 zero per group

    def nbytes(self, k, n):
        return int(k * n * self.bytes_per_weight(k))

    def prepare(self, k, n, m):
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device=DEVICE)
        try:  # torch >= 2.5: uint8 [N, K/2], two codes per byte (high nibble first)
            packed = torch._convert_weight_to_int4pack((codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8), 8)
        except RuntimeError:  # older torch: int32 [N, K]
            packed = torch._convert_weight_to_int4pack(codes, 8)
        scales_and_zeros = (torch.rand(k // self.group_size, n, 2, device=DEVICE) * 0.01).to(torch.bfloat16)
        return torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16), packed, scales_and_zeros

    def compute(self, x, packed, scales_and_zeros):
        return torch._weight_int4pack_mm(x, packed, self.group_size, scales_and_zeros)


class TritonLowbit:
    """The Triton kernels (``llmlite_kernels.kernels``, chosen by M from the GPU's config table)."""

    def __init__(self, bits, group_size=128, symmetric=False, dtype=torch.float16, dispatched=False):
        self.bits, self.group_size, self.symmetric, self.dtype = bits, group_size, symmetric, dtype
        self.dispatched = dispatched  # True: the registered op (may pick the CUDA C++ kernel), as users call it
        g = "pc" if group_size == -1 else group_size
        self.name = f"{'op' if dispatched else 'triton'} W{bits} g{g}{'' if symmetric else ' asym'}"

    def available(self):
        from llmlite_kernels.ops import triton_backend
        return torch.cuda.is_available() and triton_backend.load()[0] is not None

    def bytes_per_weight(self, k):
        per_group = 2 + (0 if self.symmetric else 1)  # fp16 scale (+ uint8 zero point)
        return self.bits / 8 + per_group * num_groups(k, self.group_size) / k

    def nbytes(self, k, n):
        return int(k * n * self.bytes_per_weight(k))

    def prepare(self, k, n, m):
        packed, scale, zero = _random_packed(k, n, self.bits, self.group_size, self.symmetric, self.dtype)
        x = torch.randn(m, k, device=DEVICE, dtype=self.dtype)
        return x, packed, scale, zero, n

    def compute(self, x, packed, scale, zero, n):
        if self.dispatched:
            return torch.ops.llmlite.lowbit_linear(x, packed, scale, zero, None, self.bits, self.group_size)
        from llmlite_kernels.kernels import lowbit_linear_2d
        return lowbit_linear_2d(x, packed, scale, zero, None, self.bits, self.group_size, n)


def registry():
    ops = [CublasFp16(), TorchInt4Pack(),
           TritonLowbit(4, 128), TritonLowbit(4, 128, dispatched=True), TritonLowbit(4, 128, symmetric=True),
           TritonLowbit(8, 128), TritonLowbit(3, 128), TritonLowbit(2, 128), TritonLowbit(4, -1, symmetric=True)]
    for entry in ("ops_cuda_cpp", "ops_sparse24"):  # registry entry files of other op families
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{entry}.py")
        if not os.path.exists(path):
            continue
        spec = importlib.util.spec_from_file_location(entry, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ops += [op for op in getattr(module, "OPS", []) if not op.name.lower().startswith("cublas")]
    return ops


def copy_bandwidth_gbps(nbytes=2**30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second): the roofline's bandwidth."""
    from triton.testing import do_bench
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
    return 2 * nbytes / (ms * 1e-3) / 1e9


def time_us(op, k, n, m, rep_ms=40) -> float:
    """Median µs per call, L2 flushed before each call (triton.testing.do_bench)."""
    from triton.testing import do_bench
    state = op.prepare(k, n, m)
    op.compute(*state)  # compile / plan caches outside the timing
    ms = do_bench(lambda: op.compute(*state), warmup=5, rep=rep_ms, return_mode="median")
    del state
    return ms * 1e3


def run(shapes=SHAPES, batches=BATCHES, ops=None, log=print, budget_s=None):
    """Measure every op on every (shape, M); M-major order, so a run cut short by ``budget_s`` still has the
    small-M (decode) rows of every shape. Returns (header, rows sorted by shape then M)."""
    ops = [op for op in (ops or registry()) if op.available()]
    props = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth_gbps()
    header = (f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
              f"copy bandwidth {bw:.0f} GB/s (same run)")
    log(f"# {header}")
    rows = []
    deadline = None if budget_s is None else time.monotonic() + budget_s
    for m, (shape, (k, n)) in ((m, item) for m in batches for item in shapes.items()):
        if deadline is not None and time.monotonic() > deadline:
            log(f"  time budget of {budget_s:.0f} s spent: stopping before {shape} M={m}")
            break
        times = {}
        for op in ops:
            try:
                times[op.name] = time_us(op, k, n, m)
            except Exception as exc:  # an op that cannot run a case says so in the table
                log(f"  {op.name} {shape} M={m}: {type(exc).__name__}: {exc}".splitlines()[0][:160])
        for op in ops:
            if op.name not in times:
                continue
            us = times[op.name]
            weight_bytes = op.nbytes(k, n)
            rows.append(dict(
                shape=shape, K=k, N=n, M=m, op=op.name, us=us, gbps=weight_bytes / us / 1e3,
                roof_pct=100 * (weight_bytes / (bw * 1e3)) / us,
                x_fp16=times[FP16_BASELINE] / us if FP16_BASELINE in times else math.nan,
                x_int4pack=times[INT4_BASELINE] / us if INT4_BASELINE in times else math.nan,
            ))
        log(f"  {shape} M={m}: " + ", ".join(f"{name} {t:.1f}" for name, t in times.items()))
    order = {shape: i for i, shape in enumerate(shapes)}
    rows.sort(key=lambda r: (order[r["shape"]], r["M"]))  # stable: ops keep their registry order
    return header, rows


def format_table(header, rows) -> str:
    lines = [f"# {header}",
             f"{'shape':<12}{'M':>5}  {'op':<26}{'µs':>9}{'GB/s':>8}{'%roof':>7}{'x fp16':>8}{'x int4pk':>9}"]
    last = None
    for r in rows:
        if last is not None and (r["shape"], r["M"]) != last:
            lines.append("")
        last = (r["shape"], r["M"])
        lines.append(f"{r['shape']:<12}{r['M']:>5}  {r['op']:<26}{r['us']:>9.1f}{r['gbps']:>8.0f}"
                     f"{r['roof_pct']:>7.0f}{r['x_fp16']:>8.2f}{r['x_int4pack']:>9.2f}")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.5), sharey=True)
    for ax, shape in zip(axes if len(shapes) > 1 else [axes], shapes):
        for op in dict.fromkeys(r["op"] for r in rows):
            pts = [(r["M"], r["x_fp16"]) for r in rows if r["shape"] == shape and r["op"] == op]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=op)
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.set_title(shape)
        ax.set_xlabel("M")
    (axes[0] if len(shapes) > 1 else axes).set_ylabel("speed-up vs cuBLAS fp16")
    fig.legend(*(axes[0] if len(shapes) > 1 else axes).get_legend_handles_labels(), loc="lower center",
               ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8B o and 70B gate_up, M in {1, 16, 256}")
    p.add_argument("--ops", nargs="*", help="substrings of op names to run (baselines always run)")
    p.add_argument("--csv")
    p.add_argument("--json")
    p.add_argument("--png")
    p.add_argument("--budget-s", type=float, help="stop starting new (shape, M) cells after this many seconds")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_lowbit: needs a CUDA GPU")
    torch.manual_seed(0)
    ops = registry()
    if args.ops:
        ops = [op for op in ops if op.name in (FP16_BASELINE, INT4_BASELINE) or any(s in op.name for s in args.ops)]
    shapes, batches = SHAPES, BATCHES
    if args.quick:
        shapes, batches = {s: SHAPES[s] for s in ("8B o", "70B gate_up")}, (1, 16, 256)
    header, rows = run(shapes, batches, ops, budget_s=args.budget_s)
    if not rows:
        sys.exit("bench_gpu_lowbit: no results (time budget too small?)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    if args.png:
        try:
            plot(rows, args.png)
        except ImportError:
            print("(no matplotlib: skipping the plot)")
    print()
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
