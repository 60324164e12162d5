"""Pruning algorithms: magnitude, Wanda, SparseGPT and SparseGPT + block reconstruction (``prune_``)."""
from .apply import model_sparsity, prune_
from .compress24 import compress_24_
from .magnitude import magnitude_scores
from .masks import is_nm, nm_mask, select_mask, unstructured_mask
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_scores

__all__ = ["compress_24_", "is_nm", "magnitude_scores", "model_sparsity", "nm_mask", "prune_", "select_mask",
           "sparsegpt_prune", "unstructured_mask", "wanda_scores"]
