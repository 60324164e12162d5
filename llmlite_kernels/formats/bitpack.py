"""Dense little-endian bit packing of unsigned integer codes into int32 words.

Row layout (the compressed-tensors ``pack-quantized`` convention, extended densely to 3 bits):
code ``i`` of a row occupies bits ``[i*b, i*b + b)`` of the row's bit stream, where bit ``j`` of the
stream is bit ``j % 32`` of word ``j // 32``. A row of ``K`` codes takes ``ceil(K*b/32)`` words; the
unused high bits of the last word are zero. A 3-bit code may straddle two words.
"""
from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def packed_words(num_codes: int, bits: int) -> int:
    """Number of int32 words holding ``num_codes`` codes of ``bits`` bits."""
    return (num_codes * bits + 31) // 32


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes`` (integer tensor [..., K], values in [0, 2**bits)) into int32 [..., ceil(K*bits/32)]."""
    k = codes.shape[-1]
    lead = codes.shape[:-1]
    codes = codes.reshape(-1, k).to(torch.int64)
    pos = torch.arange(k, device=codes.device, dtype=torch.int64) * bits
    word, shift = pos // 32, pos % 32
    nwords = packed_words(k, bits)
    # Fields are disjoint, so adding them is the same as OR-ing them; int64 holds the 32-bit words.
    out = torch.zeros(codes.shape[0], nwords + 1, dtype=torch.int64, device=codes.device)
    idx = word.expand_as(codes)
    out.scatter_add_(1, idx, (codes << shift) & 0xFFFFFFFF)
    spill = codes >> (32 - shift)  # the part of a code that runs into the next word (0 if none)
    out.scatter_add_(1, idx + 1, torch.where(shift + bits > 32, spill, torch.zeros_like(spill)))
    out = out[:, :nwords]
    out = torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)
    return out.reshape(*lead, nwords)


def unpack_codes(packed: torch.Tensor, bits: int, num_codes: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 [..., W] -> uint8 codes [..., num_codes]."""
    lead = packed.shape[:-1]
    words = packed.reshape(-1, packed.shape[-1]).to(torch.int64) & 0xFFFFFFFF
    words = torch.cat([words, torch.zeros_like(words[:, :1])], dim=1)
    pos = torch.arange(num_codes, device=packed.device, dtype=torch.int64) * bits
    word, shift = pos // 32, pos % 32
    pair = words[:, word] | (words[:, word + 1] << 32)
    codes = (pair >> shift) & ((1 << bits) - 1)
    return codes.to(torch.uint8).reshape(*lead, num_codes)
