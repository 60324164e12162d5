"""2:4 compressed format, its ops (reference, CPU C++, Triton under the interpreter), Sparse24Linear,
compress_24_ and save/load."""
import functools
import os

import pytest
import torch
from torch import nn

import llmlite_kernels as L
from llmlite_kernels.formats import sparse24 as S
from llmlite_kernels.nn import Sparse24Linear, SparseLinear
from llmlite_kernels.ops import kernel_for, triton_backend
from llmlite_kernels.ops.reference import sparse24_linear_ref, sparse24_lowbit_linear_ref
from llmlite_kernels.prune import compress_24_, nm_mask

from conftest import TOLERANCES, assert_close_rel

ODD_K = (70, 33, 128)  # quads straddling meta words, K % 4 != 0 (padding), whole words
N = 37


def pruned_24(n, k, dtype=torch.float32):
    """Random [n, k] weight with the 2 smallest |w| of every quad zeroed (K % 4 != 0: last quad padded)."""
    q = S._quads(torch.randn(n, k))
    q = q.scatter(-1, q.abs().argsort(-1)[..., :2], 0.0)
    return q.reshape(n, -1)[:, :k].contiguous().to(dtype)


def cpu_isas():
    hw = torch.ops.llmlite.cpu_isa() if kernel_for("cpu", "sparse24_linear") == "cpu_cpp" else None
    order = ["scalar", "avx2", "avx512"]
    return [] if hw is None else order[:order.index(hw) + 1]


