"""GPU tests of the CUDA C++ W4/W8 x fp16/bf16 tensor-core GEMM (csrc/cuda/lowbit_a16_gemm.cu).

Skipped unless a CUDA device is present and llmlite_kernels._C_cuda is loaded (see ops.backends()).
Outputs and the split-K workspace are poisoned: the caching allocator is first handed a NaN-filled
block, which the kernel's output and workspace then reuse, so any element left unwritten shows as NaN.

Memory checks (run once per kernel change, on a GPU machine):
  compute-sanitizer --tool memcheck  python -m pytest -q tests/test_cuda_kernels.py -k "odd and w4-g32" -p no:cacheprovider
  compute-sanitizer --tool racecheck python -m pytest -q tests/test_cuda_kernels.py -k "odd and w8-g128" -p no:cacheprovider
  compute-sanitizer --tool synccheck python -m pytest -q tests/test_cuda_kernels.py -k "split_k" -p no:cacheprovider
(set PYTORCH_NO_CUDA_MEMORY_CACHING=1 for memcheck to see out-of-bounds accesses inside pooled blocks;
the poisoning tests below then no longer poison, which is fine for that run.)
"""
import pytest
import torch

from llmlite_kernels.formats import quantize
from llmlite_kernels.ops import backends, cuda_cpp_backend as cpp, lowbit_linear_ref

from conftest import assert_close_rel
from cuda_kernel_model import stripes

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cpp.available(), reason=f"CUDA C++ backend inactive: {backends().get('cuda_cpp')}"),
]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
GROUPS = (32, 64, 128, 256, -1)


