"""The forest a cascade-attention call runs over, and the checks every implementation shares.

A search forest is described as a list of KV segments, each read by the branches (query rows) whose path runs
through it. Both implementations accept exactly the same input, so the checks live here once: a malformed forest
(a wrong head count, an index out of range, a branch read twice by one segment, a branch with no keys) would
otherwise give silently wrong attention rather than an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ttc.errors import ConfigError

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True, eq=False)
class Segment:
    """One run of KV positions shared by the branches listed in ``queries`` (a segment no branch reads is skipped).

    ``causal`` marks a segment that ends with the queries' own ``T`` tokens (prefill or verification of several
    tokens at once): query token ``t`` then sees positions ``< L - T + t + 1`` of it. Equality is identity
    (``eq=False``) because element-wise tensor comparison has no single truth value.
    """

    k: torch.Tensor
    v: torch.Tensor
    queries: torch.Tensor
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("k", "v", "queries"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise ConfigError(f"Segment.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.k.dim() != 3 or self.v.dim() != 3:
            raise ConfigError(
                f"Segment.k and Segment.v must be [L, H_kv, D], got shapes {tuple(self.k.shape)} and "
                f"{tuple(self.v.shape)}"
            )
        if self.k.shape != self.v.shape:
            raise ConfigError(
                f"Segment.k and Segment.v must have the same shape, got {tuple(self.k.shape)} and "
                f"{tuple(self.v.shape)}"
            )
        if self.queries.dim() != 1 or self.queries.dtype not in (torch.int64, torch.int32):
            raise ConfigError(
                f"Segment.queries must be a 1-D int64 tensor of query-row indices, got dtype "
                f"{self.queries.dtype} and shape {tuple(self.queries.shape)}"
            )

    @property
    def length(self) -> int:
        """Number of KV positions (``L``)."""
        return int(self.k.shape[0])


@dataclass(frozen=True)
class Forest:
    """A checked forest: the sizes every implementation needs, and each segment's query rows on the host.

    ``rows`` holds CPU int64 copies of ``Segment.queries`` so that building launch tables never waits on the
    device again.
    """

    segments: tuple[Segment, ...]
    rows: tuple[torch.Tensor, ...]
    batch: int
    tokens: int
    heads_q: int
    heads_kv: int
    head_dim: int
    scale: float

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.heads_q // self.heads_kv


def check_forest(q: torch.Tensor, segments: Sequence[Segment], scale: float | None) -> Forest:
    """Validate ``q`` against ``segments`` and return the sizes; raise ConfigError naming what is wrong."""
    batch, tokens, heads_q, head_dim = _check_query(q)
    if len(segments) == 0:
        raise ConfigError("forest attention needs at least one Segment; got an empty list")
    heads_kv = _check_segment_tensors(q, segments)
    if heads_q % heads_kv != 0:
        raise ConfigError(
            f"query heads ({heads_q}) must be a multiple of KV heads ({heads_kv}) for grouped-query attention"
        )
    rows = _check_rows(segments, batch, tokens)
    return Forest(
        segments=tuple(segments),
        rows=rows,
        batch=batch,
        tokens=tokens,
        heads_q=heads_q,
        heads_kv=heads_kv,
        head_dim=head_dim,
        scale=_check_scale(scale, head_dim),
    )


def _check_query(q: torch.Tensor) -> tuple[int, int, int, int]:
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ConfigError(f"q must be a [B, T, H_q, D] tensor, got {shape}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ConfigError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    batch, tokens, heads_q, head_dim = (int(n) for n in q.shape)
    if min(batch, tokens, heads_q, head_dim) == 0:
        raise ConfigError(f"q has an empty dimension: shape {tuple(q.shape)}")
    return batch, tokens, heads_q, head_dim


def _check_segment_tensors(q: torch.Tensor, segments: Sequence[Segment]) -> int:
    heads_kv = -1
    for number, seg in enumerate(segments):
        if not isinstance(seg, Segment):
            raise ConfigError(f"segments[{number}] must be a ttc.kernels.Segment, got {type(seg).__name__}")
        _, seg_heads, seg_dim = (int(n) for n in seg.k.shape)
        if seg_dim != q.shape[3]:
            raise ConfigError(f"segments[{number}] has head dim {seg_dim}, but q has head dim {q.shape[3]}")
        if heads_kv == -1:
            heads_kv = seg_heads
        elif seg_heads != heads_kv:
            raise ConfigError(
                f"segments[{number}] has {seg_heads} KV heads, but segments[0] has {heads_kv}; "
                "all segments of one layer share the KV head count"
            )
        if seg.k.dtype != q.dtype or seg.v.dtype != q.dtype:
            raise ConfigError(
                f"segments[{number}] KV dtype ({seg.k.dtype}, {seg.v.dtype}) differs from q's {q.dtype}; "
                "cast the KV or the queries so they match"
            )
        if seg.k.device != q.device or seg.v.device != q.device:
            raise ConfigError(
                f"segments[{number}] KV lives on {seg.k.device}/{seg.v.device} but q on {q.device}; "
                "move them to one device"
            )
    if heads_kv == 0:
        raise ConfigError("segments have zero KV heads")
    return heads_kv


def _check_rows(segments: Sequence[Segment], batch: int, tokens: int) -> tuple[torch.Tensor, ...]:
    """Check query indices with a few whole-forest array operations (no loop over branches).

    numpy rather than torch: these arrays are tiny, and torch's threaded kernels cost more in wake-ups than
    the work itself.
    """
    rows = tuple(seg.queries.to(device="cpu", dtype=torch.int64) for seg in segments)
    flat = np.concatenate([r.numpy() for r in rows])
    low, high = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
    if low < 0 or high >= batch:
        bad = low if low < 0 else high
        raise ConfigError(f"Segment.queries holds index {bad}, outside the {batch} query rows of q")
    counts = np.array([r.numel() for r in rows], dtype=np.int64)
    seg_ids = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
    if np.unique(seg_ids * batch + flat).size != flat.size:
        raise ConfigError("a Segment lists the same query row twice; each branch reads a segment once")
    for number, seg in enumerate(segments):
        if seg.causal and seg.length < tokens:
            raise ConfigError(
                f"segments[{number}] is causal with {seg.length} positions but q has T={tokens} tokens; "
                "a causal segment must end with the queries' own T tokens"
            )
    lengths = np.repeat(np.array([s.length for s in segments], dtype=np.int64), counts)
    keys = np.bincount(flat, weights=lengths, minlength=batch)
    empty = np.flatnonzero(keys == 0)
    if empty.size > 0:
        shown = ", ".join(str(int(i)) for i in empty[:8])
        raise ConfigError(
            f"query rows [{shown}{', ...' if empty.size > 8 else ''}] attend over no keys: every branch "
            "needs at least one segment with KV positions"
        )
    return rows


def _check_scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"scale must be a positive finite number or None (1/sqrt(D)), got {scale!r}")
    return float(scale)
