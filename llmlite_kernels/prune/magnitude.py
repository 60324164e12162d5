"""Magnitude pruning: a weight's importance is ``|W|`` (no calibration)."""
import torch


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs()
