"""Forests for the kernel tests, and the ground truth they are checked against.

The ground truth is deliberately naive: for each branch, concatenate the KV of every segment on its path,
build the causal mask position by position, and run fp64 softmax attention. It shares no code with ttc.
"""

from __future__ import annotations

import random

import torch

from ttc.kernels import Segment

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LSE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def naive_attention(
    q: torch.Tensor, segments: list[Segment], scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 attention of each branch over its segments' concatenated KV: (out [B,T,H_q,D], lse [B,T,H_q])."""
    batch, tokens, heads_q, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    out = torch.empty(batch, tokens, heads_q, dim, dtype=torch.float64)
    lse = torch.empty(batch, tokens, heads_q, dtype=torch.float64)
    for b in range(batch):
        keys, values, visible = [], [], []
        for seg in segments:
            if b not in seg.queries.tolist():
                continue
            length = seg.k.shape[0]
            keys.append(seg.k.double())
            values.append(seg.v.double())
            positions = torch.arange(length).unsqueeze(0)
            if seg.causal:  # token t sees positions < length - T + t + 1
                visible.append(positions < length - tokens + torch.arange(tokens).unsqueeze(1) + 1)
            else:
                visible.append(positions.expand(tokens, length) >= 0)
        k, v, mask = torch.cat(keys), torch.cat(values), torch.cat(visible, dim=1)
        group = heads_q // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,lhd->thl", q[b].double(), k) * scale
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        lse[b] = torch.logsumexp(scores, dim=-1)
        out[b] = torch.einsum("thl,lhd->thd", torch.softmax(scores, dim=-1), v)
    return out, lse


class Maker:
    """Seeded random tensors of one dtype and head layout."""

    def __init__(self, seed: int, heads_kv: int, dim: int, dtype: torch.dtype) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.heads_kv, self.dim, self.dtype = heads_kv, dim, dtype

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(self.dtype)

    def segment(self, length: int, queries: list[int], causal: bool = False) -> Segment:
        return Segment(
            self.randn(length, self.heads_kv, self.dim),
            self.randn(length, self.heads_kv, self.dim),
            torch.tensor(queries, dtype=torch.int64),
            causal,
        )


def random_tree(seed: int, batch: int, tokens: int, heads_kv: int, dim: int, dtype: torch.dtype,
                max_length: int = 9) -> list[Segment]:
    """A random search forest over ``batch`` branches: nested shared segments down to per-branch leaves.

    Branches are split recursively into contiguous groups; every group gets a segment (length 0 allowed), and
    when ``tokens > 1`` every branch ends with a causal segment holding its own T tokens.
    """
    rng = random.Random(seed)
    make = Maker(seed, heads_kv, dim, dtype)
    segments: list[Segment] = []

    def grow(branches: list[int], depth: int) -> None:
        segments.append(make.segment(rng.randint(0, max_length), branches))
        if len(branches) > 1 and depth < 4:
            cut = rng.randint(1, len(branches) - 1)
            grow(branches[:cut], depth + 1)
            grow(branches[cut:], depth + 1)

    order = list(range(batch))
    rng.shuffle(order)
    grow(order[: max(1, batch // 2)], 0)
    if batch > 1:
        grow(order[max(1, batch // 2) :], 0)
    for b in range(batch):
        segments.append(make.segment(tokens + rng.randint(0, 2), [b], causal=tokens > 1))
    return segments


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    torch.testing.assert_close(actual.double(), expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")
