"""masked_linear (x @ (W * M).T + b with a bit mask) and SparseLinear: reference, Triton kernel under
TRITON_INTERPRET=1, gradients, opcheck, fine-tuning keeps pruned weights at zero, bad input."""
import functools

import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.formats.bitmask import mask_bytes, pack_mask, unpack_mask
from llmlite_kernels.ops import triton_backend
from llmlite_kernels.ops.reference import masked_linear_ref

from conftest import assert_close_rel

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
op = torch.ops.llmlite.masked_linear


def make(n, k, dtype=torch.float32, density=0.5):
    w = torch.randn(n, k, dtype=dtype)
    mask = torch.rand(n, k) < density
    return w, mask, pack_mask(mask)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (4, 9), (2, 130)])
def test_mask_bits_roundtrip_and_layout(shape):
    mask = torch.rand(*shape) < 0.5
    bits = pack_mask(mask)
    assert bits.dtype == torch.uint8 and bits.shape == (shape[0], mask_bytes(shape[1]))
    assert torch.equal(unpack_mask(bits, shape[1]), mask)
    n, k = shape[0] - 1, shape[1] - 1  # column k of row n is bit k % 8 of byte k // 8
    assert bool((bits[n, k // 8] >> (k % 8)) & 1) == bool(mask[n, k])


def test_reference_is_dense_product_of_masked_weight():
    w, mask, bits = make(40, 77)
    w[~mask] = float("inf")  # whatever is stored at pruned positions is ignored
    x, bias = torch.randn(3, 77), torch.randn(40)
    expected = x.double() @ torch.where(mask, w, 0).double().t() + bias.double()
    assert_close_rel(masked_linear_ref(x, w, bits, bias), expected, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 72, 96), (3, 33, 200), (17, 50, 37)])
def test_dispatched_op_matches_reference(dtype, shape):
    m, n, k = shape
    w, _, bits = make(n, k, dtype)
    x, bias = torch.randn(m, k, dtype=dtype), torch.randn(n, dtype=dtype)
    out = op(x, w, bits, bias)
    assert out.dtype == dtype
    assert_close_rel(out, masked_linear_ref(x, w, bits, bias).float(), dtype)


def test_gradcheck_float64():
    w, mask, bits = make(6, 21, torch.float64)
    x = torch.randn(2, 3, 21, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: op(x, w, bits, b), (x, w, bias))


def test_gradients_match_dense_autograd_and_are_zero_where_pruned():
    w, mask, bits = make(20, 45)
    x = torch.randn(2, 4, 45, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    w.requires_grad_()
    out = op(x, w, bits, bias)
    grad = torch.randn_like(out)
    gx, gw, gb = torch.autograd.grad(out, (x, w, bias), grad)
    xd, wd, bd = (t.detach().clone().requires_grad_() for t in (x, w, bias))
    ex, ew, eb = torch.autograd.grad(torch.nn.functional.linear(xd, wd * mask, bd), (xd, wd, bd), grad)
    assert_close_rel(gx, ex, torch.float32)
    assert_close_rel(gw, ew, torch.float32)
    assert_close_rel(gb, eb, torch.float32)
    assert torch.all(gw[~mask] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    w, _, bits = make(20, 44, dtype)
    for x, bias in [(torch.randn(3, 44, dtype=dtype), torch.randn(20, dtype=dtype)),
                    (torch.randn(2, 4, 44, dtype=dtype), None)]:
        torch.library.opcheck(op, (x, w, bits, bias))
    wg = w.float().requires_grad_()
    torch.library.opcheck(op, (torch.randn(3, 44, requires_grad=True), wg, bits, torch.randn(20, requires_grad=True)))


def test_finetuning_keeps_pruned_weights_exactly_zero():
    torch.manual_seed(1)
    layer = L.SparseLinear.from_linear(torch.nn.Linear(48, 24), torch.rand(24, 48) < 0.5)
    mask = layer.mask()
    assert torch.all(layer.weight[~mask] == 0)
    before = layer.weight.detach().clone()
    model = torch.nn.Sequential(layer, torch.nn.GELU(), torch.nn.Linear(24, 5))
    for optimizer in (torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
                      torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)):
        for _ in range(3):
            loss = model(torch.randn(8, 48)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            assert torch.all(layer.weight.grad[~mask] == 0)
            optimizer.step()
    assert torch.all(layer.weight[~mask] == 0)
    assert not torch.equal(layer.weight[mask], before[mask])  # the kept weights did train
    assert torch.equal(layer.mask(), mask) and layer.sparsity == pytest.approx(1 - mask.float().mean().item())


def test_sparse_linear_matches_masked_dense_linear_and_casts():
    linear = torch.nn.Linear(40, 12)
    mask = torch.rand(12, 40) < 0.3
    layer = L.SparseLinear.from_linear(linear, mask)
    x = torch.randn(2, 3, 40)
    expected = torch.nn.functional.linear(x, linear.weight.detach() * mask, linear.bias.detach())
    assert_close_rel(layer(x), expected, torch.float32)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert torch.equal(layer.masked_weight(), linear.weight.detach() * mask)


def test_torch_compile_fullgraph():
    layer = L.SparseLinear.from_linear(torch.nn.Linear(32, 16), torch.rand(16, 32) < 0.5)
    x = torch.randn(5, 32)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    assert_close_rel(compiled(x), layer(x), torch.float32)


def test_bad_inputs_name_the_argument():
    w, mask, bits = make(24, 64)
    x = torch.randn(3, 64)
    cases = [
        (lambda: op(x.to(torch.int32), w, bits, None), TypeError, "x has dtype int32"),
        (lambda: op(x, w.half(), bits, None), TypeError, "weight has dtype"),
        (lambda: op(torch.randn(3, 65), w, bits, None), ValueError, "weight has in_features=64"),
        (lambda: op(x, w, bits[:, :3].contiguous(), None), ValueError, "mask_bits has shape"),
        (lambda: op(x, w, bits.int(), None), TypeError, "mask_bits has dtype"),
        (lambda: op(torch.randn(64, 3).t(), w, bits, None), ValueError, "x must be contiguous"),
        (lambda: op(x, w, bits, torch.randn(23)), ValueError, "bias has 23"),
        (lambda: L.SparseLinear.from_linear(torch.nn.Linear(64, 24), mask.float()), TypeError, "mask has dtype"),
        (lambda: L.SparseLinear.from_linear(torch.nn.Linear(64, 24), mask[:, :8]), ValueError, "mask has shape"),
        (lambda: L.SparseLinear(64, 24)(torch.randn(2, 63)), ValueError, "in_features=64"),
    ]
    for call, exc, words in cases:
        with pytest.raises(exc, match=words):
            call()


def test_backends_say_which_path_runs():
    info = L.backends()["masked_linear"]
    assert info["active"] and "CPU: reference" in info["why"]
    assert L.kernel_for("cpu", "masked_linear") == "reference"


# --- the Triton masked GEMM (interpreter on CPU tensors when there is no GPU) ---------------------------

kernels, _why = triton_backend.load()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = {"block_m": 16, "block_n": 32, "block_k": 32, "group_m": 2, "num_warps": 4, "num_stages": 1}


@pytest.fixture
def masked_gemm(monkeypatch):
    if kernels is None:
        pytest.skip(f"Triton kernels unavailable: {_why}")
    import importlib

    module = importlib.import_module(f"{triton_backend.KERNELS_MODULE}.masked_gemm")
    empty = torch.empty

    @functools.wraps(empty)
    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(module.torch, "empty", nan_empty)
    return module


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, k", [(1, 72, 37), (3, 33, 96), (17, 50, 70)])
def test_triton_masked_gemm_matches_reference(masked_gemm, dtype, m, n, k):
    w, _, bits = make(n, k, dtype)
    w, bits = w.to(DEVICE), bits.to(DEVICE)
    x, bias = torch.randn(m, k, dtype=dtype, device=DEVICE), torch.randn(n, dtype=dtype, device=DEVICE)
    for config, b in ((SMALL, bias), (None, None)):
        out = masked_gemm.masked_linear(x, w, bits, b, config=config)
        assert out.dtype == dtype
        assert_close_rel(out.float(), masked_linear_ref(x, w, bits, b).float(), dtype)


def test_triton_masked_gemm_ignores_pruned_values_and_leading_dims(masked_gemm):
    w, mask, bits = make(40, 50)
    w[~mask] = float("nan")
    x = torch.randn(2, 3, 50)
    out = masked_gemm.masked_linear(x.to(DEVICE), w.to(DEVICE), bits.to(DEVICE), None, config=SMALL)
    assert out.shape == (2, 3, 40)
    assert_close_rel(out.cpu(), masked_linear_ref(x, w, bits, None), torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the registered CUDA kernel)")
def test_registered_cuda_kernel_and_opcheck():
    assert L.kernel_for("cuda", "masked_linear") == "cuda"
    w, _, bits = make(96, 200, torch.float16)
    x = torch.randn(33, 200, dtype=torch.float16, device="cuda")
    out = op(x, w.cuda(), bits.cuda(), None)
    assert_close_rel(out.float().cpu(), masked_linear_ref(x.cpu(), w, bits, None).float(), torch.float16)
    torch.library.opcheck(op, (x, w.cuda(), bits.cuda(), None))
