"""Next-token sampling for a batch of sequences that each carry their own settings and random stream.

Every sequence owns a ``torch.Generator`` seeded from its request's seed and its branch index, and draws exactly
one uniform number per sampled token from it. What a sequence samples therefore depends only on its own logits
and its own stream, never on which other sequences share the batch: the same seed gives the same samples
whether a request runs alone or among many.

Sampling is by inverse CDF over the (temperature-scaled, top-p-truncated) distribution, vectorised across the
batch. Reported logprobs are those of the model's unmodified distribution, which is what likelihood-based
ranking and scoring need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def branch_seed(seed: int, branch: int) -> int:
    """A well-mixed 63-bit seed for branch ``branch`` of a request seeded with ``seed`` (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + (branch + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


@dataclass(frozen=True)
class RowSettings:
    """One sequence's sampling settings for a step."""

    temperature: float
    top_p: float
    generator: torch.Generator


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def sample(logits: Tensor, rows: Sequence[RowSettings]) -> tuple[list[int], list[float]]:
    """One token per row of fp32 ``logits`` [B, V], and each token's logprob under the model's distribution."""
    logprobs = torch.log_softmax(logits, dim=-1)
    temps = [r.temperature for r in rows]
    chosen = logits.argmax(dim=-1)
    stochastic = [i for i, t in enumerate(temps) if t > 0]
    if stochastic:
        index = torch.tensor(stochastic, device=logits.device)
        picked = _sample_rows(logits.index_select(0, index), [rows[i] for i in stochastic])
        chosen = chosen.index_copy(0, index, picked)
    token_logprobs = logprobs.gather(1, chosen[:, None]).squeeze(1)
    return [int(t) for t in chosen.tolist()], [float(x) for x in token_logprobs.tolist()]


def _sample_rows(logits: Tensor, rows: Sequence[RowSettings]) -> Tensor:
    """Rows with and without top-p take different (sorted vs natural-order) CDFs; each row always takes the
    one its own settings imply, so a row's token never depends on its neighbours' settings."""
    device = logits.device
    temps = torch.tensor([r.temperature for r in rows], device=device, dtype=logits.dtype)
    probs = torch.softmax(logits / temps[:, None], dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=r.generator, device=device) for r in rows])
    picked = _inverse_cdf(probs, uniforms)
    nucleus = [i for i, r in enumerate(rows) if r.top_p < 1.0]
    if nucleus:
        index = torch.tensor(nucleus, device=device)
        limits = torch.tensor([rows[i].top_p for i in nucleus], device=device, dtype=probs.dtype)
        ordered, order = probs.index_select(0, index).sort(dim=-1, descending=True)
        before = ordered.cumsum(dim=-1) - ordered
        ordered = ordered.masked_fill(before >= limits[:, None], 0.0)
        chosen = order.gather(1, _inverse_cdf(ordered, uniforms.index_select(0, index))[:, None]).squeeze(1)
        picked = picked.index_copy(0, index, chosen)
    return picked


def _inverse_cdf(weights: Tensor, uniforms: Tensor) -> Tensor:
    """Index of the first cumulative weight above ``u * total``, per row (zero-weight entries never chosen)."""
    cdf = weights.cumsum(dim=-1)
    targets = uniforms * cdf[:, -1]
    picked = torch.searchsorted(cdf, targets[:, None], right=True).squeeze(1)
    # u * total can round up to total; fall back to the last token that has weight.
    last = (weights > 0).cumsum(dim=-1).argmax(dim=-1)
    return torch.where(picked >= weights.shape[-1], last, picked)


__all__ = ["RowSettings", "branch_seed", "make_generator", "sample"]
