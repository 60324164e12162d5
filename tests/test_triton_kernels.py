"""Triton low-bit kernels (``llmlite_kernels.kernels``) against the reference ``lowbit_linear_ref``.

Without a GPU every kernel runs under TRITON_INTERPRET=1 (conftest sets it) on CPU tensors with tiny
block sizes; every buffer the launchers allocate is poisoned with NaN (``torch.empty`` patched), so an
element a kernel fails to write shows up as NaN. Tests marked ``cuda`` run the registered op at real sizes
(plus opcheck, torch.compile, CUDA graphs) and skip unless the Triton backend is registered for CUDA.
"""
import functools

import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.formats import SUPPORTED_BITS, quantize
from llmlite_kernels.formats.lowbit import SUPPORTED_GROUP_SIZES
from llmlite_kernels.ops import lowbit_linear_ref, triton_backend

from conftest import assert_close_rel

kernels, _why = triton_backend.load()
if kernels is None:
    pytest.skip(f"Triton kernels unavailable: {_why}", allow_module_level=True)

from llmlite_kernels.kernels import launch_params, linear_dispatch, tuned_configs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ACT_DTYPES = (torch.float16, torch.bfloat16)

# Tiny blocks keep the interpreter fast; block_k 64 > group 32 exercises the per-element scale gather,
# block_k <= group the per-tile scale path.
GEMV = {"block_m": 4, "block_n": 32, "block_k": 64, "split_k": 2, "num_warps": 4, "num_stages": 1}
GEMM = {"block_m": 16, "block_n": 32, "block_k": 64, "group_m": 2, "split_k": 1, "num_warps": 4, "num_stages": 1}
DEQUANT = {"block_n": 32, "block_k": 64, "num_warps": 4}


def _launch_gemv(x, p, bias, config=GEMV):
    return kernels.w_lowbit_gemv(x, p.weight_packed, p.weight_scale, p.weight_zero_point, bias, p.bits,
                                 p.group_size, config=config)


def _launch_gemm(x, p, bias, config=GEMM):
    return kernels.w_lowbit_gemm(x, p.weight_packed, p.weight_scale, p.weight_zero_point, bias, p.bits,
                                 p.group_size, config=config)


def _launch_dequant_matmul(x, p, bias, config=DEQUANT):
    table = {"dispatch": [{"max_m": None, "kernel": "dequant_matmul", "config": config}]}
    return kernels.lowbit_linear(x, p.weight_packed, p.weight_scale, p.weight_zero_point, bias, p.bits,
                                 p.group_size, table=table)


LINEAR_KERNELS = {"gemv": _launch_gemv, "gemm": _launch_gemm, "dequant_matmul": _launch_dequant_matmul}


@pytest.fixture(autouse=True)
def nan_buffers(monkeypatch):
    """Every float buffer from torch.empty (outputs, split-K partials) starts as NaN."""
    empty = torch.empty

    @functools.wraps(empty)
    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)


def make(n, k, bits, group_size, symmetric, dtype):
    w = torch.randn(n, k)
    p = quantize(w, bits, group_size, symmetric, scale_dtype=torch.bfloat16 if dtype == torch.bfloat16 else None)
    return p.to(DEVICE)


def inputs(m, k, n, dtype, bias=True):
    x = torch.randn(m, k, dtype=dtype, device=DEVICE)
    return x, (torch.randn(n, dtype=dtype, device=DEVICE) if bias else None)


def check(kernel, m, k, n, bits, group_size, symmetric, dtype, bias=True, **config):
    p = make(n, k, bits, group_size, symmetric, dtype)
    x, b = inputs(m, k, n, dtype, bias)
    launch = LINEAR_KERNELS[kernel]
    out = launch(x, p, b, config={**launch.__defaults__[0], **config}) if config else launch(x, p, b)
    assert out.dtype == dtype and out.shape == (m, n)
    ref = lowbit_linear_ref(x, p.weight_packed, p.weight_scale, p.weight_zero_point, b, bits, group_size)
    assert_close_rel(out, ref.float(), dtype)


