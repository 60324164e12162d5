"""Interleave the stored low-bit format for the CPU VNNI GEMV (``csrc/cpu/lowbit_a8_interleaved.cpp``), and back.

This file defines the layout that kernel reads (pure torch; done once per layer, cached by QuantLinear).
2-, 4- and 8-bit codes (one VNNI byte lane holds 4 / 2 / 1 codes whole), and 3-bit codes split into a
2-bit plane and a 1-bit plane (``q = lo + 4 * hi``).

Output rows are taken 16 at a time ("row blocks", N padded with zero rows to ``N_pad``): the 16 lanes of
one int32 AVX-512 vector are the 16 rows, so one ``vpdpbusd`` adds 4 products to each of 16 rows, group
scales apply to 16 rows in one multiply, and the kernel never reduces across lanes. K is cut into steps
of ``STEP = 32 // bits`` codes (padded with zero codes to ``K_pad``); one step of one row block is 64
bytes, 4 per row:

* W8: byte ``j`` is code ``k0 + j``.
* W4: byte ``j`` holds code ``k0 + j`` in its low nibble and ``k0 + 4 + j`` in its high nibble.
* W2: byte ``j`` holds code ``k0 + 4p + j`` at bits ``[2p, 2p + 2)``, p = 0..3.

* W3: a step is 32 codes in three 64-byte vectors: the low 2 bits of codes ``k0 .. k0 + 15`` and of
  ``k0 + 16 .. k0 + 31``, each as W2 above, then the high bits, byte ``j`` holding the high bit of code
  ``k0 + 4b + j`` at bit ``b``, b = 0..7.

So one mask-and-shift per plane gives 16 rows x 4 consecutive codes, which meet 4 consecutive int8
activations broadcast to every lane.

Weight: uint8 ``[N_pad / 16, K_pad / STEP * VECTORS, 16, 4]`` (VECTORS = 3 for W3, else 1). Scales: float32 ``[N_pad / 16, G, 16]``; zero points:
uint8 ``[N_pad / 16, G, 16]`` (symmetric weights get ``2**(bits-1)``, which dequantizes identically).
Padded rows have scale 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import FLOAT_DTYPES, check_choice, check_positive_int, check_tensor
from .bitpack import pack_codes, unpack_codes
from .lowbit import canonical_group_size, check_packed, num_groups

ROWS = 16
INTERLEAVE_BITS = (2, 3, 4, 8)


def step_codes(bits: int) -> int:
    """Codes of one row per step."""
    return 32 if bits == 3 else 32 // bits


def step_vectors(bits: int) -> int:
    """64-byte vectors (16 rows x 4 bytes) per step of a row block."""
    return 3 if bits == 3 else 1


@dataclass
class InterleavedWeight:
    """A low-bit weight in the CPU VNNI GEMV's row-interleaved order (see the module docstring)."""

    weight: torch.Tensor       # uint8 [N_pad/16, K_pad/STEP * VECTORS, 16, 4]
    scale: torch.Tensor        # float32 [N_pad/16, G, 16]
    zero: torch.Tensor         # uint8 [N_pad/16, G, 16]
    bits: int
    group_size: int            # canonical: -1 = per-channel
    out_features: int
    in_features: int


