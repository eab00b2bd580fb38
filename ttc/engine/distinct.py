"""Sampling without replacement for one request: stochastic beam search, a Gumbel-top-k draw over sequences.

A confident model's independent samples repeat each other (the mini reasoner's 16 samples of a problem hold 9
different texts on average), and a verifier can only choose among different ones. Perturbing each whole
sequence's log-probability with its own Gumbel noise and keeping the ``n`` largest is an exact draw of ``n``
sequences without replacement (Kool, van Hoof and Welling, 2019). A prefix's perturbed value is the largest of
its continuations', so the ``n`` largest are found top-down, one token at a time, by a beam of ``n``: each
step draws the children's noise conditioned on their parent's value and keeps the ``n`` largest of the children
and of the sequences already finished.

The distribution is the one independent sampling would use (temperature, then the nucleus), so the samples are
what ``n`` independent samples would be with the repeats drawn again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Pick:
    """A kept child: the beam row it extends, its token, its log-probability and perturbed value so far."""

    row: int
    token: int
    logprob: float
    gumbel: float


def step_logprobs(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """log q(token | prefix) for rows of fp32 ``logits`` [B, V]: temperature-scaled, -inf outside the nucleus
    (the tokens the independent sampler could draw: those whose more likely tokens hold less than ``top_p``)."""
    logq = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = logq.exp().sort(dim=-1, descending=True)
        before = ordered.cumsum(dim=-1) - ordered
        outside = torch.zeros_like(before, dtype=torch.bool).scatter(1, order, before >= top_p)
        logq = torch.log_softmax(logq.masked_fill(outside, float("-inf")), dim=-1)
    return logq


def gumbels(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Standard Gumbel noise; the uniforms are kept off 0 and 1 so every value is finite."""
    tiny = torch.finfo(torch.float64).tiny
    uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float64).clamp(tiny, 1 - 1e-16)
    return -torch.log(-torch.log(uniform))


def conditioned(values: Tensor, bound: Tensor) -> Tensor:
    """Gumbels ``values`` [B, V] shifted so each row's maximum becomes its ``bound`` [B] while keeping their joint
    law: the top-down step of the Gumbel-top-k draw, in the numerically stable form of Kool et al.'s appendix."""
    top = values.max(dim=-1, keepdim=True).values
    gap = (values - top).clamp(max=0.0)
    # log(1 - exp(gap)), -inf at the maximum itself
    log1mexp = torch.where(gap > -0.693, torch.log(-torch.expm1(gap)), torch.log1p(-torch.exp(gap)))
    v = bound[:, None] - values + log1mexp
    out = bound[:, None] - v.clamp(min=0.0) - torch.log1p(torch.exp(-v.abs()))
    return out.masked_fill(values == float("-inf"), float("-inf"))


def select(logits: Tensor, logprobs: Sequence[float], values: Sequence[float], finished: Sequence[float], n: int, *,
           temperature: float, top_p: float, generator: torch.Generator) -> tuple[list[int], list[Pick]]:
    """One step of the beam: which of the ``finished`` sequences (their perturbed values) stay, and which
    children of the live rows (their next-token ``logits``, log-probabilities and perturbed values so far) join.

    At most ``n`` in all, the largest perturbed values first; a child outside the nucleus is never kept.
    """
    device = logits.device
    logq = step_logprobs(logits.double(), temperature, top_p)
    phi = torch.tensor(list(logprobs), device=device, dtype=torch.float64)[:, None] + logq
    noise = phi + gumbels(tuple(phi.shape), generator, device)
    noise = noise.masked_fill(phi == float("-inf"), float("-inf"))
    children = conditioned(noise, torch.tensor(list(values), device=device, dtype=torch.float64))
    width = children.shape[-1]
    flat = children.flatten()
    take = min(n, int(torch.isfinite(flat).sum()))
    top_values, top_index = flat.topk(take) if take else (flat[:0], flat[:0].long())
    ranked = [(float(v), -1 - i) for i, v in enumerate(finished)]
    ranked += [(float(v), int(k)) for v, k in zip(top_values.tolist(), top_index.tolist(), strict=True)]
    ranked.sort(key=lambda item: item[0], reverse=True)
    kept = [-1 - key for _, key in ranked[:n] if key < 0]
    picks = [Pick(key // width, key % width, float(phi.view(-1)[key]), value) for value, key in ranked[:n] if key >= 0]
    return sorted(kept), picks


__all__ = ["Pick", "conditioned", "gumbels", "select", "step_logprobs"]
