"""CPU tests of the CUDA GEMM's weight repack (formats/mma_repack.py) and of the kernel's index logic.

Besides the bit-exact round trip, the kernel's reads are emulated in torch from the *thread's* side:
for every (warp, lane, k-step, tile, element) the word and bit field the CUDA code reads, decoded with
the same magic-number / byte-permute arithmetic, placed at the (n, k) the PTX mma.m16n8k16 B-fragment
layout assigns to that register element. The result must equal the reference dequantization exactly.
"""
import pytest
import torch

from llmlite_kernels.formats import quantize
from llmlite_kernels.formats.lowbit import dequantize
from llmlite_kernels.formats.mma_repack import (TILE_K, TILE_N, padded_out_features, repack_codes, repack_weight,
                                                unrepack_codes, unrepack_weight)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _u32(x: int) -> int:
    return x & 0xFFFFFFFF


def byte_perm(x: torch.Tensor, y: int, selector: int) -> torch.Tensor:
    """CUDA ``__byte_perm`` on int64 tensors holding 32-bit words."""
    both = (x & 0xFFFFFFFF) | (y << 32)
    out = torch.zeros_like(x)
    for i in range(4):
        src = (selector >> (4 * i)) & 7
        out |= ((both >> (8 * src)) & 0xFF) << (8 * i)
    return out


def half_of(reg: torch.Tensor, high: torch.Tensor, dtype) -> torch.Tensor:
    """The low or high 16-bit half of a 32-bit register, as a ``dtype`` value (returned in float32)."""
    bits16 = (reg >> (16 * high)) & 0xFFFF
    bits16 = torch.where(bits16 >= 2**15, bits16 - 2**16, bits16).to(torch.int16)
    return bits16.view(dtype).float()


