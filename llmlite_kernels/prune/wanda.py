"""Wanda (Sun et al. 2023): a weight's importance is ``|W_ij| * ||X_j||_2``, the norm of its input
column over the calibration tokens (``calibration.LinearInputStats.column_norms``)."""
import torch


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    if column_norms.shape != (weight.shape[1],):
        raise ValueError(f"column_norms has shape {tuple(column_norms.shape)}; expected ({weight.shape[1]},)")
    return weight.detach().float().abs() * column_norms.float()[None, :]