def k_for(group_size, groups=3, extra=0):
    return (group_size if group_size > 0 else 32) * groups + extra


# Full cross product bits x group x symmetry x dtype, one small shape (M=3, K=3 groups, N=72), per kernel.
@pytest.mark.parametrize("dtype", ACT_DTYPES, ids=str)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group_size", SUPPORTED_GROUP_SIZES, ids=lambda g: f"g{g}")
@pytest.mark.parametrize("bits", SUPPORTED_BITS, ids=lambda b: f"w{b}")
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_linear_kernels_all_formats(kernel, bits, group_size, symmetric, dtype):
    check(kernel, 3, k_for(group_size), 72, bits, group_size, symmetric, dtype)


# Odd M/K/N: partial last group, K not a multiple of block_k, N not a multiple of block_n, both scale
# paths (block_k vs group), split-K on/off, fp32 activations, no bias.
ODD = [
    # kernel, M, K, N, bits, group, symmetric, dtype, bias, config
    ("gemv", 1, k_for(32, 3, 5), 72, 3, 32, False, torch.float16, True, {"block_k": 32}),
    ("gemv", 1, k_for(128, 2, 37), 72, 4, 128, True, torch.bfloat16, True, {"split_k": 3}),
    ("gemv", 17, 100, 37, 2, -1, False, torch.float32, False, {"split_k": 1}),
    ("gemv", 17, k_for(64, 3, 9), 72, 8, 64, True, torch.float16, False, {"block_k": 128, "split_k": 0}),
    ("gemv", 3, k_for(256, 1, 29), 41, 3, 256, True, torch.float32, True, {"block_m": 1, "block_k": 128}),
    ("gemv", 3, k_for(32, 3, 5), 72, 3, 32, True, torch.float16, True, {"block_k": 16}),  # 3-bit gather path
    ("gemm", 1, k_for(32, 3, 5), 72, 3, 32, True, torch.bfloat16, True, {"block_k": 32, "split_k": 2}),
    ("gemm", 17, k_for(64, 2, 3), 72, 3, 64, False, torch.float16, True, {"block_k": 16}),
    ("gemm", 17, k_for(128, 2, 37), 72, 4, 128, False, torch.float16, False, {"split_k": 0}),
    ("gemm", 17, 100, 37, 2, -1, True, torch.float32, True, {}),
    ("gemm", 3, k_for(64, 3, 9), 41, 8, 64, False, torch.float32, False, {"block_k": 128, "block_m": 32}),
    ("gemm", 33, k_for(256, 1, 29), 72, 3, 256, False, torch.float16, True, {"block_n": 16, "split_k": 2}),
    ("dequant_matmul", 17, k_for(32, 3, 5), 37, 3, 32, False, torch.float32, True, {"block_k": 32}),
    ("dequant_matmul", 3, k_for(128, 2, 37), 72, 4, 128, True, torch.bfloat16, False, {}),
    ("dequant_matmul", 1, 100, 72, 2, -1, False, torch.float16, True, {"block_n": 16}),
    ("dequant_matmul", 17, k_for(64, 3, 9), 41, 8, 64, True, torch.float32, True, {"block_k": 128}),
]


@pytest.mark.parametrize("kernel, m, k, n, bits, group_size, symmetric, dtype, bias, config", ODD,
                         ids=[f"{c[0]}-M{c[1]}K{c[2]}N{c[3]}-w{c[4]}g{c[5]}-{'sym' if c[6] else 'asym'}-{c[7]}"
                              for c in ODD])
def test_linear_kernels_odd_shapes(kernel, m, k, n, bits, group_size, symmetric, dtype, bias, config):
    check(kernel, m, k, n, bits, group_size, symmetric, dtype, bias, **config)


