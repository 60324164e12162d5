"""Batch-1 greedy decoding of Llama-architecture transformers models without transformers' per-step overhead.

:class:`LlamaDecoder` runs the model's own layers (``nn.Linear``, ``QuantLinear``, ...), each bound once, in a
short loop: a preallocated KV cache, rotary cos/sin computed once, q/k/v and gate/up fused into one layer each
where the parts allow it, the prompt in one causal step, then one token per step. Its tokens are those of
``model.generate(do_sample=False)`` (no stop at EOS).
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int
from .formats import PackedWeight
from .nn.quant_linear import QuantLinear

LLAMA_LIKE = ("llama", "mistral", "qwen2")  # model types whose forward is exactly Llama's
MODEL_PARTS = ("model.embed_tokens.weight", "model.layers", "model.norm.weight", "model.norm.variance_epsilon",
               "model.rotary_emb", "lm_head")
LAYER_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj", "input_layernorm.weight", "input_layernorm.variance_epsilon",
               "post_attention_layernorm.weight", "post_attention_layernorm.variance_epsilon")
# Rope types whose frequencies depend on the sequence length beyond the original context.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _cat_biases(modules: Sequence[nn.Module]) -> Optional[torch.Tensor]:
    """The modules' biases end to end (zeros for a module without one); None when none has a bias."""
    present = [m.bias for m in modules if m.bias is not None]
    if not present:
        return None
    like = present[0].detach()
    return torch.cat([like.new_zeros(m.out_features) if m.bias is None else m.bias.detach().to(like.dtype)
                      for m in modules])


def fuse_linears(modules: Sequence[nn.Module]) -> Optional[nn.Module]:
    """One layer computing ``torch.cat([m(x) for m in modules], -1)``, or None when ``modules`` cannot be fused.

    Fusable: all plain ``nn.Linear`` with the same in_features, dtype and device, or all :class:`QuantLinear`
    with the same in_features, bits, group_size, symmetric, scale dtype, act_quant and device. The fused layer
    holds copies of the weights.
    """
    first = modules[0]
    kinds = {type(m) for m in modules}
    bias = _cat_biases(modules)
    if kinds == {nn.Linear}:
        if len({(m.in_features, m.weight.dtype, m.weight.device) for m in modules}) != 1:
            return None
        weight = torch.cat([m.weight.detach() for m in modules])
        fused = nn.Linear(first.in_features, weight.shape[0], bias=bias is not None, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            fused.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)
        return fused
    if kinds == {QuantLinear}:
        if len({(m.in_features, m.bits, m.group_size, m.symmetric, m.weight_scale.dtype, m.act_quant,
                 m.weight_packed.device) for m in modules}) != 1:
            return None
        zero_point = None if first.symmetric else torch.cat([m.weight_zero_point for m in modules])
        packed = PackedWeight(torch.cat([m.weight_packed for m in modules]),
                              torch.cat([m.weight_scale for m in modules]), zero_point,
                              (sum(m.out_features for m in modules), first.in_features), first.bits, first.group_size)
        fused = QuantLinear.from_packed(packed, bias, dtype=torch.float32 if bias is None else bias.dtype)
        fused.act_quant = first.act_quant
        return fused
    return None


def _get(root, path: str):
    for name in path.split("."):
        root = getattr(root, name, None)
    return root


