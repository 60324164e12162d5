"""The row-interleaved CPU layout (formats/cpu_interleave.py) and its op lowbit_linear_a8_interleaved (the
AVX512-VNNI GEMV where the CPU has it, the portable C++ path under every forced ISA; 2, 3, 4 and 8 bits), and
how QuantLinear uses it. The op must give lowbit_linear_a8's result for every bits/group/symmetry and activation dtype.

Shapes: N = 1000 and 17 (partial 16-row blocks), K = 100, 300, 576 (partial steps, groups and activation
blocks), M in {1, 3, 5, 8, 17} (batch rows are taken 4 at a time).
"""
import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.formats.cpu_interleave import (INTERLEAVE_BITS, ROWS, deinterleave_codes, deinterleave_weight,
                                                    interleave_codes, interleave_weight, step_codes)
from llmlite_kernels.formats.lowbit import SUPPORTED_GROUP_SIZES
from llmlite_kernels.nn.quant_linear import INTERLEAVED_MAX_ROWS, vnni_available
from llmlite_kernels.ops.reference import lowbit_linear_a8_interleaved_ref, lowbit_linear_a8_ref

from conftest import assert_close_rel
from test_cpu_kernels import isa, make  # noqa: F401  (isa: the fixture forcing each ISA path)

native = pytest.mark.skipif(L.kernel_for("cpu") != "cpu_cpp",
                            reason="llmlite_kernels._C is not built: " + L.backends()["cpu_cpp"]["why"])
vnni = pytest.mark.skipif(not vnni_available(), reason="this CPU (or the forced ISA) has no AVX512-VNNI")
op = torch.ops.llmlite.lowbit_linear_a8_interleaved


def interleaved(w, bits, group_size, k):
    iw = interleave_weight(*w, bits, group_size, k)
    return iw.weight, iw.scale, iw.zero


