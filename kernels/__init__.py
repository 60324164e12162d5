"""Triton kernels of llmlite-kernels (installed as ``llmlite_kernels.kernels``): ``lowbit_linear`` on the
stored packed format (``llmlite_kernels.formats.lowbit``, read as is: no repack).

Kernels (each module: the ``@triton.jit`` kernel, an unchecked launcher, a checked ``w_*`` function):

* ``lowbit_gemv.py``    ``w_lowbit_gemv``: dequant-fused split-K GEMV / skinny GEMM (small M, CUDA cores)
* ``lowbit_gemm.py``    ``w_lowbit_gemm``: tensor-core GEMM, weight tiles dequantized before ``tl.dot``
* ``lowbit_dequant.py`` ``w_lowbit_dequantize``: packed -> dense (the op ``lowbit_dequantize``, and the
  large-M path dequantize + cuBLAS)
* ``dequant_tile.py``   the shared device code: unpack 2/3/4/8-bit codes and apply scales/zero points
* ``splitk_reduce.py``  the split-K epilogue (sum of fp32 partials + bias, cast)

Choice and tuning: ``linear_dispatch.lowbit_linear`` picks the kernel and its config by M (and bits/group)
from ``configs/<gpu-name>.json`` (``tuned_configs.py``; ``configs/default.json`` for other GPUs), written
offline by ``python -m llmlite_kernels.kernels.autotune`` on the GPU: nothing is tuned at call time.
``aot_check.py`` compiles every kernel for sm_90 without a GPU. ``llmlite_kernels/ops/cuda.py`` registers
all this as the CUDA implementation of the ops. Each launcher runs on CUDA tensors, or on CPU tensors under
TRITON_INTERPRET=1 (the tests).
"""
import importlib.machinery
import importlib.util
import os
import sys


def _hand_over_top_level_name(name: str) -> None:
    """Imported as top-level ``kernels`` (the source root is on sys.path, as with ``python -m pytest`` run from
    the checkout), this folder would shadow the PyPI package ``kernels``, which transformers >= 5 imports.
    Load that package under the name instead (the import system returns what sys.modules holds after this
    runs); without it, stay an empty module so no Triton code runs under the wrong name."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    others = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, others)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


if __name__ == "llmlite_kernels.kernels":
    from .linear_dispatch import lowbit_dequantize, lowbit_linear, lowbit_linear_2d
    from .sparse24_linear import w24_linear, w24_lowbit_linear
    from .lowbit_dequant import w_lowbit_dequantize
    from .lowbit_gemm import w_lowbit_gemm
    from .lowbit_gemv import w_lowbit_gemv

    __all__ = ["lowbit_dequantize", "lowbit_linear", "lowbit_linear_2d", "w_lowbit_dequantize", "w_lowbit_gemm",
               "w_lowbit_gemv", "w24_linear", "w24_lowbit_linear"]
else:
    _hand_over_top_level_name(__name__)