def unsupported_reason(model) -> Optional[str]:
    """Why :class:`LlamaDecoder` cannot run ``model``, or None when it can."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_LIKE:
        return f"model_type {model_type!r} is not one of {', '.join(LLAMA_LIKE)}"
    hidden_act = getattr(config, "hidden_act", None)
    if hidden_act != "silu":
        return f"hidden_act={hidden_act!r}; only 'silu' is supported"
    if getattr(config, "sliding_window", None) is not None:
        return f"sliding_window={config.sliding_window} is not supported"
    missing = [p for p in MODEL_PARTS if _get(model, p) is None]
    if missing:
        return f"no {', '.join(missing)}"
    for i, layer in enumerate(model.model.layers):
        missing = [p for p in LAYER_PARTS if _get(layer, p) is None]
        if missing:
            return f"layer {i} has no {', '.join(missing)}"
    return None


def supports(model) -> bool:
    """Whether :class:`LlamaDecoder` can run ``model`` (a Llama, Mistral without sliding window, or Qwen2)."""
    return unsupported_reason(model) is None


class _Block:
    """One decoder layer: its modules, norm weights and KV cache."""

    def __init__(self, layer: nn.Module, k_cache: torch.Tensor, v_cache: torch.Tensor):
        attn, mlp = layer.self_attn, layer.mlp
        # the layers that run (fused where possible); qkv / gate_up: their bound forwards
        self.modules = {"qkv": self._fused([attn.q_proj, attn.k_proj, attn.v_proj]),
                        "gate_up": self._fused([mlp.gate_proj, mlp.up_proj])}
        self.qkv = [frozen(m) for m in self.modules["qkv"]]
        self.gate_up = [frozen(m) for m in self.modules["gate_up"]]
        self.o_proj, self.down_proj = frozen(attn.o_proj), frozen(mlp.down_proj)
        self.norm1 = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm2 = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        self.k_cache, self.v_cache = k_cache, v_cache

    @staticmethod
    def _fused(modules: List[nn.Module]) -> List[nn.Module]:
        fused = fuse_linears(modules)
        return modules if fused is None else [fused]


def frozen(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s forward with its weights bound once: ``QuantLinear.frozen_forward``, ``F.linear`` for a
    plain ``nn.Linear`` (both skip the per-call module overhead, the same for both kinds), else the module."""
    if isinstance(module, QuantLinear):
        return module.frozen_forward()
    if type(module) is nn.Linear:
        return functools.partial(F.linear, weight=module.weight, bias=module.bias)
    return module