# ---------------------------------------------------------------------------------------------- format
@pytest.mark.parametrize("k", (4, 7, 33, 70, 128))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_round_trip_is_bit_exact(k, dtype):
    w = pruned_24(9, k, dtype)
    w[0] = 0  # empty quads
    w[1, 1::4] = 0  # quads with a single non-zero
    c = S.compress(w)
    assert c.values.shape == (9, S.kept_features(k)) and c.values.dtype == dtype
    assert c.meta.shape == (9, (k + 31) // 32) and c.meta.dtype == torch.int32
    assert torch.equal(S.decompress(c.values, c.meta, k).view(torch.int16 if dtype != torch.float32 else torch.int32),
                       w.view(torch.int16 if dtype != torch.float32 else torch.int32))


def test_meta_bit_layout():
    """Quad t's indices (first, second) are the nibble at bits 4*(t%8) of word t//8, low 2 bits first."""
    k = 40  # 10 quads: word 0 holds quads 0..7, word 1 quads 8..9
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (0, 3), (1, 2), (2, 3), (0, 1)]
    w = torch.zeros(1, k)
    for t, (a, b) in enumerate(pairs):
        w[0, 4 * t + a], w[0, 4 * t + b] = 1.0 + t, -1.0 - t
    c = S.compress(w)
    words = [0, 0]
    for t, (a, b) in enumerate(pairs):
        words[t // 8] |= (a | (b << 2)) << (4 * (t % 8))
    expect = torch.tensor([words], dtype=torch.int64)
    assert torch.equal(c.meta.to(torch.int64) & 0xFFFFFFFF, expect)
    assert torch.equal(c.values[0, 0::2], torch.arange(1.0, 11.0)) and torch.equal(c.values[0, 1::2], -torch.arange(1.0, 11.0))


def test_not_24_sparse_names_the_weight():
    w = pruned_24(4, 16)
    w[2, 5] = w[2, 6] = w[2, 7] = 1.0
    with pytest.raises(ValueError, match=r"layers\.3\.mlp\.up_proj is not 2:4 sparse.*row 2, columns 4\.\.7"):
        S.compress(w, name="layers.3.mlp.up_proj")
    with pytest.raises(ValueError, match="fc is not 2:4 sparse"):
        Sparse24Linear.from_linear(nn.Linear(16, 4), name="fc")


def test_lowbit_size_is_about_a_fifth_of_fp16():
    w = pruned_24(256, 2048)
    c = S.compress_lowbit(w, bits=4, group_size=128)
    ratio = c.nbytes / (w.numel() * 2)
    assert 0.18 < ratio < 0.21, ratio
    assert S.compress(w.half()).nbytes / (w.numel() * 2) == pytest.approx(9 / 16)


# ---------------------------------------------------------------------------------------------- reference + autograd
def test_reference_is_dense_matmul():
    w, x, b = pruned_24(N, 70), torch.randn(3, 5, 70), torch.randn(N)
    c = S.compress(w)
    assert_close_rel(sparse24_linear_ref(x, c.values, c.meta, b), x @ w.t() + b)
    lw = S.compress_lowbit(w, bits=4, group_size=32)
    p = lw.packed
    ref = x @ lw.decompress().t() + b
    assert_close_rel(sparse24_lowbit_linear_ref(x, p.weight_packed, p.weight_scale, p.weight_zero_point, lw.meta, b,
                                                4, 32), ref)


@pytest.mark.parametrize("lowbit", (False, True))
def test_gradients_match_dense_autograd(lowbit):
    layer = Sparse24Linear.from_linear(_linear(pruned_24(N, 70)), bits=4 if lowbit else None, group_size=32)
    x = torch.randn(4, 70, requires_grad=True)
    layer(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    b2 = layer.bias.detach().clone().requires_grad_(True)
    nn.functional.linear(x2, layer.decompress(), b2).square().sum().backward()
    assert_close_rel(x.grad, x2.grad, tol=1e-5)
    assert_close_rel(layer.bias.grad, b2.grad, tol=1e-5)


def _operands(lowbit, k, dtype, bias=True, bits=4, group_size=32, symmetric=False):
    w = pruned_24(N, k)
    b = torch.randn(N, dtype=dtype) if bias else None
    if not lowbit:
        c = S.compress(w.to(dtype))
        return (c.values, c.meta), b
    c = S.compress_lowbit(w, bits=bits, group_size=group_size, symmetric=symmetric)
    p = c.packed
    return (p.weight_packed, p.weight_scale, p.weight_zero_point, c.meta), b


def _call(lowbit, x, weights, b, bits=4, group_size=32):
    if not lowbit:
        return torch.ops.llmlite.sparse24_linear(x, *weights, b)
    return torch.ops.llmlite.sparse24_lowbit_linear(x, *weights, b, bits, group_size)


def _ref(lowbit, x, weights, b, bits=4, group_size=32):
    if not lowbit:
        return sparse24_linear_ref(x, *weights, b)
    return sparse24_lowbit_linear_ref(x, *weights, b, bits, group_size)


@pytest.mark.parametrize("lowbit", (False, True))
def test_opcheck(lowbit):
    weights, b = _operands(lowbit, 70, torch.float32)
    for x, bias in ((torch.randn(3, 70), b), (torch.randn(2, 2, 70), None)):
        op = torch.ops.llmlite.sparse24_lowbit_linear if lowbit else torch.ops.llmlite.sparse24_linear
        args = (x, *weights, bias) + ((4, 32) if lowbit else ())
        torch.library.opcheck(op, args)


# ---------------------------------------------------------------------------------------------- CPU C++
pytestmark_cpu = pytest.mark.skipif(not cpu_isas(), reason="llmlite_kernels._C (CPU C++) not loaded")


@pytestmark_cpu
def test_cpu_kernel_is_registered():
    assert kernel_for("cpu", "sparse24_linear") == "cpu_cpp"
    assert kernel_for("cpu", "sparse24_lowbit_linear") == "cpu_cpp"


@pytestmark_cpu
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("k", ODD_K)
def test_cpu_sparse24_linear(monkeypatch, isa, dtype, k):
    monkeypatch.setenv("LLMLITE_CPU_ISA", isa)
    weights, b = _operands(False, k, dtype)
    for m in (1, 3, 8, 17):  # GEMV batches and the tiled path
        x = torch.randn(m, k).to(dtype)
        assert_close_rel(_call(False, x, weights, b if m != 3 else None), _ref(False, x, weights, b if m != 3 else None))


@pytestmark_cpu
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 32, False), (4, -1, True), (4, 128, False),
                                                        (2, 64, False), (3, 32, True), (8, 256, False)])
def test_cpu_sparse24_lowbit_linear(monkeypatch, isa, bits, group_size, symmetric):
    monkeypatch.setenv("LLMLITE_CPU_ISA", isa)
    for k in ODD_K:
        weights, b = _operands(True, k, torch.float32, bits=bits, group_size=group_size, symmetric=symmetric)
        for m in (1, 5, 17):
            x = torch.randn(m, k)
            assert_close_rel(_call(True, x, weights, b, bits, group_size),
                             _ref(True, x, weights, b, bits, group_size))


@pytestmark_cpu
def test_cpu_leading_dims_and_empty_batch():
    weights, b = _operands(False, 70, torch.float32)
    x = torch.randn(2, 3, 70)
    assert_close_rel(_call(False, x, weights, b), _ref(False, x, weights, b))
    assert _call(False, torch.randn(0, 70), weights, b).shape == (0, N)


