"""AWQ: exact folding, scale search never worse than no scaling, quantize_ with awq and awq+gptq."""
import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.calibration import LinearInputStats, block_linears, decoder_blocks, sequential_blocks
from llmlite_kernels.quantization.awq import _group_loss, awq_scale_block, search_scale

from tiny_models import tiny_model, tokens


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_folded_scales_keep_the_full_precision_block(kind):
    model = tiny_model(kind)
    ids = tokens(2, 12)
    for index, block, inputs in sequential_blocks(model, ids, progress=False):
        linears = block_linears(block)
        with LinearInputStats(linears) as stats:
            before = torch.cat(inputs.run(block))
        applied = awq_scale_block(block, {n: stats.hessian(n) for n in linears}, {n: (3, 32) for n in linears},
                                  symmetric=False)
        after = torch.cat(inputs.run(block))
        assert "self_attn.q_proj" in applied and "mlp.down_proj" in applied
        assert "self_attn.o_proj" not in applied  # grouped-query attention: v_proj -> o_proj cannot fold
        assert (after - before).norm() / before.norm() < 1e-5
        break


def test_search_is_never_worse_than_no_scaling():
    k = 64
    x = torch.randn(500, k) * torch.linspace(0.1, 5, k)
    h = x.t() @ x / 500
    ws = [torch.randn(32, k), torch.randn(48, k)]
    settings = [(3, 32), (4, 32)]
    scale, alpha = search_scale(ws, h, settings, False, torch.float16)
    assert _group_loss(ws, h, scale, settings, False, torch.float16) <= _group_loss(
        ws, h, torch.ones(k), settings, False, torch.float16)


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="Llama/Qwen2"):
        L.quantize_(tiny_model("gpt2"), L.QuantConfig(method="awq", group_size=32, calib_windows=2),
                    calibration_texts=torch.randint(0, 128, (2, 8)), progress=False)


@pytest.mark.parametrize("method", ["awq", "awq+gptq"])
def test_quantize_with_awq(method):
    model = tiny_model("llama")
    ids = tokens(2, 12)
    with torch.no_grad():
        ref = model(ids).logits
    L.quantize_(model, L.QuantConfig(bits=4, group_size=32, method=method, calib_windows=4),
                calibration_texts=torch.randint(0, 128, (4, 16)), progress=False)
    assert sum(type(m).__name__ == "QuantLinear" for m in model.modules()) == 14
    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.2
