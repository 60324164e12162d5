"""Greedy decode speed of SmolLM2-135M on CPU: the float model vs quantized variants, in one run.

Every variant decodes the same prompt with the same loop (``eval.decode_speed``: batch 1, KV cache,
64 new tokens after a 4-token warm-up), in rounds that alternate the variants so that a slow spell of a
shared machine hits all of them; the table gives each variant's median tokens/s over the rounds and its
ratio to the float model's median. ``--loop lean`` (default) is ``decode.LlamaDecoder``; ``hf`` is
transformers' ``generate``. Run ``python benchmarks/bench_decode.py [--rounds 3] [--loop lean|hf|both]``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import llmlite_kernels as L  # noqa: E402
from llmlite_kernels.eval import decode_speed  # noqa: E402
from llmlite_kernels.models import load_model, quantize_lm_head_  # noqa: E402
from llmlite_kernels.report import format_table  # noqa: E402


def variants(model):
    """(name, model) pairs: the float model and W4 g128 RTN with float or int8 activations, float or W8 head."""
    w4 = L.quantize_(copy.deepcopy(model), L.QuantConfig(bits=4, group_size=128), progress=False)
    w4a8 = copy.deepcopy(w4)
    L.set_act_quant_(w4a8, "int8")
    default = quantize_lm_head_(copy.deepcopy(w4), bits=8, group_size=-1)
    L.set_act_quant_(default, "int8")
    return [("float32", model), ("W4 g128, float activations, float lm_head", w4),
            ("W4 g128 A8, float lm_head", w4a8), ("W4 g128 A8, lm_head W8 (llmlite compress default)", default)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--loop", choices=("lean", "hf", "both"), default="lean")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model()
    models = variants(model)
    loops = ("lean", "hf") if args.loop == "both" else (args.loop,)
    speeds = {(name, loop): [] for name, _ in models for loop in loops}
    for _ in range(args.rounds):
        for loop in loops:
            for name, m in models:
                speeds[name, loop].append(decode_speed(m, tokenizer, args.tokens, loop=loop))
    rows = []
    for loop in loops:
        base = statistics.median(speeds["float32", loop])
        for name, _ in models:
            s = speeds[name, loop]
            rows.append([loop, name, f"{statistics.median(s):.1f}", " ".join(f"{v:.1f}" for v in s),
                         f"{statistics.median(s) / base:.2f}"])
    print(format_table(["loop", "model", "tokens/s (median)", "rounds", "x float32"], rows,
                       title=f"greedy decode, {args.tokens} tokens, {torch.get_num_threads()} threads, "
                             f"isa={torch.ops.llmlite.cpu_isa()}"))


if __name__ == "__main__":
    main()
