"""The packed low-bit format: bit layout, round trips, quantization rule, partial groups, bad input."""
import pytest
import torch

from llmlite_kernels.formats import (SUPPORTED_BITS, dequantize, num_groups, pack_codes, packed_words, quantize,
                                     unpack_codes)

GROUPS = (32, 64, 128, 256, -1)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("k", [1, 7, 32, 33, 100, 576, 1001])
def test_pack_unpack_round_trip_is_bit_exact(bits, k):
    codes = torch.randint(0, 2**bits, (5, k))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, packed_words(k, bits))
    assert torch.equal(unpack_codes(packed, bits, k).long(), codes)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_bit_layout_is_little_endian_dense(bits):
    """A one-hot code at position i sets exactly bits [i*b, i*b+b) of the row's bit stream."""
    k = 70
    for i in (0, 1, 10, 31, 69):
        codes = torch.zeros(1, k, dtype=torch.int64)
        codes[0, i] = 2**bits - 1
        words = pack_codes(codes, bits)[0].tolist()
        stream = sum((w & 0xFFFFFFFF) << (32 * j) for j, w in enumerate(words))
        assert stream == (2**bits - 1) << (i * bits)


def test_three_bit_codes_straddle_words():
    codes = torch.zeros(1, 11, dtype=torch.int64)
    codes[0, 10] = 0b101  # bits 30..32: low two bits in word 0, top bit in word 1
    words = pack_codes(codes, 3)[0]
    assert (words[0].item() & 0xFFFFFFFF) == 0b01 << 30 and words[1].item() == 0b1


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_error_is_within_a_step(bits, group_size, symmetric):
    w = torch.randn(24, 200)  # 200 = partial last group for every group size
    p = quantize(w, bits, group_size, symmetric)
    g = 200 if group_size == -1 else group_size
    assert p.weight_scale.shape == (24, num_groups(200, group_size))
    assert (p.weight_zero_point is None) == symmetric
    s = p.weight_scale.float().repeat_interleave(g, 1)[:, :200]
    err = (p.dequantize() - w).abs()
    # Rounding costs at most half a step inside the grid; the rounded zero point / the symmetric grid's
    # missing top level can clip an end by at most half a step more.
    assert (err <= s * 1.001).all()
    assert (err / s).mean() < 0.3  # rounding of uniformly spread values averages a quarter step


def test_partial_group_uses_its_own_columns():
    w = torch.randn(3, 576) * 0.01
    w[:, 512:] *= 100  # the partial last group (64 columns at g128) has a much larger range
    p = quantize(w, 4, 128, False)
    full = quantize(w[:, 512:], 4, 64, False)
    assert torch.equal(p.weight_scale[:, -1], full.weight_scale[:, 0])
    assert p.weight_scale[:, 0].max() < p.weight_scale[:, -1].min()


@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_group_dequantizes_to_exact_zeros(symmetric):
    w = torch.randn(4, 256)
    w[1, 64:128] = 0
    w[2] = 0
    p = quantize(w, 4, 64, symmetric)
    d = p.dequantize()
    assert torch.isfinite(p.weight_scale.float()).all()
    assert (d[1, 64:128] == 0).all() and (d[2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_dtype_follows_weight(dtype):
    p = quantize(torch.randn(8, 64).to(dtype), 4, 32)
    assert p.weight_scale.dtype == (torch.bfloat16 if dtype == torch.bfloat16 else torch.float16)
    p32 = quantize(torch.randn(8, 64), 4, 32, scale_dtype=torch.float32)
    assert p32.weight_scale.dtype == torch.float32


def test_dequantize_matches_formula():
    w = torch.randn(5, 96)
    p = quantize(w, 3, 32, False)
    q = unpack_codes(p.weight_packed, 3, 96).float()
    z = p.weight_zero_point.float().repeat_interleave(32, 1)
    s = p.weight_scale.float().repeat_interleave(32, 1)
    assert torch.equal(dequantize(p.weight_packed, p.weight_scale, p.weight_zero_point, 3, 32, 96), (q - z) * s)


def test_w4_g128_bytes_ratio_vs_fp16():
    p = quantize(torch.randn(1536, 576), 4, 128, False)
    assert p.nbytes / (1536 * 576 * 2) <= 0.27


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(bits=5), ValueError, "bits"),
    (dict(bits=4, group_size=48), ValueError, "group_size"),
    (dict(bits=4, symmetric=1), TypeError, "symmetric"),
])
def test_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        quantize(torch.randn(4, 64), **kwargs)


def test_bad_weights():
    with pytest.raises(TypeError, match="weight has dtype int32"):
        quantize(torch.ones(4, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        quantize(torch.randn(64))
    with pytest.raises(ValueError, match="empty"):
        quantize(torch.randn(0, 64))
    w = torch.randn(4, 64)
    w[2, 3] = float("nan")
    with pytest.raises(ValueError, match="layers.0.q_proj contains NaN or Inf"):
        quantize(w, name="layers.0.q_proj")
    w[2, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(w)
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize([[1.0, 2.0]])
