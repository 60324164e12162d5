"""Shared test helpers: per-dtype tolerances relative to the output norm, NaN poisoning, data paths."""
import os

import pytest
import torch

# Triton kernels run on CPU tensors under its interpreter; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Relative Frobenius error ||out - ref|| / ||ref|| allowed per activation dtype.
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-10}


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, dtype=None, tol=None):
    """Fail on any NaN, on a shape/dtype mismatch, or on a relative error above the dtype's tolerance."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not torch.isnan(out).any(), "output has NaN (unwritten elements?)"
    tol = TOLERANCES[dtype or out.dtype] if tol is None else tol
    err = (out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)
    assert err <= tol, f"relative error {err:.3e} > {tol:.1e}"


def poisoned(shape, dtype, device="cpu"):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
