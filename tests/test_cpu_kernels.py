"""CPU C++ kernels (llmlite_kernels._C) against the reference, on every ISA path this CPU can run.

Each path is forced with LLMLITE_CPU_ISA (read by the kernel on every call). Shapes are chosen to not be
multiples of the kernels' blocks: K = 200 and 576 (not multiples of 64; 200 leaves a partial group and a
tail of 8 codes), N = 333 (row blocks of 8, thread split), M = 1, 3 (GEMV) and 17, 64 (tiled GEMM).
"""
import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.formats import SUPPORTED_BITS, quantize
from llmlite_kernels.formats.lowbit import SUPPORTED_GROUP_SIZES
from llmlite_kernels.ops import lowbit_dequantize_ref, lowbit_linear_ref

from conftest import assert_close_rel

pytestmark = pytest.mark.skipif(L.kernel_for("cpu") != "cpu_cpp",
                                reason="llmlite_kernels._C is not built: " + L.backends()["cpu_cpp"]["why"])

_ORDER = ("scalar", "avx2", "avx512")


def _cpu_isas():
    if L.kernel_for("cpu") != "cpu_cpp":
        return ["scalar"]
    widest = torch.ops.llmlite.cpu_isa()  # with LLMLITE_CPU_ISA unset: the widest this CPU supports
    return list(_ORDER[: _ORDER.index(widest) + 1])


ISAS = _cpu_isas()


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("LLMLITE_CPU_ISA", request.param)
    assert torch.ops.llmlite.cpu_isa() == request.param
    return request.param


def make(n, k, bits, group_size, symmetric, scale_dtype=torch.float16):
    p = quantize(torch.randn(n, k), bits, group_size, symmetric, scale_dtype=scale_dtype)
    return p.weight_packed, p.weight_scale, p.weight_zero_point


def check_linear(x, w, bias, bits, group_size, op=None, ref_fn=lowbit_linear_ref):
    """``op`` (default ``lowbit_linear``) against ``ref_fn`` at the tolerance of x's dtype."""
    op = op or torch.ops.llmlite.lowbit_linear
    out = op(x, *w, bias, bits, group_size)
    ref = ref_fn(x, *w, bias, bits, group_size)
    assert out.dtype == x.dtype
    assert_close_rel(out.float(), ref.float(), x.dtype)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("group_size", SUPPORTED_GROUP_SIZES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_linear_matches_reference_fp32(isa, bits, group_size, symmetric):
    for k in (200, 576):
        w = make(333, k, bits, group_size, symmetric)
        bias = torch.randn(333)
        for m in (1, 3, 17, 64):
            check_linear(torch.randn(m, k), w, bias if m % 2 else None, bits, group_size)


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_linear_half_activations_and_scale_dtypes(isa, x_dtype, scale_dtype, bits):
    w = make(101, 200, bits, 64, bits % 2 == 0, scale_dtype)
    for m in (1, 8, 9):
        check_linear(torch.randn(m, 200, dtype=x_dtype), w, torch.randn(101, dtype=x_dtype), bits, 64)


@pytest.mark.parametrize("m", list(range(1, 9)))
def test_every_gemv_batch_size(isa, m):
    """The GEMV kernels are instantiated per batch size 1..8: each one against the reference."""
    w = make(45, 300, 4, 32, False)
    check_linear(torch.randn(m, 300), w, torch.randn(45), 4, 32)


@pytest.mark.parametrize("k, group_size", [(1, -1), (20, 32), (31, -1), (33, 32), (4096 + 40, 256)])
def test_short_and_long_rows(isa, k, group_size):
    """Rows shorter than one 32-code chunk (tail only), one code past a chunk, and longer than a K slice."""
    for bits in SUPPORTED_BITS:
        w = make(19, k, bits, group_size, bits == 3)
        for m in (1, 5, 12):
            check_linear(torch.randn(m, k), w, torch.randn(19), bits, group_size)


def test_leading_dims_empty_batch_and_single_output(isa):
    w = make(7, 96, 4, 32, False)
    check_linear(torch.randn(2, 3, 96), w, None, 4, 32)
    assert torch.ops.llmlite.lowbit_linear(torch.randn(0, 96), *w, None, 4, 32).shape == (0, 7)
    assert torch.ops.llmlite.lowbit_linear(torch.randn(2, 0, 96), *w, None, 4, 32).shape == (2, 0, 7)
    check_linear(torch.randn(3, 96), make(1, 96, 3, -1, True), torch.randn(1), 3, -1)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("group_size", [32, 256, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_is_exact(bits, group_size, dtype):
    w = make(37, 300, bits, group_size, bits == 4)
    out = torch.ops.llmlite.lowbit_dequantize(*w, bits, group_size, 300, dtype)
    assert torch.equal(out, lowbit_dequantize_ref(*w, bits, group_size, 300, dtype))


def test_threads_do_not_change_the_result(isa):
    w = make(333, 576, 4, 128, False)
    x = torch.randn(3, 576)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.llmlite.lowbit_linear(x, *w, None, 4, 128)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, torch.ops.llmlite.lowbit_linear(x, *w, None, 4, 128))


@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 128, False), (3, 32, True), (8, -1, False),
                                                           (2, 64, True)])