def _padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _row_blocks(t: torch.Tensor, n_pad: int) -> torch.Tensor:
    """[N, G] -> [N_pad/16, G, 16] (zero rows appended)."""
    t = torch.nn.functional.pad(t, (0, 0, 0, n_pad - t.shape[0]))
    return t.unflatten(0, (n_pad // ROWS, ROWS)).transpose(1, 2).contiguous()


def _planes(c: torch.Tensor, bits: int, step: int) -> torch.Tensor:
    """int32 codes [N_pad, K_pad] (K_pad a multiple of step) -> [N_pad/16, K_pad/step, 16, 4] bytes in which
    code k0 + 4p + j of a row sits in byte j at bits [p*bits, (p+1)*bits)."""
    c = c.unflatten(1, (-1, step // 4, 4)).unflatten(0, (-1, ROWS))  # [blocks, 16, steps, planes, 4]
    shifts = (torch.arange(step // 4, dtype=torch.int32) * bits).view(1, 1, 1, -1, 1)
    return (c << shifts).sum(dim=3).transpose(1, 2)  # planes occupy disjoint bits of the byte


def _unplanes(b: torch.Tensor, bits: int, step: int) -> torch.Tensor:
    """Inverse of :func:`_planes`: int32 codes [N_pad, K_pad]."""
    b = b.to(torch.int32).transpose(1, 2)  # [blocks, 16, steps, 4]
    shifts = (torch.arange(step // 4, dtype=torch.int32) * bits).view(1, 1, 1, -1, 1)
    return ((b.unsqueeze(3) >> shifts) & ((1 << bits) - 1)).flatten(2).flatten(0, 1)


def interleave_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [N, K] -> the interleaved uint8 [N_pad/16, K_pad/STEP * VECTORS, 16, 4]."""
    n, k = codes.shape
    step = step_codes(bits)
    c = torch.nn.functional.pad(codes.to(torch.int32), (0, _padded(k, step) - k, 0, _padded(n, ROWS) - n))
    if bits != 3:
        return _planes(c, bits, step).to(torch.uint8).contiguous()
    low = _planes(c & 3, 2, 16).unflatten(1, (-1, 2))  # [blocks, steps, 2, 16, 4]
    high = _planes(c >> 2, 1, 32).unsqueeze(2)  # [blocks, steps, 1, 16, 4]
    return torch.cat([low, high], dim=2).flatten(1, 2).to(torch.uint8).contiguous()


def deinterleave_codes(weight: torch.Tensor, bits: int, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`interleave_codes`: uint8 codes [out_features, in_features]."""
    if bits != 3:
        codes = _unplanes(weight, bits, step_codes(bits))
    else:
        v = weight.unflatten(1, (-1, 3))  # [blocks, steps, 3, 16, 4]
        codes = _unplanes(v[:, :, :2].flatten(1, 2), 2, 16) | (_unplanes(v[:, :, 2], 1, 32) << 2)
    return codes[:out_features, :in_features].to(torch.uint8)


def interleave_weight(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_zero_point,
                      bits: int, group_size: int, in_features: int) -> InterleavedWeight:
    """Stored format (``formats.lowbit``) -> :class:`InterleavedWeight` (CPU tensors)."""
    group_size = canonical_group_size(group_size)
    check_choice("bits", bits, INTERLEAVE_BITS)
    n = check_packed(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features,
                     weight_packed.device)
    n_pad = _padded(n, ROWS)
    codes = unpack_codes(weight_packed, bits, in_features)
    zero = weight_zero_point
    if zero is None:
        zero = torch.full_like(weight_scale, 1 << (bits - 1), dtype=torch.uint8)
    return InterleavedWeight(interleave_codes(codes, bits), _row_blocks(weight_scale.float(), n_pad),
                             _row_blocks(zero, n_pad), bits, group_size, n, in_features)


def deinterleave_weight(iw: InterleavedWeight):
    """Inverse of :func:`interleave_weight`: (weight_packed, weight_scale float32, weight_zero_point uint8)."""
    n = iw.out_features

    def rows(t):
        return t.transpose(1, 2).flatten(0, 1)[:n].contiguous()

    codes = deinterleave_codes(iw.weight, iw.bits, n, iw.in_features)
    return pack_codes(codes, iw.bits), rows(iw.scale), rows(iw.zero)


def check_interleaved(x, weight, scale, zero, bias, bits: int, group_size: int, out_features: int) -> None:
    """Validate the arguments of ``llmlite::lowbit_linear_a8_interleaved`` (names each bad argument)."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES, contiguous=True)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., in_features], got shape {tuple(x.shape)}")
    check_choice("bits", bits, INTERLEAVE_BITS)
    group_size = canonical_group_size(group_size)
    check_positive_int("out_features", out_features)
    k = x.shape[-1]
    blocks, groups = _padded(out_features, ROWS) // ROWS, num_groups(k, group_size)
    steps = _padded(k, step_codes(bits)) // step_codes(bits) * step_vectors(bits)
    expected = {"weight": ((blocks, steps, ROWS, 4), torch.uint8, weight),
                "scale": ((blocks, groups, ROWS), torch.float32, scale),
                "zero": ((blocks, groups, ROWS), torch.uint8, zero)}
    for name, (shape, dtype, t) in expected.items():
        check_tensor(name, t, dtypes=(dtype,), ndim=len(shape), contiguous=True, device=x.device)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; for in_features={k}, out_features={out_features}, "
                             f"bits={bits} expected {shape}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=(x.dtype,), ndim=1, contiguous=True, device=x.device)
        if bias.shape[0] != out_features:
            raise ValueError(f"bias has {bias.shape[0]} elements; expected out_features={out_features}")
