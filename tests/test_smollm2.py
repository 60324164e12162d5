"""The real default model: the perplexity protocol, W4/W8 quality, and the main job end to end."""
import subprocess
import sys

import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.eval import TEST_FILE, data_file, perplexity, read_text, token_windows, wikitext_perplexity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return L.load_model()


@pytest.fixture(scope="module")
def windows(smollm2):
    return token_windows(smollm2[1], read_text(data_file(TEST_FILE)), 512, 40)


def test_fp32_perplexity_follows_the_protocol(smollm2, windows):
    model, tokenizer = smollm2
    assert windows.shape == (40, 512)
    text = read_text(data_file(TEST_FILE))
    assert "\r\n" in text or "\n" in text  # read as it is, newline="" keeps CRLF
    result = perplexity(model, windows, progress=False)
    assert result.tokens == 40 * 511
    assert abs(result.ppl - 28.62) < 0.05, result.ppl  # the project's fp32 figure for this protocol


@pytest.mark.parametrize("config, max_ratio", [
    (L.QuantConfig(bits=4, group_size=128, symmetric=False), 1.5),
    (L.QuantConfig(bits=8, group_size=-1, symmetric=True), 1.01),
])
def test_quantized_perplexity_stays_close(smollm2, windows, config, max_ratio):
    import copy

    model = copy.deepcopy(smollm2[0])
    base = perplexity(model, windows[:6], progress=False).ppl
    L.quantize_(model, config, progress=False)
    ppl = perplexity(model, windows[:6], progress=False).ppl
    assert base <= ppl <= max_ratio * base, (base, ppl)
    elements = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, L.QuantLinear))
    nbytes = sum(m.packed.nbytes for m in model.modules() if isinstance(m, L.QuantLinear))
    if config.bits == 4:
        assert nbytes / (2 * elements) <= 0.27


def test_main_job_end_to_end(tmp_path):
    out = tmp_path / "w4"
    proc = subprocess.run([sys.executable, "-m", "llmlite_kernels", "compress", "--windows", "1",
                           "--decode-tokens", "4", "--output", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("Linear weight bytes", "ratio vs fp16", "perplexity", "decode tokens/s"):
        assert row in proc.stdout, proc.stdout
    ratio = float(proc.stdout.split("ratio vs fp16")[1].split("|")[2])
    assert ratio <= 0.32  # W4 g128 Linears (0.263) and, by default, a W8 per-channel lm_head
    model, tokenizer = L.load(str(out))
    assert tokenizer is not None
    assert sum(isinstance(m, L.QuantLinear) for m in model.modules()) == 211
    assert model.lm_head.bits == 8 and model.model.layers[0].mlp.down_proj.bits == 4
