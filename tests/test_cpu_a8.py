"""lowbit_linear_a8 (int8 activations): the reference's quantization, the CPU kernels (VNNI and the
fake-quant path of every ISA) against the reference, opcheck, autograd and QuantLinear(act_quant="int8").

Shapes: K = 200, 576, 1000 (not multiples of 128: a partial last activation block and weight group),
N = 1000, M in {1, 3, 17, 64} (the VNNI kernel takes 8 rows per pass; 64 runs the fake-quant GEMM).
"""
import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.formats import SUPPORTED_BITS
from llmlite_kernels.formats.lowbit import SUPPORTED_GROUP_SIZES
from llmlite_kernels.ops.reference import (dequantize_activations_int8, lowbit_linear_a8_ref, lowbit_linear_ref,
                                           quantize_activations_int8)

from conftest import assert_close_rel
from test_cpu_kernels import ISAS, check_linear, isa, make  # noqa: F401  (isa: the fixture forcing each ISA path)

native = pytest.mark.skipif(L.kernel_for("cpu") != "cpu_cpp",
                            reason="llmlite_kernels._C is not built: " + L.backends()["cpu_cpp"]["why"])


def check_a8(x, w, bias, bits, group_size):
    check_linear(x, w, bias, bits, group_size, op=torch.ops.llmlite.lowbit_linear_a8, ref_fn=lowbit_linear_a8_ref)


def test_activation_quantization_by_hand():
    x = torch.zeros(1, 130)
    x[0, 0], x[0, 1], x[0, 2], x[0, 127] = 2.54, -1.27, 0.01, 0.005  # block 0: max 2.54 -> scale 0.02
    x[0, 128], x[0, 129] = -0.5, 0.25  # block 1 (2 inputs): scale 0.5 / 127
    xq, sx = quantize_activations_int8(x)
    assert sx.shape == (1, 2) and xq.dtype == torch.int8
    assert torch.allclose(sx, torch.tensor([[0.02, 0.5 / 127]]))
    assert xq[0, :3].tolist() == [127, -64, 0]  # -63.5 rounds half to even: -64; 0.5 -> 0
    assert xq[0, 127].item() == 0 and xq[0, 128:].tolist() == [-127, 64]  # 63.5 -> 64
    assert torch.equal(quantize_activations_int8(torch.zeros(2, 5))[0], torch.zeros(2, 5, dtype=torch.int8))
    back = dequantize_activations_int8(xq, sx)
    assert (back - x).abs().max() <= 0.5 * 0.02 + 1e-7


def test_reference_is_lowbit_linear_of_the_quantized_activations():
    w = make(30, 300, 4, 128, False)
    x = torch.randn(5, 300)
    xhat = dequantize_activations_int8(*quantize_activations_int8(x))
    assert torch.allclose(lowbit_linear_a8_ref(x, *w, None, 4, 128), lowbit_linear_ref(xhat, *w, None, 4, 128))
    # the activation error is small next to the output
    assert_close_rel(lowbit_linear_a8_ref(x, *w, None, 4, 128), lowbit_linear_ref(x, *w, None, 4, 128), tol=2e-2)


