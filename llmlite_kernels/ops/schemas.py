"""Schemas, fake (meta) kernels and autograd of every llmlite op. Nothing else.

Implementations live per backend: ``reference.py`` (pure torch, every device, defines the semantics),
the CPU C++ kernels in ``csrc/`` (registered for the CPU key by ``llmlite_kernels._C``), and
``cuda.py`` (Triton / CUDA C++). ``dispatch.py`` says which one runs.
"""
from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_tensor
from ..formats.cpu_interleave import check_interleaved
from ..formats.lowbit import check_packed
from ..formats.mma_repack import check_repacked
from ..formats.sparse24 import check_lowbit_values, check_meta, check_values
from ..formats.sparse24 import decompress as sparse24_decompress
from ..formats.sparse24 import decompress_lowbit as sparse24_decompress_lowbit

LIB = torch.library.Library("llmlite", "FRAGMENT")  # noqa: the ops below live as long as this module

LIB.define(
    "lowbit_linear(Tensor x, Tensor weight_packed, Tensor weight_scale, Tensor? weight_zero_point, "
    "Tensor? bias, int bits, int group_size) -> Tensor"
)
LIB.define(
    "lowbit_dequantize(Tensor weight_packed, Tensor weight_scale, Tensor? weight_zero_point, "
    "int bits, int group_size, int in_features, ScalarType dtype) -> Tensor"
)
# lowbit_linear with the activations dynamically quantized to int8 (per row, per block of 128 inputs) first:
# on CPUs with AVX512-VNNI the dot products then run on int8 (reference.lowbit_linear_a8_ref).
LIB.define(
    "lowbit_linear_a8(Tensor x, Tensor weight_packed, Tensor weight_scale, Tensor? weight_zero_point, "
    "Tensor? bias, int bits, int group_size) -> Tensor"
)
# Which CPU path lowbit_linear_a8 takes for a weight format: "vnni" or "fake-quant+<isa>". No tensors.
LIB.define("cpu_a8_path(int bits, int group_size, int in_features) -> str")
# Which instruction set the CPU C++ kernels run (llmlite_kernels._C; LLMLITE_CPU_ISA forces one). No tensors.
LIB.define("cpu_isa() -> str")