def decode_like_kernel(word, t, r, bits, dtype, scale, zero):
    """Element r of tile t from the lane's word(s), as the kernel's ``Dequant<T, BITS>`` computes it."""
    hi_half = r % 2
    scale = scale.to(dtype)
    if bits == 4 and dtype == torch.float16:
        src = word >> (8 * t)                          # lo = w (tile 0), hi = w >> 8 (tile 1)
        mask = torch.where(r < 2, 0x000F000F, 0x00F000F0)
        v = half_of((src & mask) | 0x64006400, hi_half, dtype)
        q_minus_z = torch.where(r < 2, v - (1024 + zero), v * (1 / 16) - (64 + zero))
    elif bits == 4:
        src = word >> (4 * (2 * t + r // 2))
        v = half_of((src & 0x000F000F) | 0x43004300, hi_half, dtype)
        q_minus_z = v - (128 + zero)
    elif dtype == torch.float16:
        reg = torch.where(r < 2, byte_perm(word, 0x64646464, 0x4240), byte_perm(word, 0x64646464, 0x4341))
        q_minus_z = half_of(reg, hi_half, dtype) - (1024 + zero)
    else:
        byte = torch.tensor([0, 2, 1, 3])[r]
        f = torch.zeros_like(word)
        for p in range(4):
            f = torch.where(byte == p, byte_perm(word, 0x4B000000, 0x7440 | p), f)
        f = torch.where(f >= 2**31, f - 2**32, f).to(torch.int32).view(torch.float32)
        q_minus_z = (f - (8388608.0 + zero)).to(dtype).float()
    # The integer step is exact in every path; the scale multiply is the one rounding (in dtype).
    return (q_minus_z.to(dtype) * scale).float()


def emulate_kernel_weight(rw, dtype):
    """W [N, K] as the CUDA kernel's lanes see it, built from the lanes' side of the mapping."""
    bits, n, k = rw.bits, rw.out_features, rw.in_features
    n_tiles, k_tiles = rw.weight.shape[0], rw.weight.shape[1]
    g = rw.kernel_group_size
    grid = torch.meshgrid(torch.arange(n_tiles), torch.arange(k_tiles), torch.arange(8), torch.arange(32),
                          torch.arange(4), torch.arange(2), torch.arange(4), indexing="ij")
    nt, kt, warp, lane, j, t, r = (a.reshape(-1) for a in grid)
    # Which 16-byte vector v and component c of the lane hold k-step j (tile t): see compute_stage.
    lane_vectors = bits // 4
    word_of_lane = j if bits == 4 else 2 * j + t
    v, c = word_of_lane // 4, word_of_lane % 4
    flat = ((warp * lane_vectors + v) * 32 + lane) * 4 + c
    words = rw.weight.to(torch.int64).reshape(n_tiles, k_tiles, -1)[nt, kt, flat] & 0xFFFFFFFF
    # Scale row staged for this k-tile (g0, plus the second row at j >= 2 when g == 32), lane's column.
    col = nt * TILE_N + warp * 16 + t * 8 + lane // 4
    group_row = kt * TILE_K // g + torch.where(torch.tensor(g == 32) & (j >= 2), 1, 0)
    scale = rw.scale[group_row, col].float()
    zero = (rw.zero[group_row, col].float() if rw.zero is not None
            else torch.full_like(scale, 2 ** (bits - 1)))
    vals = decode_like_kernel(words, t, r, bits, dtype, scale, zero)
    # PTX m16n8k16 B fragment: b{r}: k = 2*(lane%4) + r%2 + 8*(r//2), n = lane//4.
    n_idx = col
    k_idx = kt * TILE_K + 16 * j + 2 * (lane % 4) + r % 2 + 8 * (r // 2)
    w = torch.full((padded_out_features(n), k), float("nan"))
    w[n_idx, k_idx] = vals
    return w[:n]


CASES = [  # (bits, group_size, symmetric, N, K)
    (4, 32, False, 72, 192), (4, 64, True, 200, 128), (4, 128, False, 136, 320), (4, -1, True, 72, 192),
    (4, 256, False, 40, 384), (8, 32, True, 72, 192), (8, 64, False, 130, 64), (8, 128, True, 72, 320),
    (8, -1, False, 264, 128),
]


def _ids(case):
    bits, g, sym, n, k = case
    return f"w{bits}-g{g}-{'sym' if sym else 'asym'}-{n}x{k}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_round_trip_bit_exact(case):
    bits, g, sym, n, k = case
    pw = quantize(torch.randn(n, k), bits=bits, group_size=g, symmetric=sym, scale_dtype=torch.float16)
    rw = repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, torch.float16)
    n_pad = padded_out_features(n)
    assert rw.weight.shape == (n_pad // TILE_N, k // TILE_K, 256 * bits) and rw.weight.dtype == torch.int32
    assert rw.scale.shape == (pw.weight_scale.shape[1], n_pad)
    packed, scale, zero = unrepack_weight(rw)
    assert torch.equal(packed, pw.weight_packed)
    assert torch.equal(scale, pw.weight_scale)
    assert (zero is None) == sym and (sym or torch.equal(zero, pw.weight_zero_point))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_kernel_view_matches_reference_dequant(case, dtype):
    bits, g, sym, n, k = case
    pw = quantize(torch.randn(n, k), bits=bits, group_size=g, symmetric=sym, scale_dtype=dtype)
    rw = repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, dtype)
    ref = dequantize(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, torch.float32)
    got = emulate_kernel_weight(rw, dtype)
    assert not torch.isnan(got).any(), "some (n, k) is read by no lane"
    assert torch.equal(got, ref.to(dtype).float())


def test_every_code_value_and_position_is_distinct():
    """Codes that encode their own position: a permutation error cannot cancel out."""
    for bits in (4, 8):
        n, k = 256, 128
        codes = (torch.arange(n * k).reshape(n, k) * 7 + torch.arange(n).unsqueeze(1)) % (2**bits)
        words = repack_codes(codes.to(torch.uint8), bits)
        assert torch.equal(unrepack_codes(words, bits, n, k), codes.to(torch.uint8))
        # One-hot codes: exactly one nonzero field in the whole buffer, at the position the layout defines.
        for (nn, kk) in ((0, 0), (129, 63), (77, 100), (255, 127)):
            one = torch.zeros(n, k, dtype=torch.uint8)
            one[nn, kk] = 1
            w = repack_codes(one, bits).to(torch.int64) & 0xFFFFFFFF
            nz = w.nonzero()
            assert nz.shape[0] == 1
            nt, kt, word = nz[0].tolist()
            assert (nt, kt) == (nn // TILE_N, kk // TILE_K)
            warp, col, t = (nn % TILE_N) // 16, nn % 8, (nn % 16) // 8
            kr = kk % 16
            lane, r, j = 4 * col + (kr % 8) // 2, kr % 2 + 2 * (kr // 8), (kk % TILE_K) // 16
            wi = j if bits == 4 else 2 * j + t
            assert word == ((warp * (bits // 4) + wi // 4) * 32 + lane) * 4 + wi % 4
            field = (2 * t + r // 2) + 4 * (r % 2) if bits == 4 else r // 2 + 2 * (r % 2)
            assert w[nt, kt, word].item() == 1 << (field * bits)


def test_ldmatrix_addresses_give_the_mma_a_fragment():
    """The kernel's swizzled activation staging + ldmatrix.x4 addresses deliver the PTX A fragment."""
    rows, mb_count = 64, 4
    logical = torch.arange(rows * TILE_K).reshape(rows, TILE_K)  # each element names itself
    smem = torch.empty(rows * 8, 8, dtype=torch.int64)
    for r in range(rows):  # load_stage: chunk c of row r -> chunk c ^ (r % 8)
        for c in range(8):
            smem[r * 8 + (c ^ (r & 7))] = logical[r, c * 8:(c + 1) * 8]
    for mb in range(mb_count):
        for j in range(4):
            addr = []
            for lane in range(32):  # compute_stage: a_row, a_chunk_hi
                r = mb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8
                addr.append(r * 8 + ((2 * j + (lane >> 4)) ^ (r & 7)))
            for lane in range(32):
                for i in range(4):  # register i <- matrix i, row lane/4 from lane 8i + lane/4
                    chunk = smem[addr[8 * i + lane // 4]]
                    for e in range(2):
                        got = chunk[2 * (lane % 4) + e].item()
                        row = mb * 16 + lane // 4 + 8 * (i & 1)
                        kk = 16 * j + 2 * (lane % 4) + e + 8 * (i >> 1)
                        assert got == logical[row, kk].item()


def _stripes(n_tiles, k_tiles, slots_available):
    """Mirror of lowbit_a16_gemm_plan + the kernel's tile ownership arithmetic."""
    total = n_tiles * k_tiles
    blocks = min(slots_available, total)
    per_block = -(-total // blocks)
    blocks = -(-total // per_block)
    max_slots = -(-(k_tiles - 1) // per_block) + 1
    return blocks, per_block, max_slots


@pytest.mark.parametrize("n_tiles,k_tiles,avail", [(32, 64, 264), (224, 128, 264), (1, 3, 264), (7, 5, 3),
                                                    (48, 64, 132), (1, 1, 1), (3, 200, 16)])
def test_striped_partition_covers_each_unit_once(n_tiles, k_tiles, avail):
    blocks, per_block, max_slots = _stripes(n_tiles, k_tiles, avail)
    assert blocks <= avail
    owners = {}
    for b in range(blocks):
        for u in range(b * per_block, min((b + 1) * per_block, n_tiles * k_tiles)):
            owners.setdefault(u // k_tiles, set()).add(b)
    assert sum(len(range(b * per_block, min((b + 1) * per_block, n_tiles * k_tiles))) for b in range(blocks)) \
        == n_tiles * k_tiles
    for nt in range(n_tiles):
        first, last = nt * k_tiles // per_block, (nt * k_tiles + k_tiles - 1) // per_block
        assert owners[nt] == set(range(first, last + 1))  # the arrival count the last block waits for
        assert last - first + 1 <= max_slots


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(bits=3), ValueError, "bits"), (dict(bits=2), ValueError, "bits"),
    (dict(k=96), ValueError, "multiple of 64"), (dict(dtype=torch.float32), ValueError, "dtype"),
])
def test_repack_rejects_unsupported(kwargs, exc, match):
    bits, k, dtype = kwargs.get("bits", 4), kwargs.get("k", 128), kwargs.get("dtype", torch.float16)
    pw = quantize(torch.randn(72, k), bits=bits, group_size=32)
    with pytest.raises(exc, match=match):
        repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, 32, k, dtype)


def test_unrepack_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected int32"):
        unrepack_codes(torch.zeros(1, 2, 1024, dtype=torch.int32), 4, 72, 192)


# ---- the lowbit_linear_repacked op and the backend module, on the CPU reference ------------------------

def _repacked_case(bits=4, g=32, sym=False, n=72, k=192, dtype=torch.float16):
    pw = quantize(torch.randn(n, k), bits=bits, group_size=g, symmetric=sym, scale_dtype=dtype)
    rw = repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, dtype)
    return pw, rw


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES[:4] + CASES[5:7], ids=_ids)
def test_repacked_op_matches_lowbit_linear_and_opcheck(case, dtype):
    from llmlite_kernels.ops import lowbit_linear_ref

    bits, g, sym, n, k = case
    pw, rw = _repacked_case(bits, g, sym, n, k, dtype)
    x = torch.randn(2, 3, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    args = (x, rw.weight, rw.scale, rw.zero, bias, bits, g, n)
    out = torch.ops.llmlite.lowbit_linear_repacked(*args)
    ref = lowbit_linear_ref(x, pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bias, bits, g)
    assert torch.equal(out, ref)
    torch.library.opcheck(torch.ops.llmlite.lowbit_linear_repacked, args)


@pytest.mark.parametrize("change,exc,match", [
    (dict(x=torch.randn(3, 192)), TypeError, "x has dtype"),
    (dict(x=torch.randn(3, 128, dtype=torch.float16)), ValueError, "weight_repacked has shape"),
    (dict(scale=torch.ones(6, 128, dtype=torch.bfloat16)), TypeError, "scale_repacked"),
    (dict(zero=torch.ones(5, 128, dtype=torch.float16)), ValueError, "zero_repacked has shape"),
    (dict(bias=torch.ones(71, dtype=torch.float16)), ValueError, "bias has 71"),
    (dict(out_features=200), ValueError, "weight_repacked has shape"),
    (dict(bits=3), ValueError, "bits"),
])
def test_repacked_op_rejects_bad_arguments(change, exc, match):
    _, rw = _repacked_case()
    args = dict(x=torch.randn(3, 192, dtype=torch.float16), weight=rw.weight, scale=rw.scale, zero=rw.zero,
                bias=None, bits=4, g=32, out_features=72)
    args.update(change)
    with pytest.raises(exc, match=match):
        torch.ops.llmlite.lowbit_linear_repacked(*args.values())


def test_backend_supports_and_caches_the_repack():
    from llmlite_kernels.ops import cuda_cpp_backend as cpp
    from llmlite_kernels.ops import lowbit_linear_ref

    assert cpp.supports(4, 128, True, torch.float16, 1, 4096, 4096)
    assert cpp.supports(8, -1, False, torch.bfloat16, 64, 72, 192)
    assert not cpp.supports(3, 128, True, torch.float16, 1, 4096, 4096)
    assert not cpp.supports(4, 128, True, torch.float32, 1, 4096, 4096)
    assert not cpp.supports(4, 32, True, torch.float16, 1, 4096, 4000)
    assert cpp.available() == (cpp._ext is not None and torch.cuda.is_available())
    pw, _ = _repacked_case()
    x = torch.randn(5, 192, dtype=torch.float16)
    args = (pw.weight_packed, pw.weight_scale, pw.weight_zero_point, None, 4, 32)
    out = cpp.lowbit_linear(x, *args)  # runs the op's CPU reference here; the kernel on a GPU
    assert torch.equal(out, lowbit_linear_ref(x, *args))
    first = cpp._CACHE[id(pw.weight_packed)][2]
    cpp.lowbit_linear(x, *args)
    assert cpp._CACHE[id(pw.weight_packed)][2] is first  # no second repack
    pw.weight_packed.add_(0)  # in-place change bumps the version: repacked again
    cpp.lowbit_linear(x, *args)
    assert cpp._CACHE[id(pw.weight_packed)][2] is not first
    ident = id(pw.weight_packed)
    del pw, args
    assert ident not in cpp._CACHE  # dropped with the tensor


def test_repack_in_row_blocks_equals_one_block(monkeypatch):
    import llmlite_kernels.formats.mma_repack as mr

    pw = quantize(torch.randn(700, 192), bits=4, group_size=64)
    args = (pw.weight_packed, pw.weight_scale, pw.weight_zero_point, 4, 64, 192, torch.float16)
    whole = mr.repack_weight(*args)
    monkeypatch.setattr(mr, "_CHUNK_ELEMENTS", TILE_N * 192 * 2)  # 2 n-tiles per block: 3 blocks
    assert torch.equal(mr.repack_weight(*args).weight, whole.weight)
