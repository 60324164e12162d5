"""Host-side helpers shared by the kernel launchers: argument checks, flattening, split-K choice."""
from __future__ import annotations

import functools

import torch
import triton

from llmlite_kernels.ops.schemas import check_lowbit_linear

# SM count used to size split-K when the tensors are not on a GPU (TRITON_INTERPRET=1 on the CPU).
INTERPRETER_SMS = 4


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SMS


def group_constexpr(group_size: int) -> int:
    """The kernels' GROUP: the group size, or 0 for per-channel (-1)."""
    return 0 if group_size == -1 else group_size


def checked_2d(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size):
    """Validate the ``lowbit_linear`` arguments; return (x as [M, K], N)."""
    n = check_lowbit_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size)
    return x.reshape(-1, x.shape[-1]), n


def split_k_for(tiles: int, k_blocks: int, sms: int, requested: int = 0, waves: int = 2):
    """(split_k, k-blocks per split). ``requested`` 0 = enough splits to give every SM ``waves`` programs
    (config key ``waves``: more programs keep more loads in flight; fewer spare the split-K reduce)."""
    if requested > 0:
        split = requested
    else:
        split = triton.cdiv(waves * sms, max(tiles, 1))
    split = max(1, min(split, k_blocks))
    per_split = triton.cdiv(k_blocks, split)
    return triton.cdiv(k_blocks, per_split), per_split


def check_block_k(block_k: int, bits: int):
    per_word = 32 // bits if 32 % bits == 0 else 1
    if block_k < 16 or block_k & (block_k - 1) or block_k % per_word:
        raise ValueError(f"block_k={block_k} must be a power of two >= 16 "
                         f"(and a multiple of {per_word} at {bits} bits)")
