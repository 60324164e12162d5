"""2:4 compressed weight format (pure torch; this file defines it), dense and with int4 values.

A weight ``W`` [N, K] is 2:4 sparse when every run of 4 consecutive columns of a row (a *quad*,
columns ``4t .. 4t+3``) holds at most 2 non-zeros. It is stored as:

* ``values`` [N, K4/2] in the weight's dtype: the 2 kept entries of every quad, in column order
  (``values[n, 2t]`` before ``values[n, 2t+1]``). ``K4 = ceil(K/4)*4``.
* ``meta`` int32 [N, ceil(K/32)]: the column of each kept entry inside its quad, 2 bits each.
  Kept entry ``j`` of a row (``values[n, j]``, quad ``j // 2``) has its index at bits
  ``[2*(j % 16), 2*(j % 16) + 2)`` of word ``j // 16`` (little-endian), so quad ``t`` is the nibble
  at bits ``[4*(t % 8), 4*(t % 8) + 4)`` of word ``t // 8``: low 2 bits = first index, high 2 bits =
  second index, first < second. This is the nibble layout of the sparse tensor cores' metadata
  (``mma.sp``), before their per-fragment interleaving. Unused high bits of a row's last word are 0.
  Decoding: ``W[n, 4*(j//2) + idx(n, j)] = values[n, j]``; every other entry is 0.

A quad with fewer than 2 non-zeros keeps its non-zero (if any) plus the lowest free columns, which
store 0, so every quad has exactly two indices and the kernels never branch on the pattern.

``K`` not a multiple of 4: the row is padded with zero columns up to ``K4`` (the last quad is
partial); its kept indices may point at padding columns, whose value is then 0 and whose activation
the kernels read as 0. ``values`` therefore has ``K4/2`` columns; ``in_features`` (``K``) is carried by
the layer / the activations.

Round trip: ``decompress(compress(W)) == W`` exactly (up to the sign of a -0.0 that is not kept).

2:4 + low-bit (``compress_lowbit``): ``values`` [N, K4/2] is quantized with the group-wise low-bit format
of :mod:`.lowbit` as a weight of ``in_features = K4/2``: groups of ``group_size`` *kept* values, scales
and zero points as there. At 4 bits, group 128, fp16 scales: 2 + 1 (meta) + 0.19 bits per weight =
about 1/5 of fp16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._checks import FLOAT_DTYPES, check_tensor
from .lowbit import PackedWeight, check_packed, dequantize, quantize

VALUES_PER_WORD = 16  # kept values whose indices one int32 meta word holds (8 quads, 32 columns)


def padded_in_features(in_features: int) -> int:
    """``K4``: ``in_features`` rounded up to a whole quad."""
    return (in_features + 3) // 4 * 4


def kept_features(in_features: int) -> int:
    """Columns of ``values``: 2 per quad."""
    return padded_in_features(in_features) // 2


def meta_words(in_features: int) -> int:
    """int32 words of metadata per row."""
    return (in_features + 31) // 32


@dataclass
class Sparse24Weight:
    """A 2:4-sparse ``[out_features, in_features]`` weight: kept values + 2-bit indices."""

    values: torch.Tensor
    meta: torch.Tensor
    shape: tuple

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.meta.numel() * 4

    def decompress(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return decompress(self.values, self.meta, self.shape[1], dtype)


@dataclass
class Sparse24LowbitWeight:
    """A 2:4-sparse weight whose kept values are in the low-bit format (``packed``: [N, K4/2] codes)."""

    packed: PackedWeight
    meta: torch.Tensor
    shape: tuple

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.meta.numel() * 4

    def decompress(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return decompress(self.packed.dequantize(dtype), self.meta, self.shape[1], dtype)


def _quads(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [N, K4/4, 4], zero-padded."""
    n, k = weight.shape
    pad = padded_in_features(k) - k
    if pad:
        weight = torch.nn.functional.pad(weight, (0, pad))
    return weight.reshape(n, -1, 4)


def is_24_sparse(weight: torch.Tensor) -> bool:
    """Whether every quad of ``weight`` [N, K] has at most 2 non-zeros."""
    return bool(((_quads(weight) != 0).sum(-1) <= 2).all())


