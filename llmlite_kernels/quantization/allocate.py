"""Adaptive bit allocation: one (bits, group_size) per layer minimising the summed sensitivity under a budget
in average bits per weight (codes, scales and zero points all counted).

Exact multiple-choice knapsack by dynamic programming over sizes discretised in units of
``ceil(spare / max_units)`` bits, where ``spare`` is the budget left once every layer has its smallest
option and each option is counted by its size *above* that smallest one, rounded *up*: the plan never
exceeds the budget, any budget >= the smallest plan is feasible, and the plan is the exact optimum when
the unit is 1 bit (small problems).
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

from ..report import format_table
from .sensitivity import Option


def allocate(options: Dict[str, List[Option]], budget_bits: int, max_units: int = 20000) -> Dict[str, Option]:
    """``{layer: chosen Option}`` with ``sum(size_bits) <= budget_bits`` minimising ``sum(error)``."""
    if not options:
        raise ValueError("no layers to allocate bits to")
    names = list(options)
    smallest = sum(min(o.size_bits for o in options[n]) for n in names)
    if smallest > budget_bits:
        raise ValueError(f"the budget of {budget_bits} bits is below the smallest plan ({smallest} bits): "
                         "raise avg_bits or add smaller candidates")
    base = {n: min(o.size_bits for o in options[n]) for n in names}
    spare = budget_bits - smallest
    unit = max(1, math.ceil(spare / max_units))
    capacity = spare // unit
    extra = lambda name, opt: -(-(opt.size_bits - base[name]) // unit)
    best = np.zeros(capacity + 1)  # best[c]: least error of the layers so far within c units
    choices = np.zeros((len(names), capacity + 1), dtype=np.int16)
    for li, name in enumerate(names):
        new = np.full(capacity + 1, np.inf)
        for oi, opt in enumerate(options[name]):
            units = extra(name, opt)
            if units > capacity:
                continue
            cand = np.full(capacity + 1, np.inf)
            cand[units:] = best[:capacity + 1 - units] + opt.error
            better = cand < new
            new[better] = cand[better]
            choices[li, better] = oi
        best = new
    if not np.isfinite(best[capacity]):
        raise ValueError(f"no plan fits {budget_bits} bits at a resolution of {unit} bits; raise avg_bits")
    plan, c = {}, capacity
    for li in range(len(names) - 1, -1, -1):
        opt = options[names[li]][choices[li, c]]
        plan[names[li]] = opt
        c -= extra(names[li], opt)
    return {n: plan[n] for n in names}


def plan_summary(plan: Dict[str, Option], numels: Dict[str, int], budget_avg_bits: float) -> dict:
    """The JSON-able plan saved with the model (``io.save(extra={"bit_plan": ...})``)."""
    total_bits = sum(o.size_bits for o in plan.values())
    total_numel = sum(numels[n] for n in plan)
    return {
        "budget_avg_bits": budget_avg_bits,
        "avg_bits": total_bits / total_numel,
        "total_bytes": total_bits // 8,
        "layers": {n: {"bits": o.bits, "group_size": o.group_size, "bytes": o.size_bits // 8,
                       "avg_bits": o.size_bits / numels[n], "error": o.error} for n, o in plan.items()},
    }


def format_plan(summary: dict) -> str:
    rows = [[n, l["bits"], "channel" if l["group_size"] == -1 else l["group_size"], f"{l['avg_bits']:.3f}",
             l["bytes"], f"{l['error']:.4g}"] for n, l in summary["layers"].items()]
    rows.append(["total", "", "", f"{summary['avg_bits']:.3f}", summary["total_bytes"], ""])
    return format_table(["layer", "bits", "group", "bits/weight", "bytes", "sensitivity"], rows,
                        title=f"bit plan: {summary['avg_bits']:.3f} bits/weight (budget {summary['budget_avg_bits']})")


def read_bit_plan(folder: str) -> dict:
    """The plan saved with a model folder (``None`` if the model was quantized uniformly)."""
    from ..io import read_config

    return read_config(folder).get("bit_plan")