@pytest.mark.parametrize("bits", SUPPORTED_BITS, ids=lambda b: f"w{b}")
@pytest.mark.parametrize("group_size, k", [(32, 101), (256, 300), (-1, 100)], ids=["g32", "g256", "gch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dequantize_kernel_is_exact(bits, group_size, k, dtype):
    p = make(37, k, bits, group_size, bits % 2 == 0, dtype)
    out = kernels.w_lowbit_dequantize(p.weight_packed, p.weight_scale, p.weight_zero_point, bits, group_size, k,
                                      dtype, config=DEQUANT)
    # (q - z) * s in fp32 then one rounding: the same arithmetic as the format's reference dequantization.
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        # The interpreter's fp32 -> bf16 cast truncates instead of rounding to nearest: allow one bf16 ulp.
        torch.testing.assert_close(out.float(), p.dequantize(dtype).float(), rtol=2.0**-7, atol=0)
    else:
        assert torch.equal(out, p.dequantize(dtype))


def test_one_hot_activations_decode_every_code_exactly():
    """x = e_k picks column k of the dequantized weight: a bit-exact check of the unpacking (3-bit straddles)."""
    k = 3 * 32 + 7
    for bits in SUPPORTED_BITS:
        p = make(40, k, bits, 32, False, torch.float32)
        x = torch.eye(k, device=DEVICE)[:17]
        for launch in (_launch_gemv, _launch_gemm):
            out = launch(x, p, None)
            assert torch.equal(out, p.dequantize()[:, :17].t()), (bits, launch.__name__)


def test_leading_dims_and_empty_batch():
    p = make(40, 96, 4, 32, False, torch.float16)
    x, b = inputs(6, 96, 40, torch.float16)
    out = kernels.lowbit_linear(x.reshape(2, 3, 96), p.weight_packed, p.weight_scale, p.weight_zero_point, b, 4, 32,
                                table=_table(gemv=GEMV))
    ref = lowbit_linear_ref(x, p.weight_packed, p.weight_scale, p.weight_zero_point, b, 4, 32)
    assert_close_rel(out.reshape(6, 40), ref.float(), torch.float16)
    for launch in LINEAR_KERNELS.values():
        assert launch(x[:0], p, b).shape == (0, 40)


def _table(gemv=GEMV, gemm=GEMM, dequant=DEQUANT, gemv_max_m=2, gemm_max_m=8):
    return tuned_configs.validate({
        "dispatch": [{"max_m": gemv_max_m, "kernel": "gemv", "config": gemv},
                     {"max_m": gemm_max_m, "kernel": "gemm", "config": gemm},
                     {"max_m": None, "kernel": "dequant_matmul", "config": dequant}],
        "dequantize": dequant,
    })


@pytest.mark.parametrize("m, expected", [(1, "gemv"), (2, "gemv"), (3, "gemm"), (8, "gemm"), (9, "dequant_matmul")])
def test_dispatch_by_m_runs_the_chosen_kernel(m, expected, monkeypatch):
    table = _table()
    assert tuned_configs.choose(table, m, 4, 32)[0] == expected
    ran = []
    for name, runner in list(linear_dispatch.RUNNERS.items()):
        monkeypatch.setitem(linear_dispatch.RUNNERS, name,
                            lambda *a, _n=name, _r=runner: ran.append(_n) or _r(*a))
    p = make(40, 96, 4, 32, True, torch.float16)
    x, b = inputs(m, 96, 40, torch.float16)
    out = kernels.lowbit_linear(x, p.weight_packed, p.weight_scale, p.weight_zero_point, b, 4, 32, table=table)
    assert ran == [expected]
    assert_close_rel(out, lowbit_linear_ref(x, p.weight_packed, p.weight_scale, p.weight_zero_point, b, 4, 32).float(),
                     torch.float16)


def test_dispatch_rules_filter_by_bits_and_group():
    table = {"dispatch": [{"max_m": 16, "bits": [3], "kernel": "gemm"},
                          {"max_m": 16, "group_sizes": [-1], "kernel": "dequant_matmul"},
                          {"max_m": None, "kernel": "gemv"}]}
    tuned_configs.validate(table)
    assert tuned_configs.choose(table, 4, 3, 128)[0] == "gemm"
    assert tuned_configs.choose(table, 4, 4, -1)[0] == "dequant_matmul"
    assert tuned_configs.choose(table, 4, 4, 128)[0] == "gemv"
    assert tuned_configs.choose(table, 17, 3, -1)[0] == "gemv"
    assert tuned_configs.prefers_cuda_cpp({"prefer_cuda_cpp": [{"max_m": 64, "bits": [4]}]}, 64, 4, 128)
    assert not tuned_configs.prefers_cuda_cpp({"prefer_cuda_cpp": [{"max_m": 64, "bits": [4]}]}, 65, 4, 128)
    assert not tuned_configs.prefers_cuda_cpp({}, 1, 4, 128)
    assert not tuned_configs.prefers_cuda_cpp({"prefer_cuda_cpp": [{"max_m": 64, "min_m": 16}]}, 4, 4, 128)


def test_shipped_config_tables_are_valid():
    import glob
    import os
    paths = glob.glob(os.path.join(tuned_configs.CONFIG_DIR, "*.json"))
    assert any(path.endswith("default.json") for path in paths)
    for path in paths:
        table = tuned_configs.load(path)
        for rule in table["dispatch"]:
            block_k = rule.get("config", {}).get("block_k")
            if block_k is not None:
                for bits in SUPPORTED_BITS:
                    launch_params.check_block_k(block_k, bits)
    assert tuned_configs.gpu_slug("NVIDIA H200") == "nvidia_h200"
    assert tuned_configs.config_path("No Such GPU 9000").endswith("default.json")


@pytest.mark.parametrize("bad, match", [
    ({"dispatch": []}, "non-empty"),
    ({"dispatch": [{"max_m": None, "kernel": "cublas"}]}, "kernel"),
    ({"dispatch": [{"max_m": 4, "kernel": "gemv"}]}, "last dispatch rule"),
    ({"dispatch": [{"max_m": None, "kernel": "gemm", "config": {"blockk": 64}}]}, "unknown config keys"),
])
def test_bad_config_table_is_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        tuned_configs.validate(bad)


def test_split_k_choice():
    assert launch_params.split_k_for(tiles=3, k_blocks=10, sms=4) == (3, 4)  # ceil(8/3)=3 splits of 4 blocks
    assert launch_params.split_k_for(tiles=100, k_blocks=10, sms=4) == (1, 10)
    assert launch_params.split_k_for(tiles=1, k_blocks=2, sms=132) == (2, 1)  # never more splits than blocks
    assert launch_params.split_k_for(tiles=1, k_blocks=10, sms=4, requested=4) == (4, 3)
    assert launch_params.split_k_for(tiles=1, k_blocks=9, sms=4, requested=4) == (3, 3)  # no empty split


def test_bad_arguments_raise_clear_errors():
    p = make(40, 96, 4, 32, False, torch.float16)
    x, b = inputs(3, 96, 40, torch.float16)
    w = (p.weight_packed, p.weight_scale, p.weight_zero_point)
    with pytest.raises(ValueError, match="block_k"):
        kernels.w_lowbit_gemv(x, *w, b, 4, 32, config={"block_k": 48})
    with pytest.raises(ValueError, match="block_m"):
        kernels.w_lowbit_gemm(x, *w, b, 4, 32, config={"block_m": 8})
    with pytest.raises(TypeError, match="x has dtype"):
        kernels.w_lowbit_gemv(x.to(torch.int32), *w, b, 4, 32)
    with pytest.raises(ValueError, match="bits"):
        kernels.w_lowbit_gemm(x, *w, b, 5, 32)
    with pytest.raises(ValueError, match="weight_packed"):
        kernels.w_lowbit_gemv(x[:, :64].contiguous(), *w, b, 4, 32)
    with pytest.raises(TypeError, match="bias"):
        kernels.w_lowbit_gemv(x, *w, b.float(), 4, 32)



@pytest.mark.parametrize("act, scale", [(torch.float16, torch.float32), (torch.float16, torch.bfloat16),
                                        (torch.bfloat16, torch.float16), (torch.float32, torch.float32)],
                         ids=str)
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_scale_dtype_independent_of_activation_dtype(kernel, act, scale):
    p = quantize(torch.randn(40, 100), 3, 32, False, scale_dtype=scale).to(DEVICE)
    x, b = inputs(5, 100, 40, act)
    ref = lowbit_linear_ref(x, p.weight_packed, p.weight_scale, p.weight_zero_point, b, 3, 32)
    assert_close_rel(LINEAR_KERNELS[kernel](x, p, b), ref.float(), act)


class _FakeCpp:
    """Stands in for ops/cuda_cpp_backend.py: records calls, supports only 4-bit."""

    def __init__(self):
        self.calls = []

    def supports(self, bits, group_size, symmetric, dtype, M, N, K):
        return bits == 4

    def lowbit_linear(self, x, *args):
        self.calls.append(x.shape[0])
        return lowbit_linear_ref(x, *args)


@pytest.mark.parametrize("m, bits, expect", [(1, 4, "cpp"), (64, 4, "cpp"), (65, 4, "triton"), (1, 3, "triton")])
def test_cuda_impl_prefers_cuda_cpp_where_the_table_says(m, bits, expect, monkeypatch):
    """ops/cuda.py's per-call choice (run here on CPU tensors: the Triton side under the interpreter)."""
    from llmlite_kernels.ops import cuda as cuda_ops
    table = {**_table(gemv_max_m=2, gemm_max_m=128), "prefer_cuda_cpp": [{"max_m": 64}]}
    monkeypatch.setattr(tuned_configs, "table_for", lambda device: table)
    cpp = _FakeCpp()
    linear, dequantize = cuda_ops._make_impls(kernels, cpp)
    p = make(40, 96, bits, 32, False, torch.float16)
    w = (p.weight_packed, p.weight_scale, p.weight_zero_point)
    x, b = inputs(m, 96, 40, torch.float16)
    out = linear(x.reshape(1, m, 96), *w, b, bits, 32)
    assert cpp.calls == ([m] if expect == "cpp" else [])
    assert_close_rel(out.reshape(m, 40), lowbit_linear_ref(x, *w, b, bits, 32).float(), torch.float16)
    assert torch.equal(dequantize(*w, bits, 32, 96, torch.float32), p.dequantize())


def test_cuda_impl_without_triton_uses_cuda_cpp_or_the_reference():
    from llmlite_kernels.ops import cuda as cuda_ops
    cpp = _FakeCpp()
    linear, dequantize = cuda_ops._make_impls(None, cpp)
    for bits, calls in [(4, [3]), (3, [3])]:  # 3-bit: unsupported by the C++ kernel -> reference
        p = make(40, 96, bits, 32, True, torch.float32)
        w = (p.weight_packed, p.weight_scale, p.weight_zero_point)
        x, b = inputs(3, 96, 40, torch.float32)
        assert_close_rel(linear(x, *w, b, bits, 32), lowbit_linear_ref(x, *w, b, bits, 32), torch.float32)
        assert cpp.calls == calls
    assert torch.equal(dequantize(*w, 3, 32, 96, torch.float32), p.dequantize())


def test_backend_status_is_reported():
    status = L.backends()["triton"]
    assert isinstance(status["active"], bool) and status["why"]
    if status["active"]:  # registered: the CUDA key runs ops/cuda.py
        assert L.kernel_for("cuda") == "cuda"
    if not torch.cuda.is_available():
        assert not status["active"] and "no CUDA device" in status["why"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU session runs the real benchmark")
def test_gpu_benchmark_script_runs_on_the_interpreter(monkeypatch, capsys):
    """Smoke test of benchmarks/bench_gpu_lowbit.py on CPU tensors (timings faked): registry, table, JSON."""
    import importlib.util
    import json
    import os
    import types

    import triton.testing

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "bench_gpu_lowbit.py")
    spec = importlib.util.spec_from_file_location("bench_gpu_lowbit", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.undo()  # real torch.empty: the benchmark allocates freely
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: (fn(), 0.01)[1])
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="interpreter", multi_processor_count=4))
    ops = [bench.CublasFp16(), bench.TorchInt4Pack(), bench.TritonLowbit(4, 128), bench.TritonLowbit(3, 128)]
    for op in ops:
        monkeypatch.setattr(op, "available", lambda: True)
    # tinygemm is CUDA-only: stand-in prepare/compute keep its column (and the x int4pack speed-ups).
    monkeypatch.setattr(bench.TorchInt4Pack, "prepare", lambda self, k, n, m: ())
    monkeypatch.setattr(bench.TorchInt4Pack, "compute", lambda self: None)
    header, rows = bench.run({"tiny": (256, 72)}, (1, 17), ops, log=lambda *a: None)
    assert len(rows) == 2 * len(ops)
    assert {r["op"] for r in rows} == {op.name for op in ops}
    assert all(r["x_fp16"] == 1.0 and r["us"] == 10.0 for r in rows)
    table = bench.format_table(header, rows)
    assert "triton W3 g128 asym" in table and "%roof" in table and "x int4pk" in table
    json.dumps(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU session runs the real autotune")
def test_autotune_writes_a_valid_table_on_the_interpreter(monkeypatch, tmp_path):
    """kernels/autotune.py end to end on CPU tensors, timings faked (a random draw per config)."""
    import json
    import random

    import triton.testing

    from llmlite_kernels.kernels import autotune

    monkeypatch.undo()
    rng = random.Random(0)
    monkeypatch.setattr(autotune, "DEVICE", "cpu")
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: (fn(), rng.random())[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Interpreter GPU")
    monkeypatch.setattr(autotune, "SHAPES", [(256, 40)])
    monkeypatch.setattr(autotune, "GEMV_M1", autotune.GEMV_M1[:2])  # fewer candidates: the interpreter is slow
    monkeypatch.setattr(autotune, "GEMV_SMALL", [c for c in autotune.GEMV_SMALL if c["block_k"] == 32])
    monkeypatch.setattr(autotune, "GEMM", [c for c in autotune.GEMM if c["block_n"] == 64][:2])
    monkeypatch.setattr(autotune, "LARGE_M", (64, 96))
    out = tmp_path / "table.json"
    assert autotune.main(["--out", str(out)]) == 0
    table = tuned_configs.validate(json.loads(out.read_text()))
    assert table["gpu"] == "Interpreter GPU"
    assert [r["bits"] for r in table["dispatch"][:4]] == [[4], [8], [3], [2]]
    p = make(40, 96, 4, 32, False, torch.float16)
    for m in (1, 3, 16, 100):  # the tuned table drives the launchers
        x, b = inputs(m, 96, 40, torch.float16)
        out_m = kernels.lowbit_linear(x, p.weight_packed, p.weight_scale, p.weight_zero_point, b, 4, 32, table=table)
        ref = lowbit_linear_ref(x, p.weight_packed, p.weight_scale, p.weight_zero_point, b, 4, 32)
        assert_close_rel(out_m, ref.float(), torch.float16)

# ---------------------------------------------------------------------------------------------- GPU only

def _cuda_registered():
    return torch.cuda.is_available() and L.backends().get("triton", {}).get("active", False)


cuda = pytest.mark.skipif(not _cuda_registered(), reason="Triton backend not registered for CUDA (no GPU)")


# (bits, activation dtype, extra format): every bits at fp16, bf16 for two; g128 asymmetric always, plus
# one more group/symmetry per case. Kept small: every combination is a Triton compile (~1 s) on the GPU.
REAL_SIZE_CASES = [(2, torch.float16, (32, True)), (3, torch.float16, (64, False)), (4, torch.float16, (-1, True)),
                   (8, torch.float16, (256, False)), (4, torch.bfloat16, (32, False)), (3, torch.bfloat16, (-1, True))]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("bits, dtype, extra", REAL_SIZE_CASES, ids=lambda c: str(c))
def test_cuda_op_real_sizes(bits, dtype, extra):
    for (group_size, symmetric), (k, n) in [((128, False), (4096, 1536)), (extra, (1000, 2056))]:
        p = make(n, k, bits, group_size, symmetric, dtype)
        w = (p.weight_packed, p.weight_scale, p.weight_zero_point)
        for m in (1, 5, 16, 64, 300, 2100):  # every rule of the default table
            x, b = inputs(m, k, n, dtype)
            ref = lowbit_linear_ref(x, *w, b, bits, group_size).float()
            assert_close_rel(torch.ops.llmlite.lowbit_linear(x, *w, b, bits, group_size), ref, dtype)
            if m in (16, 300):  # each kernel at real size with its default config
                for launch in LINEAR_KERNELS.values():
                    assert_close_rel(launch(x, p, b, config={}), ref, dtype)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 128, False), (3, 32, True), (8, -1, True), (2, 64, False)])
