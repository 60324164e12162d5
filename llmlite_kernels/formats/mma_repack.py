"""Repack the stored low-bit format into the fragment order of the CUDA tensor-core GEMM, and back.

This file defines the layout that ``csrc/cuda/lowbit_a16_gemm.cu`` reads (pure torch; done once at
load, on any device). Only 4- and 8-bit codes, ``K % 128 == 0``.

The weight ``W`` [N, K] is cut into tiles of 128 columns of ``N`` ("n-tiles", N padded with zero codes
to ``N_pad``) by 128 of ``K`` ("k-tiles"). A tile is what one thread block streams per pipeline stage:
8 warps x 16 output columns x 8 MMA k-steps of 16. The ``mma.m16n8k16`` B fragment of a lane
(``lane = 4*col + pair``) holds, for 8-column tile ``t`` in {0, 1} of its warp and k-step ``j``, the
four elements ``r`` = 0..3 at ``n = 16*warp + 8*t + col`` and ``k = 16*j + 2*pair + r%2 + 8*(r//2)``.

Repacked codes: int32 ``[N_pad/128, K/128, 512*bits]``; inside a tile, ``bits/2`` 16-byte vectors per
lane at vector index ``(warp*bits/2 + v)*32 + lane`` (so a warp's loads are contiguous), each of 4
words ``c``; word ``i = 4*v + c`` of a lane:

* W4: word ``j`` holds the lane's 8 codes of k-step j: element r of tile t in nibble ``(2t + r//2) + 4*(r%2)``.
* W8: word ``2j + t`` holds element r of tile t in byte ``r//2 + 2*(r%2)``.

So a single mask pulls a (low, high) pair of fragment elements, nibbles (p, p+4) / bytes (p, p+2),
into the two halves of a 32-bit register for the magic-number conversion.

Scales: ``[G, N_pad]`` in the activation dtype (one row per group, k-major); zero points: ``[G, N_pad]``
in the activation dtype holding the integer ``z`` (exact), or ``None`` for symmetric.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._checks import check_choice, check_positive_int, check_tensor
from .bitpack import pack_codes, unpack_codes
from .lowbit import canonical_group_size, check_packed

TILE_N = 128
TILE_K = 128
REPACK_BITS = (4, 8)
REPACK_DTYPES = (torch.float16, torch.bfloat16)
_CHUNK_ELEMENTS = 1 << 24  # codes per repack step of repack_weight: int64 temporaries ~128 MiB


@dataclass
class MmaRepackedWeight:
    """A low-bit weight in the CUDA GEMM's fragment order (see the module docstring)."""

    weight: torch.Tensor                 # int32 [N_pad/128, K/128, 512*bits]
    scale: torch.Tensor                  # [G, N_pad], activation dtype
    zero: Optional[torch.Tensor]         # [G, N_pad], activation dtype, or None (symmetric)
    bits: int
    group_size: int                      # canonical: -1 = per-channel
    out_features: int
    in_features: int

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    @property
    def kernel_group_size(self) -> int:
        return self.in_features if self.group_size == -1 else self.group_size


