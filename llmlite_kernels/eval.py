"""The evaluation protocol: perplexity on fixed windows, and greedy-decode speed."""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ._checks import check_choice
from .decode import LlamaDecoder, supports

TEST_FILE = "wikitext2-test.raw"
CALIBRATION_FILE = "wikitext2-valid.tokens"
LOOPS = ("auto", "lean", "hf")

log = logging.getLogger("llmlite_kernels")


def data_file(name: str) -> str:
    """``$LLMLITE_DATA_DIR/name``, else ``../shared/data/name`` beside the repository."""
    folder = os.environ.get("LLMLITE_DATA_DIR")
    if folder is None:
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
    path = os.path.normpath(os.path.join(folder, name))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} not found in {os.path.dirname(path)}: set LLMLITE_DATA_DIR or pass a file")
    return path


def read_text(path: str) -> str:
    """The file as UTF-8, exactly as it is (CRLF kept)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def token_windows(tokenizer, text: str, seq_len: int, n_windows: int | None = None) -> torch.LongTensor:
    """Tokenize ``text`` once without special tokens; non-overlapping ``seq_len`` windows [W, seq_len]."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    total = ids.numel() // seq_len
    n = total if n_windows is None else min(n_windows, total)
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens: fewer than one window of {seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


@dataclass
class Perplexity:
    ppl: float
    nll: float
    tokens: int
    windows: int
    seconds: float


@torch.no_grad()
def perplexity(model, windows: torch.LongTensor, progress: bool = True) -> Perplexity:
    """exp(mean NLL) over every predicted token of every window (seq_len - 1 per window)."""
    model.eval()
    device = next(model.parameters()).device
    start = time.perf_counter()
    nll, count = 0.0, 0
    for window in tqdm(windows, desc="perplexity", disable=not progress):
        ids = window[None].to(device)
        logits = model(ids).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return Perplexity(math.exp(nll / count), nll / count, count, len(windows), time.perf_counter() - start)


def wikitext_perplexity(model, tokenizer, path: str | None = None, seq_len: int = 512, n_windows: int = 40,
                        progress: bool = True) -> Perplexity:
    """The project's protocol: the first 40 windows of 512 tokens of the WikiText-2 raw test file."""
    text = read_text(path or data_file(TEST_FILE))
    return perplexity(model, token_windows(tokenizer, text, seq_len, n_windows), progress)


@torch.inference_mode()
def decode_speed(model, tokenizer, new_tokens: int = 64, prompt: str = "The history of the city of",
                 loop: str = "auto") -> float:
    """Greedy decode ``new_tokens`` tokens after ``prompt`` (batch 1, KV cache); returns tokens/s.

    loop: "lean" (:class:`~llmlite_kernels.decode.LlamaDecoder`, so the time is the model's, not transformers'
    per-step overhead), "hf" (``model.generate``), or "auto": "lean" when ``decode.supports(model)``, else "hf".
    """
    check_choice("loop", loop, LOOPS)
    if loop == "auto":
        loop = "lean" if supports(model) else "hf"
    log.info("decode_speed: %s loop", "lean (LlamaDecoder)" if loop == "lean" else "hf (model.generate)")
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    if loop == "lean":
        decoder = LlamaDecoder(model, max_len=ids.shape[1] + max(new_tokens, 4))
        run = functools.partial(decoder.generate, ids)
    else:
        def run(n):
            out = model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            return out[0, ids.shape[1]:]
    run(4)  # warm-up
    start = time.perf_counter()
    count = len(run(new_tokens))
    return count / (time.perf_counter() - start)