@pytest.mark.parametrize("bits", INTERLEAVE_BITS)
@pytest.mark.parametrize("group_size", SUPPORTED_GROUP_SIZES)
def test_interleave_round_trip(bits, group_size):
    for n, k in ((1000, 576), (17, 100), (16, 64)):
        packed, scale, zero = make(n, k, bits, group_size, symmetric=False)
        iw = interleave_weight(packed, scale, zero, bits, group_size, k)
        step = step_codes(bits)
        vectors = -(-k // step) * (3 if bits == 3 else 1)
        assert iw.weight.shape == (-(-n // ROWS), vectors, ROWS, 4) and iw.weight.dtype == torch.uint8
        back = deinterleave_weight(iw)
        assert torch.equal(back[0], packed) and torch.equal(back[1], scale.float()) and torch.equal(back[2], zero)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_interleave_layout_by_hand(bits):
    """Code k0 + 4p + j of row r sits in byte j of row r's 4 bytes of the step, at bits [p*bits, (p+1)*bits)."""
    step = step_codes(bits)
    codes = torch.randint(0, 1 << bits, (ROWS, 2 * step), dtype=torch.uint8)
    il = interleave_codes(codes, bits)
    for r, k in ((0, 0), (3, step - 1), (15, step + 5 % step), (7, 2 * step - 1)):
        s, off = divmod(k, step)
        p, j = divmod(off, 4)
        assert (int(il[0, s, r, j]) >> (p * bits)) & ((1 << bits) - 1) == int(codes[r, k])
    assert torch.equal(deinterleave_codes(il, bits, ROWS, 2 * step), codes)


def test_interleave_layout_by_hand_3bit():
    """W3 step of 32 codes: low 2 bits as W2 in vectors 0 (codes 0..15) and 1 (16..31); high bit of code
    4b + j in vector 2, byte j, bit b."""
    codes = torch.randint(0, 8, (ROWS, 64), dtype=torch.uint8)
    il = interleave_codes(codes, 3)
    assert il.shape == (1, 6, ROWS, 4)
    for r, k in ((0, 0), (5, 23), (15, 31), (9, 40), (2, 63)):
        s, off = divmod(k, 32)
        half, o = divmod(off, 16)
        low = (int(il[0, 3 * s + half, r, o % 4]) >> (2 * (o // 4))) & 3
        high = (int(il[0, 3 * s + 2, r, off % 4]) >> (off // 4)) & 1
        assert low + 4 * high == int(codes[r, k])
    assert torch.equal(deinterleave_codes(il, 3, ROWS, 64), codes)


def test_symmetric_weights_get_the_midpoint_zero():
    packed, scale, zero = make(20, 64, 4, 32, symmetric=True)
    iw = interleave_weight(packed, scale, zero, 4, 32, 64)
    assert zero is None and torch.all(iw.zero[:, :, :4] == 8)  # block 1: rows 16..19 real, the rest padding
    assert torch.all(iw.scale[1, :, 4:] == 0)  # padded rows contribute nothing


@native
@pytest.mark.parametrize("bits", INTERLEAVE_BITS)
@pytest.mark.parametrize("group_size", SUPPORTED_GROUP_SIZES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_matches_lowbit_linear_a8(isa, bits, group_size, symmetric):
    for n, k in ((1000, 576), (17, 300), (40, 100)):
        w = make(n, k, bits, group_size, symmetric)
        iw = interleaved(w, bits, group_size, k)
        bias = torch.randn(n)
        for m in (1, 3, 5, 8, 17) if n < 100 else (1, 3, 5, 8):  # any M runs (passes of 4 rows)
            x = torch.randn(m, k)
            b = bias if m % 2 else None
            out = op(x, *iw, b, bits, group_size, n)
            assert_close_rel(out, lowbit_linear_a8_ref(x, *w, b, bits, group_size), torch.float32)


@native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_activations_and_leading_dims(dtype):
    w = make(100, 300, 4, 64, False)
    iw = interleaved(w, 4, 64, 300)
    bias = torch.randn(100).to(dtype)
    x = torch.randn(2, 3, 300).to(dtype)
    out = op(x, *iw, bias, 4, 64, 100)
    assert out.dtype == dtype and out.shape == (2, 3, 100)
    assert_close_rel(out.float(), lowbit_linear_a8_ref(x, *w, bias, 4, 64).float(), dtype)


@native
def test_reference_and_empty_batch():
    w = make(33, 130, 8, -1, False)
    iw = interleaved(w, 8, -1, 130)
    x = torch.randn(4, 130)
    assert torch.equal(lowbit_linear_a8_interleaved_ref(x, *iw, None, 8, -1, 33), lowbit_linear_a8_ref(x, *w, None, 8, -1))
    assert op(torch.randn(0, 130), *iw, None, 8, -1, 33).shape == (0, 33)


@native
def test_opcheck():
    w = make(40, 200, 4, 128, False)
    iw = interleaved(w, 4, 128, 200)
    torch.library.opcheck(op, (torch.randn(3, 200), *iw, torch.randn(40), 4, 128, 40))


@native
def test_rejects_bad_input():
    """The C++ checks name the argument; the Python fake (meta) does the same."""
    w = make(20, 64, 4, 32, False)
    weight, scale, zero = interleaved(w, 4, 32, 64)
    x = torch.randn(2, 64)
    cases = [
        (lambda t: op(x.double(), weight, scale, zero, None, 4, 32, 20), TypeError, "x has dtype float64"),
        (lambda t: op(x, weight, scale, zero, None, 5, 32, 20), ValueError, "bits=5"),
        (lambda t: op(x, weight, scale, zero, None, 4, 48, 20), ValueError, "group_size=48"),
        (lambda t: op(x, weight, scale, zero, None, 4, 32, 40), ValueError, "weight has shape"),
        (lambda t: op(x, weight.int(), scale, zero, None, 4, 32, 20), TypeError, "weight has dtype int32"),
        (lambda t: op(x, weight, scale.half(), zero, None, 4, 32, 20), TypeError, "scale has dtype float16"),
        (lambda t: op(x, weight, scale, zero[:, :1].contiguous(), None, 4, 32, 20), ValueError, "zero has shape"),
        (lambda t: op(x, weight, scale, zero, torch.randn(3), 4, 32, 20), ValueError, "bias"),
        (lambda t: op(torch.randn(64, 2).t(), weight, scale, zero, None, 4, 32, 20), ValueError, "contiguous"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call(None)
        with pytest.raises(exc, match=match):  # the fake kernel, as torch.compile sees it
            with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
                call(None)


@native
@vnni
def test_quant_linear_decodes_on_the_interleaved_kernel():
    layer = L.QuantLinear.from_linear(torch.nn.Linear(300, 70), bits=4, group_size=64)
    layer.act_quant = "int8"
    x = torch.randn(3, 300)
    expected = torch.ops.llmlite.lowbit_linear_a8(x, layer.weight_packed, layer.weight_scale,
                                                  layer.weight_zero_point, layer.bias.detach(), 4, 64)
    with torch.no_grad():
        assert_close_rel(layer(x), expected, torch.float32)
        assert layer._interleaved[1] is not None  # built on first use, kept for the next call
        first = layer.cpu_interleaved()
        assert layer.cpu_interleaved() is first
        assert_close_rel(layer.frozen_forward()(x), expected, torch.float32)
        big = torch.randn(INTERLEAVED_MAX_ROWS + 1, 300)  # larger batches take lowbit_linear_a8
        assert_close_rel(layer.frozen_forward()(big), layer(big), torch.float32)
        layer.weight_packed.bitwise_xor_(0x11111111)  # new codes: the cached copy must be rebuilt
        changed = torch.ops.llmlite.lowbit_linear_a8(x, layer.weight_packed, layer.weight_scale,
                                                     layer.weight_zero_point, layer.bias.detach(), 4, 64)
        assert_close_rel(layer(x), changed, torch.float32)
        assert layer.cpu_interleaved() is not first
    # with a gradient wanted the layer keeps the op that has autograd
    out = layer(x.requires_grad_())
    out.sum().backward()
    assert x.grad is not None and layer.bias.grad is not None


def test_float_activations_never_interleave():
    layer = L.QuantLinear.from_linear(torch.nn.Linear(64, 16), bits=4, group_size=32)
    with torch.no_grad():
        layer(torch.randn(1, 64))
    assert getattr(layer, "_interleaved", None) is None