def test_opcheck_cpu_kernel(bits, group_size, symmetric):
    w = make(40, 200, bits, group_size, symmetric)
    for x, bias in [(torch.randn(3, 200), torch.randn(40)), (torch.randn(2, 9, 200), None),
                    (torch.randn(2, 200, dtype=torch.bfloat16), torch.randn(40, dtype=torch.bfloat16))]:
        torch.library.opcheck(torch.ops.llmlite.lowbit_linear, (x, *w, bias, bits, group_size))
    torch.library.opcheck(torch.ops.llmlite.lowbit_dequantize, (*w, bits, group_size, 200, torch.bfloat16))


def test_isa_is_reported():
    assert f"isa={ISAS[-1]}" in L.backends()["cpu_cpp"]["why"]


def test_bad_isa_request_is_an_error(monkeypatch):
    w = make(8, 64, 4, 32, False)
    monkeypatch.setenv("LLMLITE_CPU_ISA", "neon")
    with pytest.raises(ValueError, match="LLMLITE_CPU_ISA=neon"):
        torch.ops.llmlite.lowbit_linear(torch.randn(1, 64), *w, None, 4, 32)


def test_cpu_kernel_rejects_bad_input():
    """The C++ checks (not only the Python fake) name the argument; none of these may crash."""
    packed, scale, zp = make(24, 64, 4, 32, False)
    x = torch.randn(3, 64)
    lin, deq = torch.ops.llmlite.lowbit_linear, torch.ops.llmlite.lowbit_dequantize
    cases = [
        (lambda: lin(x.double(), packed, scale, zp, None, 4, 32), TypeError, "x has dtype float64"),
        (lambda: lin(x, packed, scale, zp, None, 5, 32), ValueError, "bits=5"),
        (lambda: lin(x, packed, scale, zp, None, 4, 0), ValueError, "group_size=0"),
        (lambda: lin(x, packed, scale, zp, None, 4, 64), ValueError, "weight_scale has shape"),
        (lambda: lin(x, packed[:, :5].contiguous(), scale, zp, None, 4, 32), ValueError, "weight_packed has shape"),
        (lambda: lin(x, packed[::2], scale[::2], zp[::2], None, 4, 32), ValueError, "must be contiguous"),
        (lambda: lin(x, packed.view(torch.float32), scale, zp, None, 4, 32), TypeError, "weight_packed has dtype"),
        (lambda: lin(x, packed.reshape(-1), scale, zp, None, 4, 32), ValueError, "weight_packed must be 2-D"),
        (lambda: lin(x, packed, scale.to(torch.float64), zp, None, 4, 32), TypeError, "weight_scale has dtype"),
        (lambda: lin(x, packed, scale, zp.int(), None, 4, 32), TypeError, "weight_zero_point has dtype"),
        (lambda: lin(x, packed, scale, zp[:, :1].contiguous(), None, 4, 32), ValueError, "weight_zero_point has sh"),
        (lambda: lin(x, packed, scale, zp, torch.randn(23), 4, 32), ValueError, "bias has 23"),
        (lambda: lin(x, packed, scale, zp, torch.randn(2, 12), 4, 32), ValueError, "bias must be 1-D"),
        (lambda: lin(x, packed, scale, zp, torch.randn(24).half(), 4, 32), TypeError, "bias has dtype"),
        (lambda: lin(torch.randn(3, 0), packed, scale, zp, None, 4, 32), ValueError, "in_features must be >= 1"),
        (lambda: lin(torch.randn(64, 3).t(), packed, scale, zp, None, 4, 32), ValueError, "x must be contiguous"),
        (lambda: deq(packed, scale, zp, 4, 32, 65, torch.float32), ValueError, "weight_packed has shape"),
        (lambda: deq(packed, scale, zp, 7, 32, 64, torch.float32), ValueError, "bits=7"),
    ]
    for call, exc, words in cases:
        with pytest.raises(exc, match=words):
            call()
