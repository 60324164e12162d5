"""Recovery of SmolLM2-135M perplexity by distillation after compression (issue 8's goals).

    python benchmarks/quality_distill.py --case w3_rtn --loss seed --minutes 20
    python benchmarks/quality_distill.py --case wanda24 --loss kl --minutes 20 --out results.jsonl

Cases: ``w3_rtn`` (W3 g128 RTN + LoRA adapters), ``wanda24`` / ``sparsegpt24`` (2:4 pruning, kept weights
trained). Training text: the WikiText-2 *validation* split only; perplexity: the 40-window test protocol.
Prints the before/after table (gap recovered = (ppl_before - ppl_after) / (ppl_before - ppl_fp32)),
wall time, steps, tokens and, for pruned models, the sparsity check (masks and zeros unchanged).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import llmlite_kernels as L
from llmlite_kernels.distill import distill
from llmlite_kernels.eval import wikitext_perplexity
from llmlite_kernels.nn.lora import add_lora_, merge_lora_and_requantize_
from llmlite_kernels.report import format_table

FP32_PPL = 28.62  # the protocol's fp32 SmolLM2-135M figure (README)


def compress(model, tokenizer, case: str, calib_windows: int = 64):
    if case == "w3_rtn":
        L.quantize_(model, L.QuantConfig(bits=3, group_size=128), progress=False)
    else:
        from llmlite_kernels.config import PruneConfig
        from llmlite_kernels.prune import prune_

        method = {"wanda24": "wanda", "sparsegpt24": "sparsegpt"}[case]
        # the README's distillation figures start from the 64 first validation windows, for both methods
        prune_(model, PruneConfig(method=method, pattern="2:4", calib_windows=calib_windows, calib_sampling="first"),
               tokenizer=tokenizer, progress=False)
    return model


def sparse_state(model) -> dict:
    """Per SparseLinear: (mask, zero pattern of the weight) to compare after training."""
    return {n: (m.mask().clone(), m.weight.detach() == 0) for n, m in model.named_modules()
            if type(m).__name__ == "SparseLinear"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", required=True, choices=("w3_rtn", "wanda24", "sparsegpt24"))
    p.add_argument("--loss", default="seed", choices=("seed", "kl", "reverse_kl", "jsd"))
    p.add_argument("--steps", type=int, default=120, help="training steps (the cosine schedule spans them)")
    p.add_argument("--minutes", type=float, default=None, help="optional wall-time cap on training")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-before", action="store_true", help="do not measure the compressed ppl before training")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (w3_rtn)")
    p.add_argument("--windows", type=int, default=40, help="512-token test windows for perplexity")
    p.add_argument("--calib-windows", type=int, default=64, help="512-token calibration windows for pruning")
    p.add_argument("--merge", action="store_true", help="w3_rtn: also report ppl after merge + re-quantize")
    p.add_argument("--out", help="append the result as one JSON line to this file")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher, tokenizer = L.load_model()
    student = compress(copy.deepcopy(teacher), tokenizer, args.case, args.calib_windows)
    before = None
    if not args.skip_before:
        before = wikitext_perplexity(student, tokenizer, n_windows=args.windows, progress=False).ppl
        print(f"{args.case}: ppl before distillation {before:.2f}", flush=True)
    if args.case == "w3_rtn":
        add_lora_(student, rank=args.rank, alpha=2.0 * args.rank)
    sparse_before = sparse_state(student)

    start, cpu_start = time.perf_counter(), time.process_time()
    student, log = distill(student, teacher, None, loss=args.loss, steps=args.steps, seq_len=args.seq_len,
                           batch_size=args.batch_size, lr=args.lr, tokenizer=tokenizer, alpha=args.alpha,
                           beta=args.beta, temperature=args.temperature,
                           max_seconds=None if args.minutes is None else 60 * args.minutes)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    after = wikitext_perplexity(student, tokenizer, n_windows=args.windows, progress=False).ppl
    merged = None
    if args.merge and args.case == "w3_rtn":
        merged = wikitext_perplexity(merge_lora_and_requantize_(student), tokenizer, n_windows=args.windows,
                                     progress=False).ppl

    sparse_ok = None
    if sparse_before:
        after_state = sparse_state(student)
        sparse_ok = all(torch.equal(m0, after_state[n][0]) and bool(after_state[n][1][~m0].all())
                        for n, (m0, _) in sparse_before.items())
    recovered = None if before is None else (before - after) / (before - FP32_PPL)
    row = {"case": args.case, "loss": args.loss, "ppl_fp32": FP32_PPL, "ppl_before": before, "ppl_after": after,
           "ppl_merged_requantized": merged, "gap_recovered": recovered, "wall_s": wall, "cpu_s": cpu, "steps": len(log),
           "tokens": len(log) * args.batch_size * args.seq_len, "seq_len": args.seq_len,
           "batch_size": args.batch_size, "lr": log[-1]["lr"] if log else None, "first_loss": log[0]["loss"],
           "last_loss": log[-1]["loss"], "sparsity_unchanged": sparse_ok, "windows": args.windows,
           "threads": torch.get_num_threads()}
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    rows = [[args.case, args.loss, f"{FP32_PPL:.2f}", fmt(before, ".2f"), f"{after:.2f}",
             fmt(None if recovered is None else 100 * recovered, ".1f") + "%",
             f"{wall / 60:.1f} min", f"{cpu / 60:.1f} min", str(len(log)), str(row["tokens"]),
             "-" if sparse_ok is None else ("unchanged" if sparse_ok else "CHANGED")]]
    print(format_table(["case", "loss", "fp32", "before", "after", "gap recovered", "wall", "CPU time", "steps", "tokens",
                        "sparsity"], rows, title="distillation recovery (WikiText-2 test ppl)"))
    if merged is not None:
        print(f"after merging the adapters and re-quantizing (RTN): ppl {merged:.2f}")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
