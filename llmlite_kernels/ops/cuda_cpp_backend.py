"""CUDA C++ backend of ``lowbit_linear``: the tensor-core W4/W8 x fp16/bf16 GEMM in ``csrc/cuda``.

Interface used by ``ops/cuda.py`` (which picks this backend or Triton per shape):

* ``available()``: the extension ``llmlite_kernels._C_cuda`` loaded and a CUDA device is present.
* ``supports(bits, group_size, symmetric, dtype, M, N, K)``: shapes the kernel computes correctly
  (W4/W8, fp16/bf16, groups 32/64/128/256 and per-channel, any M and N, ``K % 128 == 0``). Speed is
  ``cuda.py``'s business (its per-GPU table); the kernel is tuned for M <= 64.
* ``lowbit_linear(x, weight_packed, ...)``: same arguments and result as the op. The weight is repacked
  on first use and cached per weight tensor (keyed on the tensor object, its version counter and the
  activation dtype; dropped when the tensor is freed).
* ``prepare(...)`` + ``linear_repacked(x, rw, bias)``: the explicit path for a layer that repacks once
  at load and keeps the :class:`MmaRepackedWeight` itself (no cache lookup per call).
"""
from __future__ import annotations

import weakref

import torch

from ..formats.lowbit import canonical_group_size
from ..formats.mma_repack import (REPACK_BITS, REPACK_DTYPES, TILE_K, MmaRepackedWeight, repack_weight)
from .dispatch import load_extension
from .schemas import check_lowbit_linear

_ext = load_extension("_C_cuda", "cuda_cpp")

SUPPORTED_GROUP_SIZES = (32, 64, 128, 256, -1)


def available() -> bool:
    return _ext is not None and torch.cuda.is_available()


def supports(bits, group_size, symmetric, dtype, M, N, K) -> bool:  # noqa: ARG001 (symmetric: both are)
    return (bits in REPACK_BITS and dtype in REPACK_DTYPES and group_size in SUPPORTED_GROUP_SIZES
            and M >= 1 and N >= 1 and K >= TILE_K and K % TILE_K == 0)


def prepare(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
            dtype) -> MmaRepackedWeight:
    """Repack a stored weight once for activations of ``dtype`` (call at load time)."""
    return repack_weight(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype)


def linear_repacked(x: torch.Tensor, rw: MmaRepackedWeight, bias=None) -> torch.Tensor:
    """``lowbit_linear`` with a prepared weight: x [..., K] -> [..., N] in x.dtype."""
    return torch.ops.llmlite.lowbit_linear_repacked(x, rw.weight, rw.scale, rw.zero, bias, rw.bits,
                                                    rw.group_size, rw.out_features)


# id(weight_packed) -> (weakref, key, repacked). The weakref callback drops the entry with the tensor,
# so an id reused by a new tensor never meets a stale entry.
_CACHE: dict = {}


def _cached_repack(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype):
    key = (weight_packed._version, weight_scale.data_ptr(), weight_scale._version,
           None if weight_zero_point is None else (weight_zero_point.data_ptr(), weight_zero_point._version),
           bits, group_size, in_features, dtype, weight_packed.device)
    entry = _CACHE.get(id(weight_packed))
    if entry is not None and entry[0]() is weight_packed and entry[1] == key:
        return entry[2]
    rw = prepare(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype)
    ident = id(weight_packed)
    ref = weakref.ref(weight_packed, lambda _r, ident=ident: _CACHE.pop(ident, None))
    _CACHE[ident] = (ref, key, rw)
    return rw


def lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
    """The op on this backend; repacks (and caches) the weight on first use."""
    check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    group_size = canonical_group_size(group_size)
    rw = _cached_repack(weight_packed, weight_scale, weight_zero_point, bits, group_size, x.shape[-1], x.dtype)
    return linear_repacked(x, rw, bias)
