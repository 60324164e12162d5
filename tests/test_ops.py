"""The registered ops: dispatched kernel vs reference, opcheck, autograd, torch.compile, bad input."""
import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.formats import SUPPORTED_BITS, quantize
from llmlite_kernels.ops import lowbit_dequantize_ref, lowbit_linear_ref

from conftest import assert_close_rel

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make(n, k, bits, group_size, symmetric, dtype=torch.float32):
    w = torch.randn(n, k)
    p = quantize(w, bits, group_size, symmetric, scale_dtype=torch.bfloat16 if dtype == torch.bfloat16 else None)
    return p, p.weight_packed, p.weight_scale, p.weight_zero_point


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_reference_is_dense_matmul_of_dequantized_weight(bits, group_size, symmetric):
    p, *w = make(40, 200, bits, group_size, symmetric)
    x, bias = torch.randn(3, 200), torch.randn(40)
    expected = x.double() @ p.dequantize().double().t() + bias.double()
    assert_close_rel(lowbit_linear_ref(x, *w, bias, bits, group_size), expected, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("shape", [(1, 72, 96), (3, 33, 200), (17, 50, 576)])
def test_dispatched_op_matches_reference(dtype, bits, shape):
    m, n, k = shape
    p, *w = make(n, k, bits, 64, bits % 2 == 1)
    x, bias = torch.randn(m, k, dtype=dtype), torch.randn(n, dtype=dtype)
    out = torch.ops.llmlite.lowbit_linear(x, *w, bias, bits, 64)
    assert out.dtype == dtype
    assert_close_rel(out, lowbit_linear_ref(x, *w, bias, bits, 64).float(), dtype)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_op_matches_format(bits, dtype):
    p, *w = make(30, 130, bits, 32, False)
    out = torch.ops.llmlite.lowbit_dequantize(*w, bits, 32, 130, dtype)
    assert out.dtype == dtype and torch.equal(out, p.dequantize().to(dtype))


def test_leading_dims_and_empty_batch():
    p, *w = make(24, 64, 4, 32, False)
    x = torch.randn(2, 5, 64)
    assert torch.ops.llmlite.lowbit_linear(x, *w, None, 4, 32).shape == (2, 5, 24)
    empty = torch.ops.llmlite.lowbit_linear(torch.randn(0, 64), *w, None, 4, 32)
    assert empty.shape == (0, 24)


@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 32, False), (3, -1, True), (8, 64, True), (2, 128, False)])
def test_opcheck(bits, group_size, symmetric):
    p, *w = make(20, 160, bits, group_size, symmetric)
    for x, bias in [(torch.randn(3, 160), torch.randn(20)), (torch.randn(2, 4, 160), None),
                    (torch.randn(3, 160, requires_grad=True), torch.randn(20, requires_grad=True))]:
        torch.library.opcheck(torch.ops.llmlite.lowbit_linear, (x, *w, bias, bits, group_size))
    torch.library.opcheck(torch.ops.llmlite.lowbit_dequantize, (*w, bits, group_size, 160, torch.float32))


def test_gradients_match_dense_autograd():
    p, *w = make(20, 96, 4, 32, False)
    x = torch.randn(2, 4, 96, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    out = torch.ops.llmlite.lowbit_linear(x, *w, bias, 4, 32)
    grad = torch.randn_like(out)
    gx, gb = torch.autograd.grad(out, (x, bias), grad)
    xd, bd = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    dense_out = torch.nn.functional.linear(xd, p.dequantize(), bd)
    ex, eb = torch.autograd.grad(dense_out, (xd, bd), grad)
    assert_close_rel(gx, ex, torch.float32)
    assert_close_rel(gb, eb, torch.float32)


def test_torch_compile_fullgraph():
    layer = L.QuantLinear.from_linear(torch.nn.Linear(96, 40), bits=4, group_size=32)
    x = torch.randn(5, 96)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    assert_close_rel(compiled(x), layer(x), torch.float32)


def test_bad_inputs_name_the_argument():
    p, packed, scale, zp = make(24, 64, 4, 32, False)
    x = torch.randn(3, 64)
    op = torch.ops.llmlite.lowbit_linear
    cases = [
        (lambda: op(x.to(torch.int32), packed, scale, zp, None, 4, 32), TypeError, "x has dtype int32"),
        (lambda: op(x, packed, scale, zp, None, 5, 32), ValueError, "bits=5"),
        (lambda: op(x, packed, scale, zp, None, 4, 48), ValueError, "group_size=48"),
        (lambda: op(torch.randn(64, 3).t(), packed, scale, zp, None, 4, 32), ValueError, "x must be contiguous"),
        (lambda: op(torch.randn(3, 65), packed, scale, zp, None, 4, 32), ValueError, "weight_packed has shape"),
        (lambda: op(x, packed.float(), scale, zp, None, 4, 32), TypeError, "weight_packed has dtype"),
        (lambda: op(x, packed, scale[:, :1].contiguous(), zp, None, 4, 32), ValueError, "weight_scale has shape"),
        (lambda: op(x, packed, scale, zp.int(), None, 4, 32), TypeError, "weight_zero_point has dtype"),
        (lambda: op(x, packed, scale, zp, torch.randn(23), 4, 32), ValueError, "bias has 23"),
        (lambda: op(x, packed, scale, zp, torch.randn(24, dtype=torch.float16), 4, 32), TypeError, "bias has dtype"),
        (lambda: op(x, packed.to("meta"), scale, zp, None, 4, 32), ValueError, "weight_packed is on meta"),
    ]
    for call, exc, words in cases:
        with pytest.raises(exc, match=words):
            call()


def test_backends_report_every_backend():
    info = L.backends()
    assert info["reference"]["active"] is True
    assert "cpu_cpp" in info and isinstance(info["cpu_cpp"]["why"], str)
    expected = "cpu_cpp" if info["cpu_cpp"]["active"] else "reference"
    assert L.kernel_for("cpu") == expected