def check_24_sparse(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise ValueError naming ``name`` and the first offending quad when ``weight`` is not 2:4 sparse."""
    counts = (_quads(weight) != 0).sum(-1)
    bad = (counts > 2).nonzero()
    if bad.numel():
        row, quad = (int(v) for v in bad[0])
        raise ValueError(f"{name} is not 2:4 sparse: {bad.shape[0]} groups of 4 columns have more than 2 "
                         f"non-zeros (first: row {row}, columns {4 * quad}..{4 * quad + 3} has "
                         f"{int(counts[row, quad])}); prune it with a 2:4 pattern first")


def _kept_indices(quads: torch.Tensor) -> torch.Tensor:
    """[N, T, 4] -> int64 [N, T, 2]: the non-zero columns first, then the lowest free ones, sorted."""
    nonzero = quads != 0
    # Rank columns: non-zeros before zeros, lower columns first within each kind; keep the first two.
    rank = (~nonzero).to(torch.int64) * 4 + torch.arange(4, device=quads.device)
    kept = rank.argsort(dim=-1)[..., :2]
    return kept.sort(dim=-1).values


def pack_meta(indices: torch.Tensor, in_features: int) -> torch.Tensor:
    """int64 [N, T, 2] quad indices -> int32 [N, ceil(K/32)] (layout in the module docstring)."""
    n = indices.shape[0]
    flat = indices.reshape(n, -1)  # kept entry j at position j
    words = meta_words(in_features)
    pad = words * VALUES_PER_WORD - flat.shape[1]
    flat = torch.nn.functional.pad(flat, (0, pad)).reshape(n, words, VALUES_PER_WORD)
    shifts = 2 * torch.arange(VALUES_PER_WORD, device=indices.device, dtype=torch.int64)
    packed = (flat << shifts).sum(-1)  # disjoint fields: sum == or
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_meta(meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_meta`: int32 [N, W] -> int64 [N, K4/2] index (0..3) of each kept value."""
    words = meta.to(torch.int64) & 0xFFFFFFFF
    shifts = 2 * torch.arange(VALUES_PER_WORD, device=meta.device, dtype=torch.int64)
    idx = (words[..., None] >> shifts) & 3
    return idx.reshape(meta.shape[0], -1)[:, :kept_features(in_features)]


def kept_columns(meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """int64 [N, K4/2]: the dense column (in ``[0, K4)``) of every kept value."""
    idx = unpack_meta(meta, in_features)
    quad = torch.arange(idx.shape[1], device=meta.device) // 2
    return 4 * quad + idx


def check_meta(meta, out_features: int, in_features: int, device=None) -> None:
    check_tensor("meta", meta, dtypes=(torch.int32,), ndim=2, contiguous=True, device=device)
    want = (out_features, meta_words(in_features))
    if tuple(meta.shape) != want:
        raise ValueError(f"meta has shape {tuple(meta.shape)}; for out_features={out_features}, "
                         f"in_features={in_features} expected {want}")


def check_values(values, in_features: int, dtypes=FLOAT_DTYPES, device=None) -> int:
    """Validate ``values`` [N, K4/2] for ``in_features``; returns N."""
    check_tensor("values", values, dtypes=dtypes, ndim=2, contiguous=True, device=device)
    if values.shape[1] != kept_features(in_features):
        raise ValueError(f"values has shape {tuple(values.shape)}; for in_features={in_features} expected "
                         f"[out_features, {kept_features(in_features)}] (2 per group of 4 columns)")
    return values.shape[0]


def compress(weight: torch.Tensor, name: str = "weight") -> Sparse24Weight:
    """Compress a 2:4-sparse ``weight`` [N, K] (ValueError naming ``name`` if it is not 2:4 sparse)."""
    check_tensor(name, weight, dtypes=FLOAT_DTYPES, ndim=2)
    if weight.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(weight.shape)}); nothing to compress")
    check_24_sparse(weight, name)
    n, k = weight.shape
    quads = _quads(weight)
    kept = _kept_indices(quads)
    values = quads.gather(-1, kept).reshape(n, -1).contiguous()
    return Sparse24Weight(values, pack_meta(kept, k), (n, k))


def decompress(values: torch.Tensor, meta: torch.Tensor, in_features: int,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The dense [N, in_features] weight (in ``dtype``, default ``values.dtype``)."""
    n = values.shape[0]
    cols = kept_columns(meta, in_features)
    dense = torch.zeros(n, padded_in_features(in_features), dtype=dtype or values.dtype, device=values.device)
    dense.scatter_(1, cols, values.to(dense.dtype))
    return dense[:, :in_features]


def compress_lowbit(weight: torch.Tensor, bits: int = 4, group_size=128, symmetric: bool = False,
                    scale_dtype: Optional[torch.dtype] = None, name: str = "weight") -> Sparse24LowbitWeight:
    """Compress a 2:4-sparse ``weight`` and round-to-nearest quantize its kept values (:func:`lowbit.quantize`)."""
    sparse = compress(weight, name)
    packed = quantize(sparse.values, bits=bits, group_size=group_size, symmetric=symmetric,
                      scale_dtype=scale_dtype, name=f"{name} (kept values)")
    return Sparse24LowbitWeight(packed, sparse.meta, sparse.shape)


def check_lowbit_values(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                        device=None) -> int:
    """Validate the low-bit kept values of a 2:4 weight of ``in_features`` columns; returns N."""
    return check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size,
                        kept_features(in_features), device)


def decompress_lowbit(weight_packed, weight_scale, weight_zero_point, meta, bits: int, group_size: int,
                      in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference: dequantize the kept values (float32), scatter them, return [N, in_features] in ``dtype``."""
    values = dequantize(weight_packed, weight_scale, weight_zero_point, bits, group_size,
                        kept_features(in_features), torch.float32)
    return decompress(values, meta, in_features, torch.float32).to(dtype)
