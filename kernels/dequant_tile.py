"""Triton device helper shared by every low-bit kernel: load a [BLOCK_N, BLOCK_K] tile of the packed
weight (``llmlite_kernels.formats.lowbit``, read as stored, no repack) and dequantize it to float32.

Code ``k`` of row ``n`` sits at bits ``[k*BITS, k*BITS + BITS)`` of the row's little-endian bit stream
(int32 words, ``words_per_row`` per row). For BITS in {2, 4, 8} a word holds ``32 // BITS`` whole codes,
so the tile is loaded as ``[BLOCK_N, BLOCK_K * BITS // 32]`` contiguous words and each word is split by
shifts; 3-bit codes may straddle two words: a block of 32 codes is a triple of words, loaded as three
tensors and split by selects and shifts (``_codes_gather``, one load per code, is the generic fallback).
"""
import triton
import triton.language as tl


@triton.jit
def _codes_pow2(packed_ptr, offs_n, k0, n_mask, words_per_row, BLOCK_K: tl.constexpr, BITS: tl.constexpr):
    """Codes [BLOCK_N, BLOCK_K] (int32) of columns k0 .. k0+BLOCK_K for BITS in {2, 4, 8}; k0 % BLOCK_K == 0."""
    PER_WORD: tl.constexpr = 32 // BITS
    BLOCK_W: tl.constexpr = BLOCK_K // PER_WORD
    offs_w = k0 // PER_WORD + tl.arange(0, BLOCK_W)
    # Words past the row end hold no codes; the caller zeroes the scale of columns >= K.
    mask = n_mask[:, None] & (offs_w[None, :] < words_per_row)
    words = tl.load(packed_ptr + offs_n[:, None].to(tl.int64) * words_per_row + offs_w[None, :], mask=mask, other=0)
    shifts = tl.arange(0, PER_WORD) * BITS
    # [BLOCK_N, BLOCK_W, PER_WORD] -> [BLOCK_N, BLOCK_K]: column w*PER_WORD + j is code j of word w
    # (little-endian), the same order as k. Arithmetic shift is fine: the mask drops the sign bits.
    codes = (words[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(codes, (offs_n.shape[0], BLOCK_K))


@triton.jit
def _codes_3bit(packed_ptr, offs_n, k0, n_mask, words_per_row, BLOCK_K: tl.constexpr):
    """Codes [BLOCK_N, BLOCK_K] (int32) for 3 bits; BLOCK_K % 32 == 0 and k0 % BLOCK_K == 0.

    32 codes fill exactly 3 words, so the tile is BLOCK_K // 32 word triples (w0, w1, w2), loaded as three
    [BLOCK_N, BLOCK_K // 32] tensors; code j of a triple starts at bit 3*j, in word 3*j // 32 at shift
    3*j % 32, and codes 10 and 21 straddle into the next word of the triple.
    """
    TRIPLES: tl.constexpr = BLOCK_K // 32
    offs_w = (k0 // 32 + tl.arange(0, TRIPLES)) * 3
    row = packed_ptr + offs_n[:, None].to(tl.int64) * words_per_row + offs_w[None, :]
    w0 = tl.load(row, mask=n_mask[:, None] & (offs_w[None, :] < words_per_row), other=0)
    w1 = tl.load(row + 1, mask=n_mask[:, None] & (offs_w[None, :] + 1 < words_per_row), other=0)
    w2 = tl.load(row + 2, mask=n_mask[:, None] & (offs_w[None, :] + 2 < words_per_row), other=0)
    w0 = w0.to(tl.uint32, bitcast=True)[:, :, None]
    w1 = w1.to(tl.uint32, bitcast=True)[:, :, None]
    w2 = w2.to(tl.uint32, bitcast=True)[:, :, None]
    j = tl.arange(0, 32)
    word = ((3 * j) // 32)[None, None, :]
    shift = ((3 * j) % 32)[None, None, :]
    lo = tl.where(word == 0, w0, tl.where(word == 1, w1, w2))
    hi = tl.where(word == 0, w1, w2)
    straddles = shift > 29
    codes = (lo >> shift.to(tl.uint32)) | tl.where(straddles, hi << ((32 - shift) & 31).to(tl.uint32), 0)
    codes = (codes & 7).to(tl.int32)  # [BLOCK_N, TRIPLES, 32]
    return tl.reshape(codes, (offs_n.shape[0], BLOCK_K))


@triton.jit
def _codes_gather(packed_ptr, offs_n, offs_k, mask, words_per_row, BITS: tl.constexpr):
    """Codes [BLOCK_N, BLOCK_K] (int32) for any BITS: each code read from its word, plus the next word
    when it straddles (3-bit)."""
    bitpos = offs_k * BITS
    word = bitpos >> 5
    shift = (bitpos & 31)[None, :]
    row = packed_ptr + offs_n[:, None].to(tl.int64) * words_per_row
    lo = tl.load(row + word[None, :], mask=mask, other=0).to(tl.uint32, bitcast=True)
    codes = lo >> shift.to(tl.uint32)
    if 32 % BITS != 0:
        straddles = shift > 32 - BITS
        hi = tl.load(row + word[None, :] + 1, mask=mask & straddles, other=0).to(tl.uint32, bitcast=True)
        # (32 - shift) & 31 keeps the shift amount legal where the code does not straddle (masked to 0 anyway).
        codes = codes | tl.where(straddles, hi << ((32 - shift) & 31).to(tl.uint32), 0)
    return (codes & ((1 << BITS) - 1)).to(tl.int32)


@triton.jit
def dequant_tile(packed_ptr, scale_ptr, zero_ptr, offs_n, k0, N, K, words_per_row, num_groups,
                 BLOCK_K: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Dequantized weight tile W[offs_n, k0:k0+BLOCK_K] as float32 [BLOCK_N, BLOCK_K]; 0 outside [N, K].

    GROUP is the group size (a power of two), or 0 for per-channel (one group per row). BLOCK_K and GROUP
    are powers of two and k0 a multiple of BLOCK_K, so a tile either lies inside one group (per-channel, or
    BLOCK_K <= GROUP: one scale/zero point per row) or holds BLOCK_K // GROUP whole groups (one load of
    [BLOCK_N, groups] scales, broadcast over the tile viewed as [BLOCK_N, groups, GROUP]).
    """
    offs_k = k0 + tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    k_mask = offs_k < K
    mask = n_mask[:, None] & k_mask[None, :]
    if 32 % BITS == 0:
        q = _codes_pow2(packed_ptr, offs_n, k0, n_mask, words_per_row, BLOCK_K, BITS)
    elif BITS == 3 and BLOCK_K % 32 == 0:
        q = _codes_3bit(packed_ptr, offs_n, k0, n_mask, words_per_row, BLOCK_K)
    else:
        q = _codes_gather(packed_ptr, offs_n, offs_k, mask, words_per_row, BITS)
    row = offs_n.to(tl.int64) * num_groups
    if GROUP == 0 or BLOCK_K <= GROUP:
        if GROUP == 0:
            group = 0
        else:
            group = k0 // GROUP
        s = tl.load(scale_ptr + row + group, mask=n_mask, other=0).to(tl.float32)[:, None]
        if SYMMETRIC:
            z = 1 << (BITS - 1)
        else:
            z = tl.load(zero_ptr + row + group, mask=n_mask, other=0).to(tl.float32)[:, None]
        # Columns >= K get weight 0 (their codes may be row-end padding or the next row's bits).
        s = tl.where(k_mask[None, :], s, 0.0)
        w = (q.to(tl.float32) - z) * s
    else:
        # BLOCK_K // GROUP whole groups per tile: one scale/zero point per (row, group), applied to the
        # tile viewed as [BLOCK_N, groups, GROUP].
        GROUPS: tl.constexpr = BLOCK_K // GROUP
        offs_g = k0 // GROUP + tl.arange(0, GROUPS)
        g_mask = n_mask[:, None] & (offs_g[None, :] < num_groups)
        idx = row[:, None] + offs_g[None, :]
        s = tl.load(scale_ptr + idx, mask=g_mask, other=0).to(tl.float32)[:, :, None]
        if SYMMETRIC:
            z = 1 << (BITS - 1)
        else:
            z = tl.load(zero_ptr + idx, mask=g_mask, other=0).to(tl.float32)[:, :, None]
        q3 = tl.reshape(q, (offs_n.shape[0], GROUPS, GROUP)).to(tl.float32)
        w = tl.reshape((q3 - z) * s, (offs_n.shape[0], BLOCK_K))
        # Columns >= K of the partial last group share its scale: zero them explicitly.
        w = tl.where(k_mask[None, :], w, 0.0)
    return w
