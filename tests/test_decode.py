"""LlamaDecoder: the greedy tokens and logits of transformers' Llama/Qwen2, fused projections, errors, decode_speed."""
import logging
from types import SimpleNamespace

import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.decode import LlamaDecoder, fuse_linears, greedy_generate, supports
from llmlite_kernels.eval import decode_speed

from conftest import assert_close_rel
from tiny_models import tiny_model

PROMPT_LEN, NEW_TOKENS = 7, 12


def prompt():
    return torch.randint(0, 128, (1, PROMPT_LEN))


def hf_greedy(model, ids, new_tokens=NEW_TOKENS):
    # eos_token_id=None: no stop at EOS, as LlamaDecoder (min_new_tokens would mask EOS out instead).
    out = model.generate(ids, do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def quantized(model, bits=4):
    return L.quantize_(model, L.QuantConfig(bits=bits, group_size=32), progress=False)


@pytest.mark.parametrize("kind,quant", [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True)],
                         ids=["llama-fp32", "llama-w4", "qwen2-fp32", "qwen2-w4"])
def test_greedy_tokens_match_hf_generate(kind, quant):
    model = tiny_model(kind)
    if quant:
        quantized(model)
    ids = prompt()
    assert supports(model)
    assert greedy_generate(model, ids, NEW_TOKENS) == hf_greedy(model, ids)


@pytest.mark.parametrize("quant", [False, True], ids=["fp32", "w4"])
def test_step_logits_match_hf_forward(quant):
    model = tiny_model("llama")
    if quant:
        quantized(model)
    ids = prompt()[0]
    decoder = LlamaDecoder(model, max_len=16)
    logits = [decoder.step(ids)]
    for token in (3, 17, 42):
        logits.append(decoder.step(torch.tensor([token])))
    logits.append(decoder.step(torch.tensor([5, 9])))  # several tokens after cached ones: the causal mask
    full = torch.cat([ids, torch.tensor([3, 17, 42, 5, 9])])
    with torch.no_grad():
        ref = model(full[None]).logits[0]
    for lean, end in zip(logits, (PROMPT_LEN, PROMPT_LEN + 1, PROMPT_LEN + 2, PROMPT_LEN + 3, PROMPT_LEN + 5)):
        assert_close_rel(lean, ref[end - 1], tol=1e-5)


@pytest.mark.parametrize("quant", [False, True], ids=["fp32", "w4"])
def test_one_fused_layer_per_attention_and_mlp(quant):
    model = tiny_model("llama")
    if quant:
        quantized(model)
    kind = L.QuantLinear if quant else torch.nn.Linear
    decoder = LlamaDecoder(model, max_len=16)
    for block in decoder.blocks:
        assert len(block.qkv) == 1 and type(block.modules["qkv"][0]) is kind
        assert len(block.gate_up) == 1 and type(block.modules["gate_up"][0]) is kind
    attn = model.model.layers[0].self_attn
    x = torch.randn(3, attn.q_proj.in_features)
    with torch.inference_mode():
        ref = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
        assert_close_rel(decoder.blocks[0].qkv[0](x), ref, tol=1e-6)


def test_fusion_skipped_for_mixed_layer_kinds():
    model = quantized(tiny_model("llama"))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    attn.k_proj = L.QuantLinear.from_linear(torch.nn.Linear(attn.k_proj.in_features, attn.k_proj.out_features), bits=8,
                                            group_size=32)
    mlp.up_proj = torch.nn.Linear(mlp.up_proj.in_features, mlp.up_proj.out_features)
    assert fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj]) is None
    assert fuse_linears([mlp.gate_proj, mlp.up_proj]) is None
    decoder = LlamaDecoder(model, max_len=32)
    assert len(decoder.blocks[0].qkv) == 3 and len(decoder.blocks[0].gate_up) == 2
    assert len(decoder.blocks[1].qkv) == 1 and len(decoder.blocks[1].gate_up) == 1
    ids = prompt()
    assert decoder.generate(ids, NEW_TOKENS) == hf_greedy(model, ids)


def test_errors_name_the_argument():
    model = tiny_model("llama")
    decoder = LlamaDecoder(model, max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):
        decoder.generate(torch.zeros(9, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="max_len=8"):
        decoder.generate(torch.zeros(5, dtype=torch.long), 5)  # 5 + 5 - 1 positions
    assert len(decoder.generate(torch.zeros(5, dtype=torch.long), 4)) == 4  # 5 + 4 - 1 fit
    with pytest.raises(ValueError, match="new_tokens=0"):
        decoder.generate(torch.zeros(5, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="input_ids"):
        decoder.generate(torch.zeros(2, 5, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="max_len=0"):
        LlamaDecoder(model, max_len=0)
    gpt2 = tiny_model("gpt2")
    assert not supports(gpt2)
    with pytest.raises(ValueError, match="model: model_type 'gpt2'"):
        LlamaDecoder(gpt2)


class FixedTokenizer:
    pad_token_id, eos_token_id = 0, 2

    def __call__(self, text, return_tensors="pt"):
        return SimpleNamespace(input_ids=torch.tensor([[1, 5, 7, 9]]))


@pytest.mark.parametrize("loop", ["lean", "hf", "auto"])
def test_decode_speed_loops(loop, caplog):
    with caplog.at_level(logging.INFO, logger="llmlite_kernels"):
        speed = decode_speed(tiny_model("llama"), FixedTokenizer(), new_tokens=6, loop=loop)
    assert isinstance(speed, float) and speed > 0
    assert ("lean" if loop == "auto" else loop) in caplog.text


def test_decode_speed_falls_back_to_generate(caplog):
    with pytest.raises(ValueError, match="loop='fast'"):
        decode_speed(tiny_model("llama"), FixedTokenizer(), loop="fast")
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        decode_speed(tiny_model("gpt2"), FixedTokenizer(), new_tokens=2, loop="lean")
    with caplog.at_level(logging.INFO, logger="llmlite_kernels"):
        assert decode_speed(tiny_model("gpt2"), FixedTokenizer(), new_tokens=2) > 0
    assert "hf (model.generate)" in caplog.text