@native
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("group_size", SUPPORTED_GROUP_SIZES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_a8_matches_reference(isa, bits, group_size, symmetric):
    for k in (200, 1000):
        w = make(1000, k, bits, group_size, symmetric)
        bias = torch.randn(1000)
        for m in (1, 3, 17, 64):
            check_a8(torch.randn(m, k), w, bias if m % 2 else None, bits, group_size)


@native
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_a8_half_activations_and_scale_dtypes(isa, x_dtype, scale_dtype, bits):
    """K = 4136 at group 128: 33 groups per row (scales converted 16 at a time, then a masked rest)."""
    w = make(101, 4136, bits, 128, bits == 8, scale_dtype)
    for m in (1, 8, 9):
        check_a8(torch.randn(m, 4136, dtype=x_dtype), w, torch.randn(101, dtype=x_dtype), bits, 128)


@native
def test_a8_path_is_exposed(isa):
    path = torch.ops.llmlite.cpu_a8_path
    vnni = isa == "avx512" and path(4, 128, 576) == "vnni"
    for bits, group, k in [(4, 128, 576), (2, 256, 1000), (8, -1, 200)]:
        assert path(bits, group, k) == ("vnni" if vnni else f"fake-quant+{isa}")
    for bits, group, k in [(3, 128, 576), (4, 64, 576), (4, 32, 200)]:
        assert path(bits, group, k) == f"fake-quant+{isa}"


@native
def test_a8_zero_rows_and_empty_batch():
    w = make(40, 256, 4, 128, False)
    x = torch.randn(3, 256)
    x[1] = 0
    out = torch.ops.llmlite.lowbit_linear_a8(x, *w, None, 4, 128)
    assert torch.equal(out[1], torch.zeros(40))
    assert torch.ops.llmlite.lowbit_linear_a8(torch.randn(0, 256), *w, None, 4, 128).shape == (0, 40)


@pytest.mark.parametrize("bits, group_size", [(4, 128), (3, 64), (8, -1)])
def test_a8_opcheck(bits, group_size):
    w = make(20, 300, bits, group_size, False)
    for x, bias in [(torch.randn(3, 300), torch.randn(20)), (torch.randn(2, 4, 300), None),
                    (torch.randn(3, 300, requires_grad=True), torch.randn(20, requires_grad=True))]:
        torch.library.opcheck(torch.ops.llmlite.lowbit_linear_a8, (x, *w, bias, bits, group_size))


def test_a8_bad_arguments():
    w = make(20, 300, 4, 128, False)
    with pytest.raises(TypeError, match="x"):
        torch.ops.llmlite.lowbit_linear_a8(torch.randn(2, 300).double(), *w, None, 4, 128)
    with pytest.raises(ValueError, match="bits"):
        torch.ops.llmlite.lowbit_linear_a8(torch.randn(2, 300), *w, None, 5, 128)
    with pytest.raises(ValueError):
        torch.ops.llmlite.lowbit_linear_a8(torch.randn(2, 200), *w, None, 4, 128)  # weight is for K=300


def test_quant_linear_act_quant_int8(tmp_path):
    linear = torch.nn.Linear(300, 50)
    layer = L.QuantLinear.from_linear(linear, bits=4, group_size=128)
    x = torch.randn(4, 300, requires_grad=True)
    float_out = layer(x)
    assert L.set_act_quant_(torch.nn.Sequential(layer)) == 1 and layer.act_quant == "int8"
    out = layer(x)
    ref = lowbit_linear_a8_ref(x.detach(), layer.weight_packed, layer.weight_scale, layer.weight_zero_point,
                               layer.bias.detach(), 4, 128)
    assert_close_rel(out.detach(), ref, torch.float32)
    assert not torch.equal(out, float_out)
    (gx,) = torch.autograd.grad(out.sum(), x)  # straight through the activation rounding
    assert torch.allclose(gx, layer.dequantize().sum(0).expand(4, -1), atol=1e-5)
    assert "act_quant=int8" in repr(layer) and L.QuantLinear.from_spec(layer.spec()).act_quant == "int8"
    with pytest.raises(ValueError, match="act_quant"):
        L.QuantLinear(300, 50, act_quant="int4")


def test_cli_compress_act_int8_saves_the_setting(tmp_path, monkeypatch, capsys):
    from llmlite_kernels import cli, models

    from tiny_models import tiny_model

    monkeypatch.setattr(models, "load_model", lambda path=None: (tiny_model("llama"), None))
    assert cli.main(["compress", "--act-int8", "--windows", "0", "--decode-tokens", "0",
                     "--output", str(tmp_path)]) == 0
    assert "A8" in capsys.readouterr().out
    loaded, _ = L.load(tmp_path)
    layers = [m for m in loaded.modules() if isinstance(m, L.QuantLinear)]
    assert layers and all(m.act_quant == "int8" for m in layers)


def test_cli_compress_defaults_int8_activations_where_vnni_runs_and_a_w8_head(tmp_path, monkeypatch, capsys):
    from llmlite_kernels import cli, models
    from llmlite_kernels.nn.quant_linear import vnni_available

    from tiny_models import tiny_model

    monkeypatch.setattr(models, "load_model", lambda path=None: (tiny_model("llama"), None))
    assert cli.main(["compress", "--windows", "0", "--decode-tokens", "0", "--output", str(tmp_path / "a")]) == 0
    loaded, _ = L.load(tmp_path / "a")
    assert isinstance(loaded.lm_head, L.QuantLinear) and loaded.lm_head.bits == 8
    assert ("A8" in capsys.readouterr().out) == vnni_available()
    assert all(m.act_quant == ("int8" if vnni_available() else None)
               for m in loaded.modules() if isinstance(m, L.QuantLinear))
    assert cli.main(["compress", "--float-act", "--lm-head-bits", "0", "--windows", "0", "--decode-tokens", "0",
                     "--output", str(tmp_path / "b")]) == 0
    loaded, _ = L.load(tmp_path / "b")
    assert isinstance(loaded.lm_head, torch.nn.Linear)
    assert all(m.act_quant is None for m in loaded.modules() if isinstance(m, L.QuantLinear))