@pytest.mark.parametrize("lowbit", (False, True))
def test_bad_inputs_name_the_argument(lowbit):
    weights, b = _operands(lowbit, 70, torch.float32)
    x = torch.randn(2, 70)
    meta = weights[-1]
    bad_meta = [*weights[:-1], meta[:, :1].contiguous()]
    with pytest.raises(ValueError, match="meta"):
        _call(lowbit, x, bad_meta, b)
    with pytest.raises(TypeError, match="meta"):
        _call(lowbit, x, [*weights[:-1], meta.to(torch.int64)], b)
    with pytest.raises(ValueError, match="bias"):
        _call(lowbit, x, weights, torch.randn(N + 1))
    with pytest.raises(TypeError, match="bias"):
        _call(lowbit, x, weights, b.half())
    with pytest.raises(ValueError, match="meta|values|weight_packed"):
        _call(lowbit, torch.randn(2, 128), weights, b)  # in_features does not match the stored weight
    if not lowbit:
        with pytest.raises(TypeError, match="values"):
            _call(lowbit, x, [weights[0].half(), meta], b)
    else:
        with pytest.raises(ValueError, match="bits"):
            _call(lowbit, x, weights, b, bits=5)
    for fn in (sparse24_linear_ref,) if not lowbit else ():
        with pytest.raises(ValueError, match="meta"):
            fn(x, weights[0], bad_meta[-1], b)


# ---------------------------------------------------------------------------------------------- Triton (interpreter)
def _triton():
    kernels, why = triton_backend.load()
    if kernels is None:
        pytest.skip(f"Triton kernels unavailable: {why}")
    return kernels


@pytest.fixture
def nan_buffers(monkeypatch):
    """Every float buffer from torch.empty (the kernels' outputs) starts as NaN."""
    empty = torch.empty

    @functools.wraps(empty)
    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)


TRITON_GEMV = {"kernel": "gemv", "block_m": 4, "block_n": 32, "block_k": 64}
TRITON_GEMM = {"kernel": "gemm", "block_m": 16, "block_n": 32, "block_k": 64}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
@pytest.mark.parametrize("config,m", [(TRITON_GEMV, 1), (TRITON_GEMV, 3), (TRITON_GEMM, 17)], ids=["gemv1", "gemv3", "gemm17"])
def test_triton_w24_linear(nan_buffers, dtype, config, m):
    kernels = _triton()
    k = 198  # 3 K-tiles of 64, the last partial; K % 4 != 0
    weights, b = _operands(False, k, dtype)
    weights = [t.to(DEVICE) for t in weights]
    x, b = torch.randn(m, k).to(dtype).to(DEVICE), b.to(DEVICE)
    out = kernels.w24_linear(x, *weights, b, config=config)
    assert_close_rel(out, sparse24_linear_ref(x, *weights, b), tol=max(TOLERANCES[dtype], 1e-5 if dtype == torch.float32 else 0))


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 32, False), (4, -1, True), (8, 128, False)])
@pytest.mark.parametrize("config,m", [(TRITON_GEMV, 2), (TRITON_GEMM, 17)], ids=["gemv2", "gemm17"])
def test_triton_w24_lowbit_linear(nan_buffers, bits, group_size, symmetric, config, m):
    kernels = _triton()
    k = 198
    weights, b = _operands(True, k, torch.float16, bits=bits, group_size=group_size, symmetric=symmetric)
    weights = [None if t is None else t.to(DEVICE) for t in weights]
    x = torch.randn(m, k).half().to(DEVICE)
    out = kernels.w24_lowbit_linear(x, *weights, b.to(DEVICE), bits, group_size, config=config)
    assert_close_rel(out, sparse24_lowbit_linear_ref(x, *weights, b.to(DEVICE), bits, group_size), dtype=torch.float16)


# ---------------------------------------------------------------------------------------------- layer, model, io
def _linear(weight, bias=True):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    lin.weight.data.copy_(weight)
    return lin


@pytest.mark.parametrize("bits", (None, 4))
def test_layer_from_linear_and_sparse_linear(bits):
    dense = nn.Linear(64, N)
    mask = nm_mask(dense.weight.detach().abs(), 2, 4)
    sparse = SparseLinear.from_linear(dense, mask)
    layer = Sparse24Linear.from_sparse(sparse, bits=bits, group_size=32)
    x = torch.randn(5, 64)
    ref = nn.functional.linear(x, sparse.masked_weight(), sparse.bias)
    tol = 1e-5 if bits is None else 0.15  # 4-bit RTN of the kept values
    assert_close_rel(layer(x).detach(), ref.detach(), tol=tol)
    assert_close_rel(layer(x).detach(), nn.functional.linear(x, layer.decompress(), layer.bias).detach(), tol=1e-5)
    again = Sparse24Linear.from_linear(_linear(layer.decompress().detach()), bits=None)
    assert again.values.shape == (N, 32)


