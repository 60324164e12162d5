"""quantize_ on tiny transformers models (Llama, GPT-2, OPT, Qwen2), save/load, torch.compile."""
import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.models import iter_linears

from conftest import assert_close_rel
from tiny_models import KINDS, tiny_model, tokens


def dequantized_copy(model):
    """The model with every QuantLinear replaced by an nn.Linear holding its dequantized weight."""
    import copy

    from llmlite_kernels.models import set_submodule

    dense = copy.deepcopy(model)
    for name, m in list(dense.named_modules()):
        if isinstance(m, L.QuantLinear):
            lin = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = m.dequantize()
            if m.bias is not None:
                lin.bias.data = m.bias.data
            set_submodule(dense, name, lin)
    return dense


@pytest.mark.parametrize("kind", KINDS)
def test_quantize_swaps_every_linear_but_lm_head(kind):
    model = tiny_model(kind)
    n_linear = len(list(iter_linears(model, exclude=["lm_head"])))
    ids = tokens()
    with torch.no_grad():
        before = model(ids).logits
    L.quantize_(model, L.QuantConfig(bits=8, group_size=32), progress=False)
    quant = [n for n, m in model.named_modules() if isinstance(m, L.QuantLinear)]
    assert len(quant) == n_linear > 0 and not any("lm_head" in n for n in quant)
    assert not list(iter_linears(model, exclude=["lm_head"]))
    with torch.no_grad():
        after = model(ids).logits
        expected = dequantized_copy(model)(ids).logits
    assert_close_rel(after, expected, torch.float32, tol=1e-4)
    assert_close_rel(after, before, tol=0.05)  # 8-bit stays close to the original


def test_include_exclude_filters():
    model = tiny_model("llama")
    L.quantize_(model, L.QuantConfig(bits=4, group_size=32, include=[r"mlp\."], exclude=["down_proj", "lm_head"]),
                progress=False)
    quant = sorted(n for n, m in model.named_modules() if isinstance(m, L.QuantLinear))
    assert quant and all(("gate_proj" in n or "up_proj" in n) for n in quant)
    with pytest.raises(ValueError, match="no nn.Linear"):
        L.quantize_(tiny_model("llama"), L.QuantConfig(include=["nothing-matches"]), progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_bit_identical_logits(kind, tmp_path):
    model = tiny_model(kind)
    L.quantize_(model, L.QuantConfig(bits=3, group_size=64, symmetric=kind == "opt"), progress=False)
    ids = tokens()
    with torch.no_grad():
        expected = model(ids).logits
    L.save(model, tmp_path)
    loaded, tokenizer = L.load(tmp_path)
    assert tokenizer is None and type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    assert loaded.llmlite_quant_config["bits"] == 3


def test_corrupt_or_truncated_checkpoint_raises(tmp_path):
    model = tiny_model("llama")
    L.quantize_(model, L.QuantConfig(bits=4, group_size=32), progress=False)
    L.save(model, tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        L.load(tmp_path)
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        L.load(tmp_path)
    (tmp_path / "llmlite_config.json").write_text('{"format_version": 1, "lay')
    with pytest.raises(ValueError, match="corrupt or truncated"):
        L.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an llmlite checkpoint"):
        L.load(tmp_path / "missing")


def test_checkpoint_with_wrong_tensors_is_rejected(tmp_path):
    model = tiny_model("llama")
    L.quantize_(model, L.QuantConfig(bits=4, group_size=32), progress=False)
    L.save(model, tmp_path)
    other = tiny_model("llama")
    L.quantize_(other, L.QuantConfig(bits=4, group_size=32, exclude=["lm_head", "down_proj"]), progress=False)
    L.save(other, tmp_path / "other")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        L.load(tmp_path)


def test_compiled_quantized_model_matches_eager():
    model = tiny_model("llama")
    L.quantize_(model, L.QuantConfig(bits=4, group_size=32), progress=False)
    ids = tokens(1, 8)
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, fullgraph=True)(ids).logits
    assert_close_rel(compiled, eager, torch.float32, tol=1e-4)


def test_quantize_lm_head_keeps_the_tied_embedding_float(tmp_path):
    from llmlite_kernels.models import quantize_lm_head_

    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    embedding = model.model.embed_tokens.weight.detach().clone()
    ids = tokens()
    L.quantize_(model, progress=False)
    with torch.no_grad():
        ref = model(ids).logits
    quantize_lm_head_(model, bits=8, group_size=-1)
    assert isinstance(model.lm_head, L.QuantLinear) and model.lm_head.bits == 8
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    with torch.no_grad():
        out = model(ids).logits
    assert_close_rel(out, ref, tol=2e-2)  # a W8 head: close to the float head, not equal
    assert not torch.equal(out, ref)
    L.save(model, tmp_path)
    loaded, _ = L.load(tmp_path)
    assert isinstance(loaded.lm_head, L.QuantLinear)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out)
    with pytest.raises(ValueError, match="lm_head"):
        quantize_lm_head_(model)  # already a QuantLinear


def test_source_root_on_sys_path_does_not_shadow_the_pypi_kernels_package():
    """The checkout's ``kernels/`` folder is ``llmlite_kernels.kernels``; with the source root first on sys.path
    (``python -m pytest`` from the checkout) a top-level ``import kernels`` must not run our Triton code, and
    transformers (>= 5 imports the PyPI package ``kernels``) must still load its Llama model."""
    import importlib.metadata
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    code = ("import kernels; from transformers import LlamaForCausalLM; "
            "print(getattr(kernels, '__file__', None)); print(hasattr(kernels, 'lowbit_linear'))")
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    kernels_file, has_ours = run.stdout.split()[-2:]
    assert has_ours == "False", run.stdout
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return  # no PyPI ``kernels`` installed: the folder loads as an empty module, checked above
    assert not os.path.realpath(kernels_file).startswith(root), kernels_file