def test_cuda_opcheck(bits, group_size, symmetric, monkeypatch):
    monkeypatch.undo()  # plain torch.empty while opcheck traces with fake tensors
    p = make(264, 1000, bits, group_size, symmetric, torch.float16)
    w = (p.weight_packed, p.weight_scale, p.weight_zero_point)
    for m in (1, 40, 1100):
        x, b = inputs(m, 1000, 264, torch.float16)
        torch.library.opcheck(torch.ops.llmlite.lowbit_linear, (x, *w, b, bits, group_size))
    torch.library.opcheck(torch.ops.llmlite.lowbit_dequantize, (*w, bits, group_size, 1000, torch.float16))


@pytest.mark.cuda
@cuda
def test_cuda_torch_compile_fullgraph_and_cuda_graph(monkeypatch):
    monkeypatch.undo()  # plain torch.empty under dynamo and graph capture
    p = make(1024, 512, 4, 128, False, torch.float16)
    w = (p.weight_packed, p.weight_scale, p.weight_zero_point)
    x, b = inputs(4, 512, 1024, torch.float16)
    ref = lowbit_linear_ref(x, *w, b, 4, 128).float()

    def f(x):
        return torch.ops.llmlite.lowbit_linear(x, *w, b, 4, 128) * 2

    assert_close_rel(torch.compile(f, fullgraph=True)(x), 2 * ref, torch.float16)
    for m in (1, 16, 64):  # one per kernel family; warm up (compile) before capture
        xs = torch.randn(m, 512, dtype=torch.float16, device="cuda")
        f(xs)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = f(xs)
        xs.copy_(torch.randn_like(xs))
        graph.replay()
        torch.cuda.synchronize()
        assert_close_rel(out, 2 * lowbit_linear_ref(xs, *w, b, 4, 128).float(), torch.float16)



# ------------------------------------------------------------------ compiles for the GPU (no GPU needed)

CASES_COMPILED = ["gemv-w3-asym-bf16", "gemv-w4-sym-fp16-m1", "gemm-w4-sym-fp16", "gemm-w3-asym-bf16-g32",
                  "gemm-w8-fp32", "dequant-w2-per-channel", "splitk-reduce"]


def test_kernels_compile_for_sm90():
    """Ahead-of-time compile to an sm_90 cubin (outside the interpreter): no interpreter-only constructs."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia", reason="triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", "import llmlite_kernels.ops.triton_backend as t; t.load();"
                          "from llmlite_kernels.kernels import aot_check; aot_check.main([])"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("cubin") == len(CASES_COMPILED), run.stdout