def test_compress_24_tiny_model_save_load(tmp_path):
    from tiny_models import tiny_model, tokens

    model = tiny_model("llama").eval()
    L.prune_(model, L.PruneConfig(method="magnitude", pattern="2:4"), progress=False)
    ids = tokens()
    with torch.no_grad():
        before = model(ids).logits
    names = compress_24_(model, bits=None)
    assert names and all(isinstance(model.get_submodule(n), Sparse24Linear) for n in names)
    with torch.no_grad():
        after = model(ids).logits
    assert_close_rel(after, before, tol=1e-5)
    L.save(model, str(tmp_path / "m"))
    loaded, _ = L.load(str(tmp_path / "m"), with_tokenizer=False)
    for n in names:
        a, b = model.get_submodule(n), loaded.get_submodule(n)
        assert isinstance(b, Sparse24Linear) and torch.equal(a.values, b.values) and torch.equal(a.meta, b.meta)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, after)


def test_compress_24_int4_and_errors(tmp_path):
    from tiny_models import tiny_model, tokens

    model = tiny_model("llama").eval()
    with pytest.raises(ValueError, match="no 2:4-sparse"):
        compress_24_(model)
    L.prune_(model, L.PruneConfig(method="magnitude", pattern="2:4"), progress=False)
    names = compress_24_(model, bits=4, group_size=32)
    layer = model.get_submodule(names[0])
    assert layer.bits == 4 and layer.weight_packed.dtype == torch.int32
    L.save(model, str(tmp_path / "q"))
    loaded, _ = L.load(str(tmp_path / "q"), with_tokenizer=False)
    ids = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ---------------------------------------------------------------------------------------------- CUDA C++ (model)
