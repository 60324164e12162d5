"""GPTQ: the layer-output error it minimises, exact codes, act-order/static groups through save/load."""
import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.formats import unpack_codes
from llmlite_kernels.formats.lowbit import pack_weight, quantize_with_scales
from llmlite_kernels.quantization.gptq import gptq_candidates, gptq_quantize, output_error, rtn_error

from tiny_models import tiny_model, tokens


def _layer(n=40, k=96, tokens_=400):
    w = torch.randn(n, k)
    x = torch.randn(tokens_, k) @ torch.randn(k, k) * 0.3 + torch.randn(k)  # correlated inputs
    return w, x.t() @ x / tokens_


@pytest.mark.parametrize("bits,group,symmetric,act_order", [
    (4, 32, False, False), (3, 64, True, False), (4, -1, False, True), (2, 32, False, True), (8, 64, True, False),
    (4, 128, False, False),  # one partial group (k=96 < 128)
])
def test_gptq_beats_rtn_on_its_objective(bits, group, symmetric, act_order):
    w, h = _layer()
    result = gptq_quantize(w, h, bits, group, symmetric, act_order=act_order)
    assert result.error < rtn_error(w, h, bits, group, symmetric)
    assert result.error == pytest.approx(output_error(w, result.packed.dequantize(), h), rel=1e-4)


@pytest.mark.parametrize("act_order", [False, True])
def test_codes_round_trip_through_the_packed_format(act_order):
    w, h = _layer(k=100)  # k not a multiple of the group: partial last group
    r = gptq_quantize(w, h, 3, 32, False, act_order=act_order, clip_search=True)
    assert torch.equal(unpack_codes(r.packed.weight_packed, 3, 100), r.codes)
    dq = r.packed.dequantize()
    again = quantize_with_scales(dq, r.packed.weight_scale, r.packed.weight_zero_point, 3, 32)
    assert torch.equal(again, r.codes)
    assert torch.equal(pack_weight(dq, r.packed.weight_scale, r.packed.weight_zero_point, 3, 32).weight_packed,
                       r.packed.weight_packed)


def test_diagonal_hessian_gives_round_to_nearest():
    """With uncorrelated inputs no error is propagated: GPTQ (static groups) is RTN."""
    w = torch.randn(24, 64)
    h = torch.diag(torch.rand(64) + 0.5)
    r = gptq_quantize(w, h, 4, 32, False, damp=0.0, static_groups=True)
    assert torch.equal(r.packed.weight_packed, L.quantize(w, 4, 32, False).weight_packed)


def test_dead_inputs_and_bad_arguments():
    w, h = _layer(k=64)
    h[5, :] = 0
    h[:, 5] = 0
    r = gptq_quantize(w, h, 4, 32)
    assert torch.isfinite(r.packed.dequantize()).all()
    with pytest.raises(ValueError, match="static_groups"):
        gptq_quantize(w, h, 4, 32, act_order=True, static_groups=False)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(w, h, 4, 32, damp=1.5)
    with pytest.raises(ValueError, match="hessian"):
        gptq_quantize(w, h[:10, :10], 4, 32)


@pytest.mark.parametrize("field,value", [("method", "spqr"), ("damp", -0.1), ("act_order", 1), ("block_size", 0),
                                         ("calib_windows", 0), ("calib_seq_len", 1.5), ("avg_bits", 3.0),
                                         ("static_groups", "yes")])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        L.QuantConfig(**{field: value})
    with pytest.raises(ValueError, match="static_groups"):
        L.QuantConfig(method="gptq", act_order=True, static_groups=False)


def test_gptq_act_order_model_round_trips_through_save_load(tmp_path):
    model = tiny_model("llama")
    ids = tokens(2, 12)
    with torch.no_grad():
        ref = model(ids).logits
    calib = torch.randint(0, 128, (4, 16))
    L.quantize_(model, L.QuantConfig(bits=4, group_size=32, method="gptq", act_order=True, calib_windows=4),
                calibration_texts=calib, progress=False)
    assert all(type(m).__name__ == "QuantLinear" for n, m in model.named_modules() if n.endswith("_proj"))
    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.2
    L.save(model, str(tmp_path / "q"))
    loaded, _ = L.load(str(tmp_path / "q"))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out)
    assert loaded.llmlite_quant_config["act_order"] is True


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_candidates_equal_one_static_group_run_each(act_order):
    torch.manual_seed(1)
    w = torch.randn(24, 100)
    x = torch.randn(300, 100) * torch.rand(100) * 2
    h = x.T @ x / 300
    h[7, :] = h[:, 7] = 0  # a dead input column
    candidates = [(2, 32), (3, -1), (4, 64), (8, 32)]
    for (bits, group), (s, z, q) in zip(candidates, gptq_candidates(w, h, candidates, act_order=act_order,
                                                                     clip_search=True, block_size=32)):
        one = gptq_quantize(w, h, bits, group, act_order=act_order, static_groups=True, clip_search=True,
                            block_size=32).packed
        assert torch.equal(s, one.weight_scale) and torch.equal(z, one.weight_zero_point)
        assert torch.equal(q, one.dequantize(torch.float32))
