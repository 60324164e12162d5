"""Quality of the quantization methods on SmolLM2-135M: WikiText-2 perplexity (the 40-window protocol),
size in bits per weight (codes + scales + zero points of the quantized Linears) and wall time, next to
the fp32 model and to two peers installed from PyPI into the benchmark environment (not package
dependencies): ``pip install --no-deps hqq optimum-quanto einops termcolor``.

Each run loads a fresh model, quantizes it (calibration: the WikiText-2 *validation* file) and scores
it. Runs named ``...+kd`` then tune the quantized model's group scales by distillation from the fp32 model
(``L.tune_scales_``: codes and zero points fixed, forward KL, ``KD_STEPS`` steps of one 512-token window of
the validation text) before scoring. Results are appended to a JSON-lines file so runs can be split over
several processes; ``--table`` prints the table of everything recorded.

    python benchmarks/quality_quant.py --runs fp32 rtn-w4g128 gptq-w4g128 ...   # or --runs all
    python benchmarks/quality_quant.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import llmlite_kernels as L  # noqa: E402
from llmlite_kernels.eval import wikitext_perplexity  # noqa: E402
from llmlite_kernels.models import compressed_bytes  # noqa: E402
from llmlite_kernels.report import format_table  # noqa: E402

Q = L.QuantConfig
RUNS = {
    "fp32": None,
    "rtn-w8-channel": Q(bits=8, group_size=-1),
    "rtn-w4g128": Q(bits=4, group_size=128),
    "rtn-w3g128": Q(bits=3, group_size=128),
    "gptq-w8-channel": Q(bits=8, group_size=-1, method="gptq"),
    "gptq-w4g128": Q(bits=4, group_size=128, method="gptq"),
    "gptq-w4g128-actorder": Q(bits=4, group_size=128, method="gptq", act_order=True),
    "gptq-w4g128-actorder-clip": Q(bits=4, group_size=128, method="gptq", act_order=True, clip_search=True),
    "gptq-w4g128-clip": Q(bits=4, group_size=128, method="gptq", clip_search=True),
    "awq-w4g128": Q(bits=4, group_size=128, method="awq", clip_search=True),
    "awq+gptq-w4g128": Q(bits=4, group_size=128, method="awq+gptq", act_order=True, clip_search=True),
    "gptq-w3g128": Q(bits=3, group_size=128, method="gptq"),
    "gptq-w3g128-actorder": Q(bits=3, group_size=128, method="gptq", act_order=True),
    "gptq-w3g128-actorder-clip": Q(bits=3, group_size=128, method="gptq", act_order=True, clip_search=True),
    "awq+gptq-w3g128": Q(bits=3, group_size=128, method="awq+gptq", act_order=True, clip_search=True),
    "auto-3.5-gptq": Q(bits="auto", avg_bits=3.5, method="gptq", act_order=True, clip_search=True),
    "auto-3.5-awq+gptq": Q(bits="auto", avg_bits=3.5, method="awq+gptq", act_order=True, clip_search=True),
    "auto-3.0-gptq": Q(bits="auto", avg_bits=3.0, method="gptq", act_order=True, clip_search=True),
    "auto-3.5-gptq-wfisher": Q(bits="auto", avg_bits=3.5, method="gptq", act_order=True, clip_search=True,
                               sensitivity="fisher"),
    "auto-3.0-gptq-wfisher": Q(bits="auto", avg_bits=3.0, method="gptq", act_order=True, clip_search=True,
                               sensitivity="fisher"),
    "auto-3.5-gptq-actorder-wfisher": Q(bits="auto", avg_bits=3.5, method="gptq", act_order=True,
                                        sensitivity="fisher"),
    "auto-3.0-gptq-actorder-wfisher": Q(bits="auto", avg_bits=3.0, method="gptq", act_order=True,
                                        sensitivity="fisher"),
    "auto-3.5-rtn": Q(bits="auto", avg_bits=3.5, method="rtn"),
    "auto-3.0-rtn": Q(bits="auto", avg_bits=3.0, method="rtn"),
    "auto-3.5-gptq-plain": Q(bits="auto", avg_bits=3.5, method="gptq"),
    "auto-3.5-gptq-output": Q(bits="auto", avg_bits=3.5, method="gptq", act_order=True, clip_search=True,
                              sensitivity="output"),
    "hqq-w4g128": ("hqq", 4, 128),
    "hqq-w4g64": ("hqq", 4, 64),
    "hqq-w3g128": ("hqq", 3, 128),
    "quanto-qint4": ("quanto", 4, None),
    "quanto-qint8": ("quanto", 8, None),
}

KD_STEPS, KD_LR = 80, 1e-3
for _name in ("gptq-w4g128-actorder-clip", "gptq-w3g128-actorder-clip", "auto-3.5-gptq", "auto-3.0-gptq"):
    RUNS[_name + "+kd"] = RUNS[_name]


def _ours_bits_per_weight(model) -> float:
    elements, packed = compressed_bytes(model)
    return 8 * packed / elements


def _hqq(model, bits, group):
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    HQQLinear.set_backend(HQQBackend.PYTORCH)
    config = BaseQuantizeConfig(nbits=bits, group_size=group)
    elements = 0
    for name, module in list(L.models.iter_linears(model, exclude=["lm_head"])):
        elements += module.weight.numel()
        L.models.set_submodule(model, name, HQQLinear(module, config, compute_dtype=torch.float32, device="cpu"))
    # HQQ stores per-group fp scale and fp zero (both float32 in compute_dtype here; 16-bit when on GPU)
    return bits + 2 * 16 / group


def _quanto(model, bits):
    from optimum.quanto import freeze, qint4, qint8, quantize

    quantize(model, weights=qint4 if bits == 4 else qint8, exclude=["lm_head"])
    freeze(model)
    # qint4: group size 128 with a 16-bit scale and shift per group; qint8: one scale per output channel
    return 4 + 2 * 16 / 128 if bits == 4 else 8.0


def run(name: str, windows: int, calib_windows: int) -> dict:
    torch.manual_seed(0)
    model, tokenizer = L.load_model()
    spec = RUNS[name]
    start, cpu_start = time.perf_counter(), time.process_time()
    bpw = 32.0
    if isinstance(spec, Q):
        spec.calib_windows = calib_windows
        L.quantize_(model, spec, tokenizer=tokenizer)
        bpw = _ours_bits_per_weight(model)
    elif isinstance(spec, tuple) and spec[0] == "hqq":
        bpw = _hqq(model, spec[1], spec[2])
    elif isinstance(spec, tuple) and spec[0] == "quanto":
        bpw = _quanto(model, spec[1])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    extra = {}
    if name.endswith("+kd"):
        teacher, _ = L.load_model()
        start = time.perf_counter()
        model, log = L.tune_scales_(model, teacher, None, steps=KD_STEPS, lr=KD_LR, tokenizer=tokenizer)
        extra = {"tune_s": time.perf_counter() - start, "tune_steps": len(log), "tune_tokens": log[-1]["tokens"]}
        del teacher
        if _ours_bits_per_weight(model) != bpw:
            raise AssertionError("tune_scales_ changed the model's size")
    ppl = wikitext_perplexity(model, tokenizer, n_windows=windows)
    return {"run": name, "ppl": ppl.ppl, "windows": windows, "bits_per_weight": bpw, "quantize_s": seconds, "quantize_cpu_s": cpu_seconds,
            "eval_s": ppl.seconds, "calib": f"{calib_windows}x512" if isinstance(spec, Q) and spec.calibrated else "",
            "torch_threads": torch.get_num_threads(), **extra}


def table(path: str) -> str:
    """The latest record of each (run, windows); "x fp32" divides by the fp32 figure on the same windows."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    latest = {(r["run"], r["windows"]): r for r in records}
    fp32 = {w: r["ppl"] for (name, w), r in latest.items() if name == "fp32"}
    rows = []
    for (name, w), r in sorted(latest.items(), key=lambda item: (-item[0][1], item[0][0] != "fp32")):
        ratio = f"{r['ppl'] / fp32[w]:.3f}" if w in fp32 else ""
        rows.append([name, f"{r['ppl']:.2f}", ratio, f"{r['bits_per_weight']:.3f}", f"{r['quantize_s']:.0f}",
                     f"{r.get('quantize_cpu_s', float('nan')):.0f}", f"{r['tune_s']:.0f}" if "tune_s" in r else "-",
                     f"{r['eval_s']:.0f}", r["calib"], w])
    return format_table(["run", "ppl", "x fp32", "bits/weight", "quantize s", "quantize CPU s", "scale KD s", "eval s",
                         "calibration", "windows"], rows, title="SmolLM2-135M-Instruct, WikiText-2 test (fp32 40 windows: "
                                                 f"{fp32.get(40, float('nan')):.2f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[], help=f"names among: {', '.join(RUNS)}; or 'all'")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--calib-windows", type=int, default=64)
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                          "results", "quality_quant.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the table of recorded results")
    args = parser.parse_args(argv)
    names = list(RUNS) if args.runs == ["all"] else args.runs
    for name in names:
        if name not in RUNS:
            parser.error(f"unknown run {name!r}; known: {', '.join(RUNS)}")
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    for name in names:
        result = run(name, args.windows, args.calib_windows)
        print(json.dumps(result), flush=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.table or names:
        print(table(args.results))


if __name__ == "__main__":
    main()