def check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size) -> int:
    """Validate the arguments of ``lowbit_linear``; returns out_features."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES, contiguous=True)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., in_features], got shape {tuple(x.shape)}")
    n = check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, x.shape[-1], x.device)
    if bias is not None:
        check_tensor("bias", bias, dtypes=(x.dtype,), ndim=1, contiguous=True, device=x.device)
        if bias.shape[0] != n:
            raise ValueError(f"bias has {bias.shape[0]} elements; expected out_features={n}")
    return n


@torch.library.register_fake("llmlite::lowbit_linear_a8")
@torch.library.register_fake("llmlite::lowbit_linear")
def _lowbit_linear_fake(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
    n = check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    return x.new_empty(*x.shape[:-1], n)


@torch.library.register_fake("llmlite::lowbit_dequantize")
def _lowbit_dequantize_fake(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features, dtype):
    n = check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                     weight_packed.device)
    return weight_packed.new_empty(n, in_features, dtype=dtype)


def _lowbit_linear_setup(ctx, inputs, output):
    x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size = inputs
    ctx.save_for_backward(weight_packed, weight_scale, weight_zero_point)
    ctx.meta = (bits, group_size, x.shape[-1], bias is not None)


def _lowbit_linear_backward(ctx, grad_out):
    weight_packed, weight_scale, weight_zero_point = ctx.saved_tensors
    bits, group_size, in_features, has_bias = ctx.meta
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = torch.ops.llmlite.lowbit_dequantize(weight_packed, weight_scale, weight_zero_point,
                                                bits, group_size, in_features, grad_out.dtype)
        grad_x = grad_out @ w
    if has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
    # The packed weight, scales and zero points are frozen buffers: no gradient.
    return grad_x, None, None, None, grad_bias, None, None


torch.library.register_autograd("llmlite::lowbit_linear", _lowbit_linear_backward,
                                setup_context=_lowbit_linear_setup)
# The activation rounding of lowbit_linear_a8 is passed straight through: the same gradients.
torch.library.register_autograd("llmlite::lowbit_linear_a8", _lowbit_linear_backward,
                                setup_context=_lowbit_linear_setup)


# CPU AVX512-VNNI GEMV (csrc/cpu/lowbit_a8_interleaved.cpp): lowbit_linear_a8 on a weight interleaved
# once 16 rows at a time (formats/cpu_interleave.py). Same result as lowbit_linear_a8. No autograd:
# QuantLinear calls it only when no gradient is wanted.
LIB.define(
    "lowbit_linear_a8_interleaved(Tensor x, Tensor weight, Tensor scale, Tensor zero, Tensor? bias, int bits, "
    "int group_size, int out_features) -> Tensor"
)


@torch.library.register_fake("llmlite::lowbit_linear_a8_interleaved")
def _lowbit_linear_a8_interleaved_fake(x, weight, scale, zero, bias, bits, group_size, out_features):
    check_interleaved(x, weight, scale, zero, bias, bits, group_size, out_features)
    return x.new_empty(*x.shape[:-1], out_features)


# CUDA C++ tensor-core GEMM (csrc/cuda, ops/cuda_cpp_backend.py): lowbit_linear on a weight repacked
# once into the kernel's fragment order (formats/mma_repack.py). Same result as lowbit_linear.
LIB.define(
    "lowbit_linear_repacked(Tensor x, Tensor weight_repacked, Tensor scale_repacked, Tensor? zero_repacked, "
    "Tensor? bias, int bits, int group_size, int out_features) -> Tensor"
)


@torch.library.register_fake("llmlite::lowbit_linear_repacked")
def _lowbit_linear_repacked_fake(x, weight_repacked, scale_repacked, zero_repacked, bias, bits, group_size,
                                 out_features):
    check_repacked(x, weight_repacked, scale_repacked, zero_repacked, bias, bits, group_size, out_features)
    return x.new_empty(*x.shape[:-1], out_features)


# 2:4 sparse weights (formats/sparse24.py): kept values [N, K4/2] + 2-bit indices ``meta``, either dense
# values in x's dtype or low-bit codes. out = (x.float() @ decompress(W).T + bias.float()).to(x.dtype).
LIB.define("sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor")
LIB.define(
    "sparse24_lowbit_linear(Tensor x, Tensor weight_packed, Tensor weight_scale, Tensor? weight_zero_point, "
    "Tensor meta, Tensor? bias, int bits, int group_size) -> Tensor"
)


def _check_bias(x, bias, n):
    if bias is not None:
        check_tensor("bias", bias, dtypes=(x.dtype,), ndim=1, contiguous=True, device=x.device)
        if bias.shape[0] != n:
            raise ValueError(f"bias has {bias.shape[0]} elements; expected out_features={n}")


def _check_x(x):
    check_tensor("x", x, dtypes=FLOAT_DTYPES, contiguous=True)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., in_features], got shape {tuple(x.shape)}")


def check_sparse24_linear(x, values, meta, bias) -> int:
    """Validate the arguments of ``sparse24_linear`` (values in x's dtype); returns out_features."""
    _check_x(x)
    n = check_values(values, x.shape[-1], dtypes=(x.dtype,), device=x.device)
    check_meta(meta, n, x.shape[-1], x.device)
    _check_bias(x, bias, n)
    return n


def check_sparse24_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits,
                                 group_size) -> int:
    """Validate the arguments of ``sparse24_lowbit_linear``; returns out_features."""
    _check_x(x)
    n = check_lowbit_values(weight_packed, weight_scale, weight_zero_point, bits, group_size, x.shape[-1],
                            x.device)
    check_meta(meta, n, x.shape[-1], x.device)
    _check_bias(x, bias, n)
    return n


@torch.library.register_fake("llmlite::sparse24_linear")
def _sparse24_linear_fake(x, values, meta, bias):
    return x.new_empty(*x.shape[:-1], check_sparse24_linear(x, values, meta, bias))


@torch.library.register_fake("llmlite::sparse24_lowbit_linear")
def _sparse24_lowbit_linear_fake(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits, group_size):
    n = check_sparse24_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits,
                                     group_size)
    return x.new_empty(*x.shape[:-1], n)


def _bias_grad(ctx, grad_out, has_bias, index):
    if has_bias and ctx.needs_input_grad[index]:
        return grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
    return None


def _sparse24_linear_setup(ctx, inputs, output):
    x, values, meta, bias = inputs
    ctx.save_for_backward(values, meta)
    ctx.meta = (x.shape[-1], bias is not None)


def _sparse24_linear_backward(ctx, grad_out):
    values, meta = ctx.saved_tensors
    in_features, has_bias = ctx.meta
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_out @ sparse24_decompress(values, meta, in_features, grad_out.dtype)
    # The compressed weight is frozen: no gradient to values / meta.
    return grad_x, None, None, _bias_grad(ctx, grad_out, has_bias, 3)


def _sparse24_lowbit_linear_setup(ctx, inputs, output):
    x, weight_packed, weight_scale, weight_zero_point, meta, bias, bits, group_size = inputs
    ctx.save_for_backward(weight_packed, weight_scale, weight_zero_point, meta)
    ctx.meta = (bits, group_size, x.shape[-1], bias is not None)