def padded_out_features(out_features: int) -> int:
    return -(-out_features // TILE_N) * TILE_N


def _check_repackable(bits: int, in_features: int):
    check_choice("bits", bits, REPACK_BITS)
    if in_features % TILE_K != 0 or in_features <= 0:
        raise ValueError(f"in_features={in_features} is not supported by the CUDA GEMM repack; "
                         f"it must be a positive multiple of {TILE_K}")


# Axis orders of the two permutations. The source view of a block of n-tiles of codes [n, k]:
#   (nt, warp, t, col, kt, jhi, jlo, rhi, pair, rlo)  n = 128nt + 16warp + 8t + col,
#                                                     k = 128kt + 16j + 8rhi + 2pair + rlo, j = jhi*J_LO + jlo
# with (jhi, jlo) = (2, 4) for W4 (vector v = j // 4, word j % 4) and (4, 2) for W8 (v = j // 2).
# Target (repacked words, fields last):
#   W4: (nt, kt, warp, jhi, col, pair, jlo, rlo, t, rhi)   vector jhi, word jlo, nibble 4rlo + 2t + rhi
#   W8: (nt, kt, warp, jhi, col, pair, jlo, t, rlo, rhi)   vector jhi, word 2jlo + t, byte 2rlo + rhi
_SOURCE_SHAPE = {4: (8, 2, 8, -1, 2, 4, 2, 4, 2), 8: (8, 2, 8, -1, 4, 2, 2, 4, 2)}
_TO_FRAGMENT = {4: (0, 4, 1, 5, 3, 8, 6, 9, 2, 7), 8: (0, 4, 1, 5, 3, 8, 6, 2, 9, 7)}


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def repack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes uint8 [N, K] (values < 2**bits) -> repacked int32 [N_pad/128, K/128, 512*bits]."""
    _check_repackable(bits, codes.shape[1])
    n, k = codes.shape
    n_pad = padded_out_features(n)
    if n_pad != n:
        codes = torch.nn.functional.pad(codes, (0, 0, 0, n_pad - n))
    fields = 32 // bits
    shifts = torch.arange(fields, device=codes.device, dtype=torch.int64) * bits
    nt = n_pad // TILE_N
    src = codes.to(torch.int64).reshape(nt, *_SOURCE_SHAPE[bits][:3], k // TILE_K, *_SOURCE_SHAPE[bits][4:])
    frag = src.permute(_TO_FRAGMENT[bits]).reshape(nt, k // TILE_K, -1, fields)
    words = (frag << shifts).sum(-1)  # disjoint fields: sum == OR
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unrepack_codes(words: torch.Tensor, bits: int, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`repack_codes`: int32 [N_pad/128, K/128, 512*bits] -> uint8 codes [N, K]."""
    _check_repackable(bits, in_features)
    k = in_features
    n_pad = padded_out_features(out_features)
    expected = (n_pad // TILE_N, k // TILE_K, 512 * bits)
    if tuple(words.shape) != expected or words.dtype != torch.int32:
        raise ValueError(f"repacked weight has shape {tuple(words.shape)} dtype {words.dtype}; "
                         f"expected int32 {expected}")
    fields = 32 // bits
    shifts = torch.arange(fields, device=words.device, dtype=torch.int64) * bits
    frag = (words.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    target_shape = [words.shape[0], k // TILE_K] + [0] * (len(_TO_FRAGMENT[bits]) - 2)
    src_shape = (words.shape[0], *_SOURCE_SHAPE[bits][:3], k // TILE_K, *_SOURCE_SHAPE[bits][4:])
    for axis, src_axis in enumerate(_TO_FRAGMENT[bits]):
        target_shape[axis] = src_shape[src_axis]
    codes = frag.reshape(target_shape).permute(_inverse(_TO_FRAGMENT[bits])).reshape(n_pad, k)
    return codes[:out_features].to(torch.uint8)


def repack_weight(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                  weight_zero_point: Optional[torch.Tensor], bits: int, group_size: int, in_features: int,
                  dtype: torch.dtype) -> MmaRepackedWeight:
    """Stored format (``formats.lowbit``) -> :class:`MmaRepackedWeight` for activations of ``dtype``.

    Scales are cast to ``dtype`` (the kernel multiplies in it; exact when they are stored in it).
    """
    group_size = canonical_group_size(group_size)
    check_choice("dtype", dtype, REPACK_DTYPES)
    _check_repackable(bits, in_features)
    n = check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                     weight_packed.device)
    pad = padded_out_features(n) - n
    # Row blocks of whole n-tiles keep the int64 temporaries of unpack/repack bounded for large layers.
    rows = TILE_N * max(1, _CHUNK_ELEMENTS // (TILE_N * in_features))
    words = torch.cat([repack_codes(unpack_codes(weight_packed[r:r + rows], bits, in_features), bits)
                       for r in range(0, n, rows)])

    def k_major(t):
        return torch.nn.functional.pad(t.to(dtype), (0, 0, 0, pad)).t().contiguous()

    zero = None if weight_zero_point is None else k_major(weight_zero_point)
    return MmaRepackedWeight(words, k_major(weight_scale), zero, bits, group_size, n, in_features)


def unrepack_weight(rw: MmaRepackedWeight):
    """Inverse of :func:`repack_weight`: (weight_packed, weight_scale in ``rw.dtype``, weight_zero_point)."""
    n, k = rw.out_features, rw.in_features
    packed = pack_codes(unrepack_codes(rw.weight, rw.bits, n, k), rw.bits)
    scale = rw.scale[:, :n].t().contiguous()
    zero = None if rw.zero is None else rw.zero[:, :n].t().to(torch.uint8).contiguous()
    return packed, scale, zero


def check_repacked(x, weight_repacked, scale_repacked, zero_repacked, bias, bits: int, group_size: int,
                   out_features: int) -> None:
    """Validate the arguments of ``llmlite::lowbit_linear_repacked`` (names each bad argument)."""
    check_tensor("x", x, dtypes=REPACK_DTYPES, contiguous=True)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., in_features], got shape {tuple(x.shape)}")
    k = x.shape[-1]
    _check_repackable(bits, k)
    group_size = canonical_group_size(group_size)
    check_positive_int("out_features", out_features)
    n_pad = padded_out_features(out_features)
    check_tensor("weight_repacked", weight_repacked, dtypes=(torch.int32,), ndim=3, contiguous=True, device=x.device)
    expected = (n_pad // TILE_N, k // TILE_K, 512 * bits)
    if tuple(weight_repacked.shape) != expected:
        raise ValueError(f"weight_repacked has shape {tuple(weight_repacked.shape)}; expected {expected}")
    g = k if group_size == -1 else group_size
    groups = -(-k // g)
    check_tensor("scale_repacked", scale_repacked, dtypes=(x.dtype,), ndim=2, contiguous=True, device=x.device)
    if tuple(scale_repacked.shape) != (groups, n_pad):
        raise ValueError(f"scale_repacked has shape {tuple(scale_repacked.shape)}; expected {(groups, n_pad)}")
    if zero_repacked is not None:
        check_tensor("zero_repacked", zero_repacked, dtypes=(x.dtype,), ndim=2, contiguous=True, device=x.device)
        if tuple(zero_repacked.shape) != (groups, n_pad):
            raise ValueError(f"zero_repacked has shape {tuple(zero_repacked.shape)}; expected {(groups, n_pad)}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=(x.dtype,), ndim=1, contiguous=True, device=x.device)
        if bias.shape[0] != out_features:
            raise ValueError(f"bias has {bias.shape[0]} elements; expected out_features={out_features}")