def _poison_allocator(out_shape, dtype, workspace_bytes):
    """Leave NaN-filled free blocks, of the output's exact size and of a workspace's, in an otherwise
    emptied caching allocator: the op's next allocations (output, then workspace) reuse them."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    junk_out = torch.full(out_shape, float("nan"), dtype=dtype, device="cuda")
    junk_ws = torch.full((workspace_bytes // 4 + 1,), float("nan"), device="cuda")
    del junk_out, junk_ws


def _workspace_bound(m, n, k):
    """Bytes of split-K partials the host plan can ask for (at most 4 resident blocks per SM)."""
    rows = min(m, 64)
    m_blocks = 1 if rows <= 16 else (2 if rows <= 32 else 4)
    n_tiles = -(-n // 128)
    _, _, max_slots = stripes(n_tiles, k // 128, 4 * torch.cuda.get_device_properties(0).multi_processor_count)
    return n_tiles * max_slots * m_blocks * 16 * 128 * 4


def make(n, k, bits, group_size, symmetric, dtype):
    w = torch.randn(n, k, device="cuda")
    scale_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    return quantize(w, bits, group_size, symmetric, scale_dtype=scale_dtype)


def run_and_check(m, n, k, bits, group_size, symmetric, dtype, with_bias=True, lead=(), weights=None):
    """Kernel vs reference on a fresh (or the given (PackedWeight, repacked)) weight; returns the call's data."""
    if weights is None:
        p = make(n, k, bits, group_size, symmetric, dtype)
        rw = cpp.prepare(p.weight_packed, p.weight_scale, p.weight_zero_point, bits, group_size, k, dtype)
    else:
        p, rw = weights
    x = torch.randn(*lead, m, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
    args = (p.weight_packed, p.weight_scale, p.weight_zero_point, bias, bits, group_size)
    ref = lowbit_linear_ref(x, *args)
    _poison_allocator((*lead, m, n), dtype, _workspace_bound(m, n, k))
    out = cpp.linear_repacked(x, rw, bias)
    torch.cuda.synchronize()
    assert out.dtype == dtype and out.shape == (*lead, m, n)
    assert_close_rel(out.float(), ref.float(), dtype)
    return out, x, rw, bias


def _id(v):
    return {True: "sym", False: "asym"}.get(v, str(v))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("symmetric", [True, False], ids=_id)
@pytest.mark.parametrize("bits,group_size", [(b, g) for b in (4, 8) for g in GROUPS],
                         ids=[f"w{b}-g{g}" for b in (4, 8) for g in GROUPS])
@pytest.mark.parametrize("m,n,k", [(1, 72, 256), (3, 200, 384), (17, 136, 512), (33, 72, 256), (64, 264, 384),
                                   (65, 40, 128), (130, 300, 640)], ids=lambda v: str(v))
def test_odd_shapes_match_reference(m, n, k, bits, group_size, symmetric, dtype):
    run_and_check(m, n, k, bits, group_size, symmetric, dtype)


LLAMA_SHAPES = {  # (N, K) of the linear layers, 8B and 70B
    "8b-qkv": (6144, 4096), "8b-o": (4096, 4096), "8b-gate_up": (28672, 4096), "8b-down": (4096, 14336),
    "70b-qkv": (10240, 8192), "70b-o": (8192, 8192), "70b-gate_up": (57344, 8192), "70b-down": (8192, 28672),
}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", LLAMA_SHAPES.values(), ids=LLAMA_SHAPES.keys())
def test_llama_shapes_w4_g128(shape, dtype):
    n, k = shape
    p = make(n, k, 4, 128, False, dtype)  # quantized and repacked once for the three batch sizes
    rw = cpp.prepare(p.weight_packed, p.weight_scale, p.weight_zero_point, 4, 128, k, dtype)
    for m in (1, 16, 64):
        run_and_check(m, n, k, 4, 128, False, dtype, weights=(p, rw))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", [1, 64])
def test_llama_shapes_w8_and_per_channel(bits, m):
    run_and_check(m, 4096, 4096, bits, -1, True, torch.float16)
    run_and_check(m, 4096, 14336, bits, 64, False, torch.bfloat16)


@pytest.mark.parametrize("m,n,k", [(1, 72, 8192), (5, 128, 16384), (64, 1000, 4096), (1, 130, 128 * 129)],
                         ids=str)
def test_split_k_reduction_and_determinism(m, n, k):
    """Few n-tiles and long K: every tile is shared by many blocks (the arrival-counter reduction)."""
    out, x, rw, bias = run_and_check(m, n, k, 4, 128, False, torch.float16)
    again = cpp.linear_repacked(x, rw, bias)
    assert torch.equal(out, again), "split-K result depends on block arrival order"


def test_leading_dims_no_bias_and_empty():
    run_and_check(5, 72, 256, 4, 32, False, torch.float16, with_bias=False, lead=(2,))
    p = make(72, 256, 4, 32, False, torch.float16)
    rw = cpp.prepare(p.weight_packed, p.weight_scale, p.weight_zero_point, 4, 32, 256, torch.float16)
    assert cpp.linear_repacked(torch.randn(0, 256, device="cuda", dtype=torch.float16), rw).shape == (0, 72)


def test_unaligned_activation_view():
    p = make(72, 256, 4, 64, True, torch.float16)
    buf = torch.randn(3 * 256 + 1, device="cuda", dtype=torch.float16)
    x = buf[1:].view(3, 256)  # data_ptr 2 bytes past an allocation: not 16-byte aligned
    args = (p.weight_packed, p.weight_scale, p.weight_zero_point, None, 4, 64)
    assert_close_rel(cpp.lowbit_linear(x, *args).float(), lowbit_linear_ref(x, *args).float(), torch.float16)


def test_backend_entry_point_caches_repack():
    p = make(200, 256, 8, 32, False, torch.bfloat16)
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    args = (p.weight_packed, p.weight_scale, p.weight_zero_point, None, 8, 32)
    out = cpp.lowbit_linear(x, *args)
    assert cpp._CACHE[id(p.weight_packed)][2].weight.is_cuda
    assert_close_rel(out.float(), lowbit_linear_ref(x, *args).float(), torch.bfloat16)


def test_one_hot_activations_decode_exact_weight_columns():
    """x = identity rows: out = W^T rows, exact up to the output cast (the decode is bit-exact)."""
    for bits, dtype in ((4, torch.float16), (8, torch.float16), (4, torch.bfloat16), (8, torch.bfloat16)):
        k, n = 128, 136
        p = make(n, k, bits, 32, False, dtype)
        x = torch.eye(k, device="cuda", dtype=dtype)
        rw = cpp.prepare(p.weight_packed, p.weight_scale, p.weight_zero_point, bits, 32, k, dtype)
        out = cpp.linear_repacked(x, rw)
        assert torch.equal(out, p.dequantize(torch.float32).to(dtype).t()), (bits, dtype)


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 128, False), (8, -1, True)])
def test_opcheck(bits, group_size, symmetric):
    p = make(136, 256, bits, group_size, symmetric, torch.float16)
    rw = cpp.prepare(p.weight_packed, p.weight_scale, p.weight_zero_point, bits, group_size, 256, torch.float16)
    x = torch.randn(3, 256, device="cuda", dtype=torch.float16)
    bias = torch.randn(136, device="cuda", dtype=torch.float16)
    torch.library.opcheck(torch.ops.llmlite.lowbit_linear_repacked,
                          (x, rw.weight, rw.scale, rw.zero, bias, bits, group_size, 136))


def test_dispatched_op_uses_cuda_kernels():
    p = make(72, 256, 4, 32, False, torch.float16)
    x = torch.randn(2, 256, device="cuda", dtype=torch.float16)
    args = (p.weight_packed, p.weight_scale, p.weight_zero_point, None, 4, 32)
    assert_close_rel(torch.ops.llmlite.lowbit_linear(x, *args).float(), lowbit_linear_ref(x, *args).float(),
                     torch.float16)