def _sparse24_lowbit_linear_backward(ctx, grad_out):
    weight_packed, weight_scale, weight_zero_point, meta = ctx.saved_tensors
    bits, group_size, in_features, has_bias = ctx.meta
    grad_x = None
    if ctx.needs_input_grad[0]:
        w = sparse24_decompress_lowbit(weight_packed, weight_scale, weight_zero_point, meta, bits, group_size,
                                       in_features, grad_out.dtype)
        grad_x = grad_out @ w
    return grad_x, None, None, None, None, _bias_grad(ctx, grad_out, has_bias, 5), None, None


torch.library.register_autograd("llmlite::sparse24_linear", _sparse24_linear_backward,
                                setup_context=_sparse24_linear_setup)
torch.library.register_autograd("llmlite::sparse24_lowbit_linear", _sparse24_lowbit_linear_backward,
                                setup_context=_sparse24_lowbit_linear_setup)

# CUDA C++ sparse-tensor-core GEMM (csrc/cuda/sparse24_mma_sp.cu): sparse24_linear for x [M, K] fp16/bf16 with
# K % 32 == 0; the same result. ops/cuda_sparse24.py calls it for large M.
LIB.define("sparse24_mma_sp_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor")


def check_sparse24_mma_sp_linear(x, values, meta, bias) -> int:
    n = check_sparse24_linear(x, values, meta, bias)
    if x.dim() != 2 or x.dtype not in (torch.float16, torch.bfloat16) or x.shape[1] % 32:
        raise ValueError(f"sparse24_mma_sp_linear needs x [M, K] float16/bfloat16 with K % 32 == 0; got shape "
                         f"{tuple(x.shape)}, dtype {x.dtype}")
    return n


@torch.library.register_fake("llmlite::sparse24_mma_sp_linear")
def _sparse24_mma_sp_linear_fake(x, values, meta, bias):
    return x.new_empty(x.shape[0], check_sparse24_mma_sp_linear(x, values, meta, bias))


# Masked dense linear for training pruned layers (nn/sparse_linear.py): out = x @ (W * M).T + bias with the
# mask M stored as bits (formats/bitmask.py). Gradients: to x, to W (zero wherever M is 0), to bias.
LIB.define("masked_linear(Tensor x, Tensor weight, Tensor mask_bits, Tensor? bias) -> Tensor")

MASKED_DTYPES = FLOAT_DTYPES + (torch.float64,)


def check_masked_linear(x, weight, mask_bits, bias) -> int:
    """Validate the arguments of ``masked_linear``; returns out_features."""
    from ..formats.bitmask import check_mask_bits

    check_tensor("x", x, dtypes=MASKED_DTYPES, contiguous=True)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., in_features], got shape {tuple(x.shape)}")
    check_tensor("weight", weight, dtypes=(x.dtype,), ndim=2, contiguous=True, device=x.device)
    n, k = weight.shape
    if k != x.shape[-1]:
        raise ValueError(f"weight has in_features={k} but x has {x.shape[-1]} features in its last dimension")
    check_mask_bits(mask_bits, n, k, x.device)
    if bias is not None:
        check_tensor("bias", bias, dtypes=(x.dtype,), ndim=1, contiguous=True, device=x.device)
        if bias.shape[0] != n:
            raise ValueError(f"bias has {bias.shape[0]} elements; expected out_features={n}")
    return n


@torch.library.register_fake("llmlite::masked_linear")
def _masked_linear_fake(x, weight, mask_bits, bias):
    return x.new_empty(*x.shape[:-1], check_masked_linear(x, weight, mask_bits, bias))


def _masked_linear_setup(ctx, inputs, output):
    x, weight, mask_bits, bias = inputs
    ctx.save_for_backward(x, weight, mask_bits)
    ctx.has_bias = bias is not None


def _masked_linear_backward(ctx, grad_out):
    from ..formats.bitmask import unpack_mask

    x, weight, mask_bits = ctx.saved_tensors
    acc = torch.promote_types(x.dtype, torch.float32)
    zero = torch.zeros((), dtype=acc, device=x.device)
    g = grad_out.reshape(-1, grad_out.shape[-1]).to(acc)
    mask = unpack_mask(mask_bits, weight.shape[1])  # once for both products
    grad_x = grad_w = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = (g @ torch.where(mask, weight.to(acc), zero)).to(x.dtype).reshape(x.shape)
    if ctx.needs_input_grad[1]:
        full = g.t() @ x.reshape(-1, x.shape[-1]).to(acc)
        grad_w = torch.where(mask, full, zero).to(weight.dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = g.sum(0).to(x.dtype)
    return grad_x, grad_w, None, grad_bias


torch.library.register_autograd("llmlite::masked_linear", _masked_linear_backward,
                                setup_context=_masked_linear_setup)
