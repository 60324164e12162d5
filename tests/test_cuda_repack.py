"""CPU tests of the CUDA GEMM's weight repack (formats/mma_repack.py), its op and its backend module.

The bit-exact round trip, one-hot positions, argument errors, the ``lowbit_linear_repacked`` op on its
CPU reference (+ opcheck), and the backend's repack cache. The kernel's own index logic is checked
through its torch model in test_cuda_kernel_model.py.
"""
import pytest
import torch

from cuda_kernel_model import CASES, DTYPES, case_id
from llmlite_kernels.formats import quantize
from llmlite_kernels.formats.mma_repack import (TILE_K, TILE_N, padded_out_features, repack_codes, repack_weight,
                                                unrepack_codes, unrepack_weight)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_round_trip_bit_exact(case):
    bits, g, sym, n, k = case
    pw = quantize(torch.randn(n, k), bits=bits, group_size=g, symmetric=sym, scale_dtype=torch.float16)
    rw = repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, torch.float16)
    n_pad = padded_out_features(n)
    assert rw.weight.shape == (n_pad // TILE_N, k // TILE_K, 512 * bits) and rw.weight.dtype == torch.int32
    assert rw.scale.shape == (pw.weight_scale.shape[1], n_pad)
    packed, scale, zero = unrepack_weight(rw)
    assert torch.equal(packed, pw.weight_packed)
    assert torch.equal(scale, pw.weight_scale)
    assert (zero is None) == sym and (sym or torch.equal(zero, pw.weight_zero_point))


def test_every_code_value_and_position_is_distinct():
    """Codes that encode their own position: a permutation error cannot cancel out."""
    for bits in (4, 8):
        n, k = 256, 256
        codes = (torch.arange(n * k).reshape(n, k) * 7 + torch.arange(n).unsqueeze(1)) % (2**bits)
        words = repack_codes(codes.to(torch.uint8), bits)
        assert torch.equal(unrepack_codes(words, bits, n, k), codes.to(torch.uint8))
        # One-hot codes: exactly one nonzero field in the whole buffer, at the position the layout defines.
        for (nn, kk) in ((0, 0), (129, 63), (77, 100), (255, 255), (3, 200)):
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
            assert word == ((warp * (bits // 2) + wi // 4) * 32 + lane) * 4 + wi % 4
            field = (2 * t + r // 2) + 4 * (r % 2) if bits == 4 else r // 2 + 2 * (r % 2)
            assert w[nt, kt, word].item() == 1 << (field * bits)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(bits=3), ValueError, "bits"), (dict(bits=2), ValueError, "bits"),
    (dict(k=192), ValueError, "multiple of 128"), (dict(dtype=torch.float32), ValueError, "dtype"),
])
def test_repack_rejects_unsupported(kwargs, exc, match):
    bits, k, dtype = kwargs.get("bits", 4), kwargs.get("k", 128), kwargs.get("dtype", torch.float16)
    pw = quantize(torch.randn(72, k), bits=bits, group_size=32)
    with pytest.raises(exc, match=match):
        repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, 32, k, dtype)


def test_unrepack_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected int32"):
        unrepack_codes(torch.zeros(1, 3, 2048, dtype=torch.int32), 4, 72, 256)


# ---- the lowbit_linear_repacked op and the backend module, on the CPU reference ------------------------

def _repacked_case(bits=4, g=32, sym=False, n=72, k=256, dtype=torch.float16):
    pw = quantize(torch.randn(n, k), bits=bits, group_size=g, symmetric=sym, scale_dtype=dtype)
    rw = repack_weight(pw.weight_packed, pw.weight_scale, pw.weight_zero_point, bits, g, k, dtype)
    return pw, rw


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES[:4] + CASES[5:7], ids=case_id)
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
    (dict(x=torch.randn(3, 256)), TypeError, "x has dtype"),
    (dict(x=torch.randn(3, 128, dtype=torch.float16)), ValueError, "weight_repacked has shape"),
    (dict(scale=torch.ones(8, 128, dtype=torch.bfloat16)), TypeError, "scale_repacked"),
    (dict(zero=torch.ones(5, 128, dtype=torch.float16)), ValueError, "zero_repacked has shape"),
    (dict(bias=torch.ones(71, dtype=torch.float16)), ValueError, "bias has 71"),
    (dict(out_features=200), ValueError, "weight_repacked has shape"),
    (dict(bits=3), ValueError, "bits"),
])
def test_repacked_op_rejects_bad_arguments(change, exc, match):
    _, rw = _repacked_case()
    args = dict(x=torch.randn(3, 256, dtype=torch.float16), weight=rw.weight, scale=rw.scale, zero=rw.zero,
                bias=None, bits=4, g=32, out_features=72)
    args.update(change)
    with pytest.raises(exc, match=match):
        torch.ops.llmlite.lowbit_linear_repacked(*args.values())


def test_backend_supports_and_caches_the_repack():
    from llmlite_kernels.ops import cuda_cpp_backend as cpp
    from llmlite_kernels.ops import lowbit_linear_ref

    assert cpp.supports(4, 128, True, torch.float16, 1, 4096, 4096)
    assert cpp.supports(8, -1, False, torch.bfloat16, 64, 72, 256)
    assert not cpp.supports(8, -1, False, torch.bfloat16, 64, 72, 192)
    assert not cpp.supports(3, 128, True, torch.float16, 1, 4096, 4096)
    assert not cpp.supports(4, 128, True, torch.float32, 1, 4096, 4096)
    assert not cpp.supports(4, 32, True, torch.float16, 1, 4096, 4000)
    assert cpp.available() == (cpp._ext is not None and torch.cuda.is_available())
    pw, _ = _repacked_case()
    x = torch.randn(5, 256, dtype=torch.float16)
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

    pw = quantize(torch.randn(700, 256), bits=4, group_size=64)
    args = (pw.weight_packed, pw.weight_scale, pw.weight_zero_point, 4, 64, 256, torch.float16)
    whole = mr.repack_weight(*args)
    monkeypatch.setattr(mr, "_CHUNK_ELEMENTS", TILE_N * 256 * 2)  # 2 n-tiles per block: 3 blocks
    assert torch.equal(mr.repack_weight(*args).weight, whole.weight)
