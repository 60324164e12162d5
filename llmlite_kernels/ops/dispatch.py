"""Which backend runs each op, and why the others do not.

Backends, in order of preference per device:
  CUDA: ``cuda_cpp`` (``llmlite_kernels._C_cuda``) / ``triton`` (``llmlite_kernels.kernels``), chosen per
        shape in ``ops/cuda.py``; CPU: ``cpu_cpp`` (``llmlite_kernels._C``); everywhere: ``reference``.
A backend that is missing is reported here and logged once at import, never skipped silently.
``LLMLITE_NATIVE=0`` keeps the compiled extensions from loading (everything runs on the reference).
"""
from __future__ import annotations

import importlib
import logging
import os

import torch

log = logging.getLogger("llmlite_kernels")

_STATUS: dict = {}


def _native_enabled() -> bool:
    return os.environ.get("LLMLITE_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


def load_extension(module: str, backend: str):
    """Import ``llmlite_kernels.<module>``; record the outcome under ``backend``. Returns the module or None."""
    if not _native_enabled():
        _STATUS[backend] = (False, "disabled by LLMLITE_NATIVE=0")
        return None
    try:
        mod = importlib.import_module(f"llmlite_kernels.{module}")
    except ImportError as exc:  # not built, or built against another torch
        _STATUS[backend] = (False, f"llmlite_kernels.{module} not available: {exc}")
        return None
    _STATUS[backend] = (True, f"llmlite_kernels.{module} loaded")
    return mod


def set_status(backend: str, active: bool, why: str):
    _STATUS[backend] = (active, why)


def backends() -> dict:
    """``{backend: {"active": bool, "why": str}}`` for every backend the package knows."""
    status = {"reference": (True, "pure torch, every device")}
    status.update(_STATUS)
    return {name: {"active": a, "why": why} for name, (a, why) in status.items()}


def kernel_for(device_type: str, op: str = "lowbit_linear") -> str:
    """The dispatch key's kernel that runs ``op`` on ``device_type`` ("cpu"/"cuda"): a backend name."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None or not torch._C._dispatch_has_kernel_for_dispatch_key(f"llmlite::{op}", key):
        return "reference"
    return {"CPU": "cpu_cpp", "CUDA": "cuda"}[key]


def log_inactive():
    for name, (active, why) in _STATUS.items():
        if not active:
            log.info("llmlite_kernels backend %s inactive: %s", name, why)
