"""Import the Triton kernels (``llmlite_kernels.kernels``), or say why they cannot run.

An installed package maps ``kernels/`` to ``llmlite_kernels.kernels`` (setup.py); a plain source checkout
(PYTHONPATH=repo) has no such mapping, so the folder is loaded under that name from the tree.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from .dispatch import _native_enabled

KERNELS_MODULE = "llmlite_kernels.kernels"
_SOURCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kernels")


def _import_kernels():
    try:
        return importlib.import_module(KERNELS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != KERNELS_MODULE or not os.path.isfile(os.path.join(_SOURCE_DIR, "__init__.py")):
            raise
    spec = importlib.util.spec_from_file_location(KERNELS_MODULE, os.path.join(_SOURCE_DIR, "__init__.py"),
                                                  submodule_search_locations=[_SOURCE_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules[KERNELS_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[KERNELS_MODULE]
        raise
    return module


def load():
    """(the kernels module or None, why): None when LLMLITE_NATIVE=0 or triton does not import."""
    if not _native_enabled():
        return None, "disabled by LLMLITE_NATIVE=0"
    try:
        import triton
    except ImportError as exc:
        return None, f"triton not importable: {exc}"
    try:
        kernels = _import_kernels()
    except ImportError as exc:
        return None, f"{KERNELS_MODULE} not importable: {exc}"
    return kernels, f"triton {triton.__version__}"
