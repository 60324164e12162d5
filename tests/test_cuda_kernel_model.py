"""CPU checks of the CUDA GEMM's index logic through a torch model of the kernel (tests/cuda_kernel_model.py).

The kernel cannot run here; its model does, from the threads' side: the weight every lane decodes
must equal the reference dequantization bit for bit, the activation fragments ldmatrix delivers must be
the PTX A fragments of x, the striped partition must cover every unit once, and the whole GEMM (M
slices, split-K partial slots, arrival counters, bias, poisoned output) must match the reference.
"""
import pytest
import torch

from cuda_kernel_model import CASES, DTYPES, case_id, emulate_kernel_weight, ldmatrix_x4_a, model_gemm, stage_activations, stripes
from conftest import assert_close_rel
from llmlite_kernels.formats import quantize
from llmlite_kernels.formats.lowbit import dequantize
from llmlite_kernels.formats.mma_repack import TILE_K, repack_weight
from llmlite_kernels.ops import lowbit_linear_ref


def _repacked(bits, g, sym, n, k, dtype):
    pw = quantize(torch.randn(n, k), bits=bits, group_size=g, symmetric=sym, scale_dtype=dtype)
    return pw, repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_lanes_decode_the_reference_weight_exactly(case, dtype):
    bits, g, sym, n, k = case
    pw, rw = _repacked(bits, g, sym, n, k, dtype)
    ref = dequantize(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, torch.float32)
    got = emulate_kernel_weight(rw, dtype)
    assert not torch.isnan(got).any(), "some (n, k) is read by no lane"
    assert torch.equal(got, ref.to(dtype).float())


def test_ldmatrix_delivers_the_ptx_a_fragment():
    rows, k = 64, 256
    x = torch.arange(rows * k, dtype=torch.float64).reshape(rows, k)  # every element names itself
    lane = torch.arange(32)
    g, q = lane // 4, lane % 4
    for kt in range(k // TILE_K):
        smem = stage_activations(x, kt, 4)
        for mb in range(4):
            for j in range(TILE_K // 16):
                a = ldmatrix_x4_a(smem, mb, j)
                for i in range(8):  # PTX: a_i at row g + 8*((i>>1)&1), col 2q + (i&1) + 8*(i>>2)
                    row = mb * 16 + g + 8 * ((i >> 1) & 1)
                    col = kt * TILE_K + 16 * j + 2 * q + (i & 1) + 8 * (i >> 2)
                    assert torch.equal(a[:, i], x[row, col])


@pytest.mark.parametrize("n_tiles,k_tiles,avail", [(32, 64, 264), (224, 128, 264), (1, 3, 264), (7, 5, 3),
                                                    (48, 64, 132), (1, 1, 1), (3, 200, 16)])
def test_striped_partition_covers_each_unit_once(n_tiles, k_tiles, avail):
    blocks, per_block, max_slots = stripes(n_tiles, k_tiles, avail)
    assert blocks <= avail
    covered = torch.zeros(n_tiles * k_tiles, dtype=torch.int64)
    owners = {}
    for b in range(blocks):
        units = range(b * per_block, min((b + 1) * per_block, n_tiles * k_tiles))
        assert len(units) > 0
        covered[list(units)] += 1
        for u in units:
            owners.setdefault(u // k_tiles, set()).add(b)
    assert (covered == 1).all()
    for nt in range(n_tiles):
        first, last = nt * k_tiles // per_block, (nt * k_tiles + k_tiles - 1) // per_block
        assert owners[nt] == set(range(first, last + 1))  # the arrival count the last block waits for
        assert last - first + 1 <= max_slots


GEMM_CASES = [  # (M, N, K, bits, group, symmetric, dtype, resident blocks)
    (3, 200, 640, 4, 64, False, torch.float16, 4),      # 2 n-tiles x 5 k-tiles in stripes of 3: partials
    (17, 72, 256, 8, 32, True, torch.bfloat16, 264),    # one block per tile: direct writes, 2 MMA row blocks
    (70, 136, 384, 4, 128, False, torch.bfloat16, 3),   # two M slices (64 + 6 rows), 4 row blocks, partials
    (1, 130, 128, 8, -1, False, torch.float16, 5),      # per-channel, N just past a tile, odd N
    (33, 40, 384, 4, 256, True, torch.float16, 2),      # partial last group (384 = 256 + 128)
    (5, 72, 256, 4, 32, False, torch.float16, 2),       # g = 32: four groups per k-tile
]


@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: f"M{c[0]}-N{c[1]}-K{c[2]}-w{c[3]}-g{c[4]}-b{c[7]}")
def test_model_gemm_matches_reference(case):
    m, n, k, bits, g, sym, dtype, resident = case
    pw, rw = _repacked(bits, g, sym, n, k, dtype)
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    out = model_gemm(x, rw, bias, resident)
    ref = lowbit_linear_ref(x, pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bias, bits, g)
    assert_close_rel(out.float(), ref.float(), dtype)
