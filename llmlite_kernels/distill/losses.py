"""Distillation losses between teacher logits ``f`` and student logits ``g``, computed chunk-wise over tokens.

Every ``*_per_token`` function takes teacher and student logits ``[N, V]`` (N tokens, V the vocabulary)
and returns the loss of each token ``[N]`` (float32); the training loss is the mean over tokens.

* ``seed``: the seed's ``L_KD = beta * E||softmax(f) - softmax(g)||^2 + alpha * E||f - g||^2``.
  **E is the mean over tokens of the squared L2 norm over the vocabulary** (a sum over V, a mean over N),
  so with V = 49152 the logit term is typically far larger than the probability term (which is at most 2).
* ``kl``: forward ``T^2 * KL(p_T || q_T)`` with ``p_T = softmax(f / T)``, ``q_T = softmax(g / T)`` (Hinton).
* ``reverse_kl``: ``T^2 * KL(q_T || p_T)`` (mode seeking).
* ``jsd``: generalized Jensen-Shannon ``JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m)`` with
  ``m = beta * p + (1 - beta) * q`` at temperature T, times ``T^2``; ``beta`` in (0, 1), 0.5 = the usual JSD.

:func:`chunked_logit_loss` applies a per-token loss to ``head(hidden)`` in chunks of tokens, recomputing
each chunk's logits in the backward pass, so at most ``chunk_tokens x V`` logits (and softmaxes) exist at once.
:func:`hidden_state_loss` is the optional per-layer hidden-state matching term.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._checks import check_choice

LOSSES = ("seed", "kl", "reverse_kl", "jsd")


def _check_pair(teacher: torch.Tensor, student: torch.Tensor) -> None:
    if teacher.shape != student.shape or teacher.dim() != 2:
        raise ValueError(f"teacher and student logits must both be [tokens, vocab]; got {tuple(teacher.shape)} "
                         f"and {tuple(student.shape)}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def seed_kd_per_token(teacher: torch.Tensor, student: torch.Tensor, alpha: float = 1.0, beta: float = 1.0
                      ) -> torch.Tensor:
    """``beta * ||softmax(f) - softmax(g)||^2 + alpha * ||f - g||^2`` per token (norms summed over V)."""
    _check_pair(teacher, student)
    f, g = teacher.float(), student.float()
    prob = (f.softmax(-1) - g.softmax(-1)).square().sum(-1)
    logit = (f - g).square().sum(-1)
    return beta * prob + alpha * logit


def forward_kl_per_token(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * sum_v p_T (log p_T - log q_T)``."""
    _check_pair(teacher, student)
    _check_temperature(temperature)
    log_p = F.log_softmax(teacher.float() / temperature, -1)
    log_q = F.log_softmax(student.float() / temperature, -1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl_per_token(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * sum_v q_T (log q_T - log p_T)``."""
    return forward_kl_per_token(student, teacher, temperature)


def jsd_per_token(teacher: torch.Tensor, student: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
                  ) -> torch.Tensor:
    """``T^2 * (beta * KL(p || m) + (1 - beta) * KL(q || m))``, ``m = beta p + (1 - beta) q``."""
    _check_pair(teacher, student)
    _check_temperature(temperature)
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1) for the jsd loss, got {beta}")
    log_p = F.log_softmax(teacher.float() / temperature, -1)
    log_q = F.log_softmax(student.float() / temperature, -1)
    # log m = logsumexp(log beta + log p, log (1 - beta) + log q), stable when p or q underflow.
    log_m = torch.logaddexp(log_p + torch.log(torch.tensor(beta)), log_q + torch.log(torch.tensor(1 - beta)))
    kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
    return temperature**2 * (beta * kl_p + (1 - beta) * kl_q)


def per_token_loss(loss: str, alpha: float = 1.0, beta: float | None = None, temperature: float = 1.0
                   ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-token function of ``loss`` with its hyper-parameters bound (``beta`` default: 1 for seed,
    0.5 for jsd; ``temperature`` applies to kl, reverse_kl and jsd)."""
    check_choice("loss", loss, LOSSES)
    _check_temperature(temperature)
    if loss == "seed":
        if alpha < 0 or (beta is not None and beta < 0) or (alpha == 0 and beta == 0):
            raise ValueError(f"alpha and beta must be >= 0 and not both 0, got alpha={alpha}, beta={beta}")
        return functools.partial(seed_kd_per_token, alpha=alpha, beta=1.0 if beta is None else beta)
    if loss == "kl":
        return functools.partial(forward_kl_per_token, temperature=temperature)
    if loss == "reverse_kl":
        return functools.partial(reverse_kl_per_token, temperature=temperature)
    beta = 0.5 if beta is None else beta
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1) for the jsd loss, got {beta}")
    return functools.partial(jsd_per_token, beta=beta, temperature=temperature)


def _chunk_sum(per_token, student_head, teacher_head, student_hidden, teacher_hidden):
    with torch.no_grad():
        teacher_logits = teacher_head(teacher_hidden)
    return per_token(teacher_logits, student_head(student_hidden)).sum()


def chunked_logit_loss(per_token: Callable, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                       student_head: Callable, teacher_head: Callable, chunk_tokens: int = 256) -> torch.Tensor:
    """Mean over tokens of ``per_token(teacher_head(teacher_hidden), student_head(student_hidden))``.

    ``*_hidden`` are final hidden states ``[..., H]`` (flattened over the leading dimensions); the heads map
    them to logits. Each chunk of ``chunk_tokens`` tokens is checkpointed: its logits are recomputed in the
    backward pass instead of being kept, so memory holds one chunk of logits, not ``tokens x V``.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    s = student_hidden.reshape(-1, student_hidden.shape[-1])
    t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"student has {s.shape[0]} tokens, teacher {t.shape[0]}")
    total = s.new_zeros((), dtype=torch.float32)
    for start in range(0, s.shape[0], chunk_tokens):
        args = (per_token, student_head, teacher_head, s[start:start + chunk_tokens], t[start:start + chunk_tokens])
        if torch.is_grad_enabled() and s.requires_grad:
            total = total + checkpoint(_chunk_sum, *args, use_reentrant=False)
        else:
            total = total + _chunk_sum(*args)
    return total / s.shape[0]


def hidden_state_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the normalized MSE ``mean((h_s - h_t)^2) / mean(h_t^2)`` (scale-free per layer)."""
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(f"need the same non-zero number of student and teacher hidden states, got "
                         f"{len(student_states)} and {len(teacher_states)}")
    terms = []
    for hs, ht in zip(student_states, teacher_states):
        if hs.shape != ht.shape:
            raise ValueError(f"hidden state shapes differ: student {tuple(hs.shape)}, teacher {tuple(ht.shape)}")
        ht = ht.detach().float()
        terms.append((hs.float() - ht).square().mean() / ht.square().mean().clamp_min(1e-12))
    return torch.stack(terms).mean()
