"""Per-GPU tuned configs: ``configs/<gpu-name slug>.json`` (written by ``kernels/autotune.py``), else
``configs/default.json``. Loaded once per device; nothing is tuned at call time.

Schema::

    {"gpu": str, "source": str,
     "dispatch": [ {"max_m": int | null, "bits": [int, ...] (optional), "group_sizes": [...] (optional),
                    "kernel": "gemv" | "gemm" | "dequant_matmul", "config": {...}}, ... ],
     "dequantize": {...},                       # lowbit_dequantize / dequant_matmul kernel config
     "prefer_cuda_cpp": [ {"max_m": int, "min_m": int (optional), "bits": [...] (optional)}, ... ]}

The first ``dispatch`` rule whose ``max_m`` (null = no limit) and filters admit (M, bits, group) wins.
``prefer_cuda_cpp`` says where the CUDA C++ kernel (when built and supporting the case) beats Triton.
"""
from __future__ import annotations

import functools
import json
import os
import re

import torch

from .lowbit_dequant import DEFAULT_CONFIG as DEQUANT_KEYS
from .lowbit_gemm import DEFAULT_CONFIG as GEMM_KEYS
from .lowbit_gemv import DEFAULT_CONFIG as GEMV_KEYS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
CONFIG_KEYS = {"gemv": set(GEMV_KEYS), "gemm": set(GEMM_KEYS), "dequant_matmul": set(DEQUANT_KEYS)}
KERNELS = tuple(CONFIG_KEYS)


def gpu_slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia_h200"``: the file name of a GPU's configs."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def config_path(gpu_name: str | None) -> str:
    if gpu_name:
        path = os.path.join(CONFIG_DIR, gpu_slug(gpu_name) + ".json")
        if os.path.exists(path):
            return path
    return os.path.join(CONFIG_DIR, "default.json")


def validate(table: dict, path: str = "<table>") -> dict:
    rules = table.get("dispatch")
    if not isinstance(rules, list) or not rules:
        raise ValueError(f"{path}: 'dispatch' must be a non-empty list of rules")
    for rule in rules:
        if rule.get("kernel") not in KERNELS:
            raise ValueError(f"{path}: rule {rule} has kernel {rule.get('kernel')!r}; accepted: {KERNELS}")
        unknown = set(rule.get("config", {})) - CONFIG_KEYS[rule["kernel"]]
        if unknown:
            raise ValueError(f"{path}: rule {rule} has unknown config keys {sorted(unknown)}; accepted: "
                             f"{sorted(CONFIG_KEYS[rule['kernel']])}")
    last = rules[-1]
    if last.get("max_m") is not None or last.get("min_m", 0) > 0 or "bits" in last or "group_sizes" in last:
        raise ValueError(f"{path}: the last dispatch rule must match everything (max_m null, no filters)")
    return table


@functools.lru_cache(maxsize=None)
def load(path: str) -> dict:
    with open(path) as f:
        return validate(json.load(f), path)


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def table_for(device: torch.device) -> dict:
    """The config table of ``device``'s GPU (the default table off-GPU)."""
    override = os.environ.get("LLMLITE_TRITON_CONFIGS")  # a JSON file, e.g. while autotuning
    if override:
        return load(override)
    name = None
    if device.type == "cuda":
        name = _cuda_name(device.index if device.index is not None else torch.cuda.current_device())
    return load(config_path(name))


def _admits(rule: dict, m: int, bits: int, group_size: int) -> bool:
    max_m = rule.get("max_m")
    return ((max_m is None or m <= max_m) and m >= rule.get("min_m", 0)
            and ("bits" not in rule or bits in rule["bits"])
            and ("group_sizes" not in rule or group_size in rule["group_sizes"]))


def choose(table: dict, m: int, bits: int, group_size: int):
    """(kernel name, its config) for a problem with ``m`` rows."""
    for rule in table["dispatch"]:
        if _admits(rule, m, bits, group_size):
            return rule["kernel"], rule.get("config", {})
    raise AssertionError("unreachable: validate() requires a catch-all last rule")


def prefers_cuda_cpp(table: dict, m: int, bits: int, group_size: int) -> bool:
    return any(_admits(rule, m, bits, group_size) for rule in table.get("prefer_cuda_cpp", []))
