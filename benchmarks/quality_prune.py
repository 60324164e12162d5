"""Pruning quality on SmolLM2-135M: perplexity (the 40-window WikiText-2 test protocol) and wall time of
each method x pattern, calibrated on the WikiText-2 validation text.

    python benchmarks/quality_prune.py                       # every configuration of the README table
    python benchmarks/quality_prune.py --runs wanda:unstructured sparsegpt:2:4 --windows 10

Wall times are for this machine's CPU (2 cores, shared with other jobs while measured: treat as upper bounds).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from llmlite_kernels import PruneConfig, load_model, prune_
from llmlite_kernels.config import SAMPLINGS
from llmlite_kernels.eval import wikitext_perplexity
from llmlite_kernels.prune import model_sparsity
from llmlite_kernels.report import format_table

DEFAULT_RUNS = ("magnitude:unstructured", "magnitude:2:4", "wanda:unstructured", "wanda:2:4", "sparsegpt:unstructured",
                "sparsegpt:2:4", "sparsegpt_recon:2:4")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="method:pattern entries")
    parser.add_argument("--windows", type=int, default=40, help="perplexity windows (40 = the protocol)")
    parser.add_argument("--calib-windows", type=int, default=None, help="calibration windows (default: config's)")
    parser.add_argument("--calib-seq-len", type=int, default=None, help="tokens per calibration window")
    parser.add_argument("--calib-sampling", choices=SAMPLINGS, default=None,
                        help="first windows of the validation text, or random distinct windows")
    parser.add_argument("--calib-seed", type=int, default=None, help="seed of random sampling (default: config's, 0)")
    parser.add_argument("--dense-stats", action="store_true",
                        help="statistics of every block from the dense model (PruneConfig(sequential=False))")
    parser.add_argument("--true-sequential", action="store_true", help="prune subset by subset inside blocks")
    parser.add_argument("--scope", default="row", choices=("row", "layer"))
    parser.add_argument("--recon-steps", type=int, default=None, help="sparsegpt_recon's Adam steps per block")
    parser.add_argument("--skip-dense", action="store_true", help="do not measure the dense model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dense, tokenizer = load_model()
    rows = []
    if not args.skip_dense:
        ppl = wikitext_perplexity(dense, tokenizer, n_windows=args.windows, progress=False).ppl
        rows.append(["fp32 (dense)", "-", "-", "0.000", f"{ppl:.2f}", "-"])
        print(rows[-1], flush=True)
    for run in args.runs:
        method, pattern = run.split(":", 1)
        extra = {} if args.calib_windows is None else {"calib_windows": args.calib_windows}
        if args.true_sequential:
            extra["true_sequential"] = True
        if args.dense_stats:
            extra["sequential"] = False
        if args.calib_sampling is not None:
            extra["calib_sampling"] = args.calib_sampling
        if args.calib_seed is not None:
            extra["calib_seed"] = args.calib_seed
        if args.calib_seq_len is not None:
            extra["calib_seq_len"] = args.calib_seq_len
        if args.recon_steps is not None and method == "sparsegpt_recon":
            extra["recon_steps"] = args.recon_steps
        config = PruneConfig(method=method, pattern=pattern, scope=args.scope, **extra)
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        prune_(model, config, tokenizer=tokenizer, progress=False)
        seconds = time.perf_counter() - start
        ppl = wikitext_perplexity(model, tokenizer, n_windows=args.windows, progress=False).ppl
        calib = (f"{config.calib_windows}x{config.calib_seq_len} {config.calib_sampling}"
                 + (f" seed {config.calib_seed}" if config.calib_sampling == "random" else "")
                 + (" true-seq" if config.true_sequential else "")
                 + ("" if config.sequential else " dense-stats")) if config.calibrated else "-"
        rows.append([method, pattern if pattern != "unstructured" else f"50% {args.scope}", calib,
                     f"{model_sparsity(model):.3f}", f"{ppl:.2f}", f"{seconds:.0f}"])
        print(rows[-1], flush=True)
        del model
    print()
    print(format_table(["method", "pattern", "calibration", "sparsity", f"ppl ({args.windows}x512)", "prune s"], rows,
                       title=f"SmolLM2-135M, WikiText-2 test, {torch.get_num_threads()} threads"))


if __name__ == "__main__":
    main()
