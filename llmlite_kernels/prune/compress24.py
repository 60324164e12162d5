"""``compress_24_``: replace every 2:4-sparse Linear / SparseLinear of a model by a compressed
:class:`~llmlite_kernels.nn.Sparse24Linear` (the inference step after ``prune_`` with ``pattern="2:4"``)."""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..formats.sparse24 import is_24_sparse
from ..models import is_linear, selected, set_submodule
from ..nn.quant_linear import linear_weight
from ..nn.sparse24_linear import Sparse24Linear
from ..nn.sparse_linear import SparseLinear

log = logging.getLogger("llmlite_kernels")


def _dense_weight(module: nn.Module) -> torch.Tensor:
    return module.masked_weight() if isinstance(module, SparseLinear) else linear_weight(module).detach()


def compress_24_(model: nn.Module, bits: Optional[int] = None, group_size: Optional[int] = 128,
                 symmetric: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = ()
                 ) -> List[str]:
    """Replace, in place, every selected Linear/Conv1D/SparseLinear whose (masked) weight is 2:4 sparse.

    ``bits=None`` keeps the kept values in the weight's dtype; ``bits=4`` (2/3/8) quantizes them
    round-to-nearest in groups of ``group_size`` kept values. Layers that are not 2:4 sparse are left
    as they are (a SparseLinear among them is logged). Returns the names of the converted layers;
    ValueError when there is none.
    """
    converted = []
    candidates = [(name, module) for name, module in model.named_modules()
                  if (is_linear(module) or isinstance(module, SparseLinear)) and selected(name, include, exclude)]
    for name, module in candidates:
        if not is_24_sparse(_dense_weight(module)):
            if isinstance(module, SparseLinear):
                log.info("compress_24_: %s is pruned but not 2:4 sparse; left as SparseLinear", name)
            continue
        layer = Sparse24Linear.from_sparse(module, bits=bits, group_size=group_size, symmetric=symmetric, name=name)
        set_submodule(model, name, layer)
        converted.append(name)
    if not converted:
        raise ValueError("compress_24_: no 2:4-sparse Linear/SparseLinear layer in the model (prune it with "
                         "pattern='2:4' first)")
    return converted