def _concat(layers: List[Callable], x: torch.Tensor) -> torch.Tensor:
    """The output of a fused layer, or the separate layers' outputs side by side."""
    return layers[0](x) if len(layers) == 1 else torch.cat([layer(x) for layer in layers], dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """transformers' rotary embedding ``x * cos + rotate_half(x) * sin`` on x [..., head_dim], with
    ``rotate_half(x) * sin = swap_halves(x) * sin_signed`` (sin_signed: the first half negated): 3 ops, not 7."""
    half = x.shape[-1] // 2
    swapped = x.unflatten(-1, (2, half)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin_signed)


class LlamaDecoder:
    """Greedy batch-1 decoding of a ``LlamaForCausalLM``-like ``model`` with a KV cache of ``max_len`` positions.

    The decoder is a snapshot: it binds each projection's weights once (:func:`frozen`) and the fused q/k/v and
    gate/up layers are copies made here, so build it after the model's weights are final. ``step`` appends tokens
    to the cache; ``reset`` empties it.
    """

    def __init__(self, model: nn.Module, max_len: int = 512):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"model: {reason}")
        check_positive_int("max_len", max_len)
        config, rotary = model.config, model.model.rotary_emb
        if getattr(rotary, "rope_type", None) in LENGTH_DEPENDENT_ROPE and max_len > rotary.original_max_seq_len:
            raise ValueError(f"max_len={max_len} exceeds the original context ({rotary.original_max_seq_len}) of "
                             f"rope type {rotary.rope_type!r}, whose frequencies then change with the length")
        self.max_len, self.length = max_len, 0
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.intermediate_size = config.intermediate_size
        self.embed = model.model.embed_tokens.weight
        dtype, device = self.embed.dtype, self.embed.device
        with torch.inference_mode():
            cos, sin = rotary(self.embed[:1][None], torch.arange(max_len, device=device)[None])
            half = self.head_dim // 2
            self.cos, self.sin_signed = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
            shape = (1, self.n_kv_heads, max_len, self.head_dim)
            self.blocks = [_Block(layer, torch.zeros(shape, dtype=dtype, device=device),
                                  torch.zeros(shape, dtype=dtype, device=device)) for layer in model.model.layers]
        self.norm = (model.model.norm.weight, model.model.norm.variance_epsilon)
        self.lm_head = frozen(model.lm_head)

    def reset(self) -> None:
        """Empty the KV cache (old entries are never read again, so they are not cleared)."""
        self.length = 0

    @torch.inference_mode()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the tokens ``ids`` (1-D) at the next positions, appending them to the cache; the logits of the last."""
        start, count = self.length, ids.shape[0]
        if start + count > self.max_len:
            raise ValueError(f"{start} cached + {count} new tokens exceed max_len={self.max_len}")
        end = start + count
        cos, sin = self.cos[start:end, None], self.sin_signed[start:end, None]  # [count, 1 (heads), head_dim]
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        # SDPA's is_causal aligns the mask top-left, right only when the queries start at position 0.
        mask = None
        if count > 1 and start > 0:
            mask = torch.ones(count, end, dtype=torch.bool, device=ids.device).tril(diagonal=start)
        x = F.embedding(ids, self.embed)
        for block in self.blocks:
            h = F.rms_norm(x, (x.shape[-1],), *block.norm1)
            qkv = _concat(block.qkv, h)
            qk = _rope(qkv[:, :q_size + kv_size].view(count, self.n_heads + self.n_kv_heads, self.head_dim), cos, sin)
            q = qk[:, :self.n_heads].transpose(0, 1)
            block.k_cache[0, :, start:end] = qk[:, self.n_heads:].transpose(0, 1)
            block.v_cache[0, :, start:end] = qkv[:, q_size + kv_size:].view(count, self.n_kv_heads,
                                                                             self.head_dim).transpose(0, 1)
            attn = F.scaled_dot_product_attention(q[None], block.k_cache[:, :, :end], block.v_cache[:, :, :end],
                                                  attn_mask=mask, is_causal=count > 1 and start == 0, enable_gqa=True)
            x = x + block.o_proj(attn[0].transpose(0, 1).reshape(count, q_size))
            h = F.rms_norm(x, (x.shape[-1],), *block.norm2)
            gate, up = _concat(block.gate_up, h).split(self.intermediate_size, dim=-1)
            x = x + block.down_proj(F.silu(gate) * up)
        self.length = end
        return self.lm_head(F.rms_norm(x[-1:], (x.shape[-1],), *self.norm))[0]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> List[int]:
        """The ``new_tokens`` greedy tokens after the prompt ``input_ids`` ([T] or [1, T]), from an empty cache."""
        ids = _prompt(input_ids)
        check_positive_int("new_tokens", new_tokens)
        # The last token is never fed back, as in model.generate.
        if ids.shape[0] + new_tokens - 1 > self.max_len:
            raise ValueError(f"a prompt of {ids.shape[0]} tokens and new_tokens={new_tokens} need "
                             f"{ids.shape[0] + new_tokens - 1} cache positions; max_len={self.max_len}")
        self.reset()
        logits = self.step(ids.to(self.embed.device))
        out = []
        for i in range(new_tokens):
            token = logits.argmax().view(1)
            out.append(token)
            if i + 1 < new_tokens:
                logits = self.step(token)
        return torch.cat(out).tolist()


def _prompt(input_ids: torch.Tensor) -> torch.Tensor:
    """``input_ids`` as a 1-D tensor (batch 1)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() not in (1, 2) \
            or (input_ids.dim() == 2 and input_ids.shape[0] != 1) or input_ids.shape[-1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a non-empty [T] or [1, T] tensor of token ids, got {shape}")
    return input_ids.reshape(-1)


def greedy_generate(model: nn.Module, input_ids: torch.Tensor, new_tokens: int,
                    max_len: Optional[int] = None) -> List[int]:
    """The ``new_tokens`` greedy tokens after ``input_ids`` ([T] or [1, T]), by a :class:`LlamaDecoder`.

    ``max_len`` (cache positions) defaults to what the prompt and the new tokens need.
    """
    check_positive_int("new_tokens", new_tokens)
    max_len = _prompt(input_ids).shape[0] + new_tokens - 1 if max_len is None else max_len
    return LlamaDecoder(model, max_len).generate(input_ids, new_tokens)