def _mma_sp_kernel_model(x, values, meta, n_rows):
    """What csrc/cuda/sparse24_mma_sp.cu computes, lane by lane: each warp's register loads (as the kernel
    indexes them) assembled into mma.sp m16n8k32 operands by the PTX fragment layout, multiplied densely."""
    m, k = x.shape
    k2, words = k // 2, k // 32
    out = torch.zeros(m, n_rows, dtype=torch.float64)
    vals, meta_u = values.double(), meta.to(torch.int64) & 0xFFFFFFFF
    for row0 in range(0, n_rows, 16):
        for tok0 in range(0, m, 8):
            d = torch.zeros(16, 8, dtype=torch.float64)
            for w in range(words):
                a = torch.zeros(16, 16, dtype=torch.float64)  # compressed A, from the lanes' a0..a3
                e = {}  # (g, t) -> metadata register
                bt = torch.zeros(8, 32, dtype=torch.float64)  # B^T (token, k), from the lanes' b0..b3
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    r_lo, r_hi = row0 + g, row0 + g + 8
                    c = w * 16 + 2 * t

                    def pair(r, col):
                        return vals[r, col:col + 2] if r < n_rows else torch.zeros(2, dtype=torch.float64)
                    a[g, 2 * t:2 * t + 2], a[g + 8, 2 * t:2 * t + 2] = pair(r_lo, c), pair(r_hi, c)
                    a[g, 2 * t + 8:2 * t + 10], a[g + 8, 2 * t + 8:2 * t + 10] = pair(r_lo, c + 8), pair(r_hi, c + 8)
                    m_lo = int(meta_u[r_lo, w]) if r_lo < n_rows else 0
                    m_hi = int(meta_u[r_hi, w]) if r_hi < n_rows else 0
                    half = (t & 1) * 16
                    e[g, t] = ((m_lo >> half) & 0xFFFF) | (((m_hi >> half) & 0xFFFF) << 16)
                    tok = tok0 + g
                    for i in range(4):
                        if tok < m:
                            bt[g, 8 * i + 2 * t:8 * i + 2 * t + 2] = x[tok, w * 32 + 8 * i + 2 * t:w * 32 + 8 * i + 2 * t + 2].double()
                # Metadata (selector 0): row r < 8 from lanes (r, 0) [cols 0..7] and (r, 1) [cols 8..15], low
                # halves; row r >= 8 from the high halves of lanes (r - 8, 0 / 1).
                dense = torch.zeros(16, 32, dtype=torch.float64)
                for r in range(16):
                    for col in range(16):
                        reg = e[r % 8, col // 8] >> (16 * (r // 8))
                        idx = (reg >> (2 * (col % 8))) & 3
                        dense[r, 4 * (col // 2) + idx] += a[r, col]
                d += dense @ bt.t()
            for r in range(16):
                for j in range(8):
                    if row0 + r < n_rows and tok0 + j < m:
                        out[tok0 + j, row0 + r] = d[r, j]
    return out


def test_mma_sp_kernel_model_matches_reference():
    n, k, m = 20, 64, 11  # a partial 16-row block and a partial 8-token tile
    c = S.compress(pruned_24(n, k, torch.float16))
    x = torch.randn(m, k).half()
    ref = sparse24_linear_ref(x, c.values, c.meta, None)
    assert_close_rel(_mma_sp_kernel_model(x, c.values, c.meta, n).to(torch.float16), ref, dtype=torch.float16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not torch._C._dispatch_has_kernel_for_dispatch_key(
    "llmlite::sparse24_mma_sp_linear", "CUDA"), reason="needs a GPU and llmlite_kernels._C_cuda")
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_mma_sp_cuda(dtype):
    for n, k, m in ((72, 96, 17), (4096, 4096, 256)):
        c = S.compress(pruned_24(n, k, dtype).cuda())
        x, b = torch.randn(m, k, dtype=dtype, device="cuda"), torch.randn(n, dtype=dtype, device="cuda")
        out = torch.ops.llmlite.sparse24_mma_sp_linear(x, c.values, c.meta, b)
        assert_close_rel(out, sparse24_linear_ref(x, c.values, c.meta, b))
    torch.library.opcheck(torch.ops.llmlite.sparse24_mma_sp_linear, (x[:5], c.values, c.meta, b))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("m", (1, 7, 64, 300))
def test_dispatched_ops_cuda(dtype, m):
    """The registered CUDA ops (Triton GEMV/GEMM, mma.sp for large M) at a Llama-like size, plus opcheck."""
    assert L.backends()["triton_sparse24"]["active"], L.backends()["triton_sparse24"]
    n, k = 1024, 4096
    w = pruned_24(n, k).cuda()
    c = S.compress(w.to(dtype))
    x, b = torch.randn(m, k, dtype=dtype, device="cuda"), torch.randn(n, dtype=dtype, device="cuda")
    assert_close_rel(torch.ops.llmlite.sparse24_linear(x, c.values, c.meta, b),
                     sparse24_linear_ref(x, c.values, c.meta, b))
    lw = S.compress_lowbit(w, bits=4, group_size=128)
    p = lw.packed
    args = (x, p.weight_packed, p.weight_scale, p.weight_zero_point, lw.meta, b, 4, 128)
    assert_close_rel(torch.ops.llmlite.sparse24_lowbit_linear(*args), sparse24_lowbit_linear_ref(*args), dtype=dtype)
    if m == 7:
        torch.library.opcheck(torch.ops.llmlite.sparse24_linear, (x, c.values, c.meta, b))
        torch.library.opcheck(torch.ops.llmlite.sparse24_lowbit_linear, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    layer = Sparse24Linear.from_linear(_linear(pruned_24(N, 64)), bits=4, group_size=32)
    dense = Sparse24Linear.from_linear(_linear(pruned_24(N, 64)))
    f = torch.compile(lambda x: dense(layer(x)[..., :32].repeat(1, 2)), fullgraph=True)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert_close_rel(f(x), dense(layer(x)[..., :32].repeat(1, 2)), tol=1e-6)


@pytest.mark.parametrize("m", (1, 20))
def test_triton_default_configs(nan_buffers, m):
    """The launchers' default block sizes (GEMV: 256 kept values per tile = whole groups of 32; GEMM)."""
    kernels = _triton()
    k = 198
    weights, b = _operands(True, k, torch.float16, bits=4, group_size=32)
    weights = [None if t is None else t.to(DEVICE) for t in weights]
    x = torch.randn(m, k).half().to(DEVICE)
    out = kernels.w24_lowbit_linear(x, *weights, b.to(DEVICE), 4, 32)
    assert_close_rel(out, sparse24_lowbit_linear_ref(x, *weights, b.to(DEVICE), 4, 32), dtype=torch.float16)
    dense, b = _operands(False, k, torch.float16)
    out = kernels.w24_linear(x, *[t.to(DEVICE) for t in dense], b.to(DEVICE))
    assert_close_rel(out, sparse24_linear_ref(x, *[t.to(DEVICE) for t in dense], b.to(DEVICE)))
