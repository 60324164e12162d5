"""Save and load compressed models: safetensors for tensors, JSON for everything else (never pickle).

Folder layout: ``model.safetensors`` (the full state dict; tied tensors stored once),
``llmlite_config.json`` (format version, the transformers config, every compressed layer's spec and the
run's configs), and the tokenizer files when a tokenizer is given.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from .models import compressed_layers, set_submodule

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "llmlite_config.json"


def _layer_classes() -> dict:
    from . import nn as layers

    return {name: getattr(layers, name) for name in layers.__all__ if hasattr(getattr(layers, name), "from_spec")}


def save(model: nn.Module, folder: str, tokenizer=None, extra: dict | None = None) -> None:
    """Write ``model`` (a transformers model, compressed or not) to ``folder``."""
    if not hasattr(model, "config"):
        raise TypeError("save() needs a transformers model (with a .config); got " + type(model).__name__)
    os.makedirs(folder, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": type(model).__name__,
        "model_config": model.config.to_dict(),
        "layers": compressed_layers(model),
        "quant_config": getattr(model, "llmlite_quant_config", None),
        **(extra or {}),
    }
    save_model(model, os.path.join(folder, WEIGHTS), metadata={"format": "pt", "llmlite_format": str(FORMAT_VERSION)})
    with open(os.path.join(folder, CONFIG), "w") as f:
        json.dump(meta, f, indent=1)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def read_config(folder: str) -> dict:
    path = os.path.join(folder, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not an llmlite checkpoint folder")
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is corrupt or truncated: {exc}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {meta.get('format_version')!r}; this llmlite reads {FORMAT_VERSION}")
    return meta


def load(folder: str, with_tokenizer: bool = True):
    """Rebuild a model saved by :func:`save`; returns ``(model, tokenizer or None)``.

    Raises ``ValueError`` on a corrupt or truncated checkpoint; no partially loaded model is returned.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    meta = read_config(folder)
    model_config = dict(meta["model_config"])
    config = AutoConfig.for_model(model_config.pop("model_type"), **model_config)
    arch = getattr(transformers, meta["architecture"], None)
    model = arch._from_config(config) if arch is not None else AutoModelForCausalLM.from_config(config)
    classes = _layer_classes()
    for name, spec in meta["layers"].items():
        if spec["type"] not in classes:
            raise ValueError(f"{CONFIG}: layer {name} has unknown type {spec['type']!r}")
        set_submodule(model, name, classes[spec["type"]].from_spec(spec))
    path = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    try:
        missing, unexpected = load_model(model, path, strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{path} is corrupt or truncated: {exc}") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not match {CONFIG}: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if meta.get("quant_config") is not None:
        model.llmlite_quant_config = meta["quant_config"]
    tokenizer = None
    if with_tokenizer and os.path.exists(os.path.join(folder, "tokenizer_config.json")):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer
