"""The forest a cascade-attention call runs over, and the checks every implementation shares.

A search forest is described as a list of KV segments, each read by the branches (query rows) whose path runs
through it. Both implementations accept exactly the same input, so the checks live here once: a malformed forest
(a wrong head count, an index out of range, a branch read twice by one segment, a branch with no keys) would
otherwise give silently wrong attention rather than an error.

The structure (which rows read which segment, lengths, causality) is a :class:`ForestLayout`, checked apart from
the KV tensors: a forward's layers share one layout and differ only in their KV (:func:`bind_forest`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ttc.errors import ConfigError
from ttc.types import is_int

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


TRITON_MAX_HEAD_DIM = 256
"""The widest head the Triton kernel's tiles hold (its register budget); wider heads take the torch path."""

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


@dataclass(frozen=True, eq=False)
class ForestLayout:
    """Everything about a forest but its KV: each segment's query rows, length and causality, and the query shape.

    Every layer of one forward attends the same forest over its own KV, so the structure is checked (and each
    implementation's tables are derived from it) once per forward rather than once per layer: build it with
    :func:`forest_layout`, then pass each layer's tensors to ``ttc.kernels.layout_attention``. ``rows`` are CPU
    int64 tensors so that building launch tables never waits on the device. ``cache`` holds what an
    implementation derives from the layout (the torch path's segment groups), keyed by that implementation.
    """

    rows: tuple[torch.Tensor, ...]
    lengths: tuple[int, ...]
    causal: tuple[bool, ...]
    batch: int
    tokens: int
    cache: dict[object, object] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Forest:
    """A checked forest: a layout bound to one call's KV tensors and query heads."""

    layout: ForestLayout
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    heads_q: int
    heads_kv: int
    head_dim: int
    scale: float

    @property
    def rows(self) -> tuple[torch.Tensor, ...]:
        return self.layout.rows

    @property
    def batch(self) -> int:
        return self.layout.batch

    @property
    def tokens(self) -> int:
        return self.layout.tokens

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.heads_q // self.heads_kv


def forest_layout(
    rows: Sequence[torch.Tensor], lengths: Sequence[int], causal: Sequence[bool], *, batch: int, tokens: int
) -> ForestLayout:
    """Check a forest's structure and return it; raise ConfigError naming what is wrong.

    ``rows[i]`` are the query rows that read segment ``i`` (of ``lengths[i]`` positions, ``causal[i]`` when it
    ends with the queries' own ``tokens`` tokens); queries are ``[batch, tokens, ...]``.
    """
    if not len(rows) == len(lengths) == len(causal):
        raise ConfigError(
            f"a forest layout needs one row list, length and causal flag per segment; got {len(rows)}, "
            f"{len(lengths)} and {len(causal)}"
        )
    if len(rows) == 0:
        raise ConfigError("forest attention needs at least one Segment; got an empty list")
    if not is_int(batch) or not is_int(tokens) or batch <= 0 or tokens <= 0:
        raise ConfigError(f"a forest layout needs int batch >= 1 and tokens >= 1, got {batch!r} and {tokens!r}")
    for number, n in enumerate(lengths):
        if not is_int(n):
            raise ConfigError(f"lengths[{number}] must be an int number of key positions, got {n!r}")
    for number, r in enumerate(rows):
        if not isinstance(r, torch.Tensor) or r.dim() != 1 or r.dtype not in (torch.int64, torch.int32):
            raise ConfigError(
                f"rows[{number}] must be a 1-D int64 tensor of query-row indices, got "
                f"{getattr(r, 'dtype', type(r).__name__)} of shape {tuple(getattr(r, 'shape', ()))}"
            )
    # A copy: the layout is checked once and reused, so a later change to the caller's tensor must not reach it.
    host = tuple(r.to(device="cpu", dtype=torch.int64, copy=True) for r in rows)
    sizes = tuple(int(n) for n in lengths)
    flags = tuple(bool(c) for c in causal)
    _check_rows(host, sizes, flags, batch, tokens)
    return ForestLayout(rows=host, lengths=sizes, causal=flags, batch=batch, tokens=tokens)


def check_forest(q: torch.Tensor, segments: Sequence[Segment], scale: float | None) -> Forest:
    """Validate ``q`` against ``segments`` and return the checked forest; raise ConfigError naming what is wrong."""
    batch, tokens, _, _ = _check_query(q)
    if isinstance(segments, Segment) or not isinstance(segments, Sequence):
        raise ConfigError(f"segments must be a list of ttc.kernels.Segment, got {type(segments).__name__}")
    for number, seg in enumerate(segments):
        if not isinstance(seg, Segment):
            raise ConfigError(f"segments[{number}] must be a ttc.kernels.Segment, got {type(seg).__name__}")
    layout = forest_layout([s.queries for s in segments], [s.length for s in segments],
                           [s.causal for s in segments], batch=batch, tokens=tokens)
    return bind_forest(q, layout, [s.k for s in segments], [s.v for s in segments], scale)


def bind_forest(q: torch.Tensor, layout: ForestLayout, keys: Sequence[torch.Tensor],
                values: Sequence[torch.Tensor], scale: float | None) -> Forest:
    """Check one call's queries and KV against a checked layout; raise ConfigError naming what is wrong."""
    batch, tokens, heads_q, head_dim = _check_query(q)
    if not isinstance(layout, ForestLayout):
        raise ConfigError(f"layout must be a ForestLayout (from forest_layout), got {type(layout).__name__}")
    for name, tensors in (("keys", keys), ("values", values)):
        if not isinstance(tensors, Sequence):  # an iterator has no length to check against the layout's
            raise ConfigError(f"{name} must be a sequence of tensors, one per segment, got {type(tensors).__name__}")
    if (batch, tokens) != (layout.batch, layout.tokens):
        raise ConfigError(
            f"q has {batch} rows of {tokens} tokens but the forest layout was built for {layout.batch} rows of "
            f"{layout.tokens}; build a layout for these queries"
        )
    if not len(keys) == len(values) == len(layout.lengths):
        raise ConfigError(
            f"the forest layout has {len(layout.lengths)} segments but got {len(keys)} key and {len(values)} "
            "value tensors; pass one of each per segment, in layout order"
        )
    heads_kv = _check_segment_tensors(q, keys, values, layout.lengths)
    if heads_q % heads_kv != 0:
        raise ConfigError(
            f"query heads ({heads_q}) must be a multiple of KV heads ({heads_kv}) for grouped-query attention"
        )
    return Forest(
        layout=layout,
        keys=tuple(keys),
        values=tuple(values),
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


def _check_segment_tensors(q: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                           lengths: Sequence[int]) -> int:
    heads_kv = -1
    for number, (k, v, length) in enumerate(zip(keys, values, lengths, strict=True)):
        if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor) or k.dim() != 3 or v.dim() != 3:
            raise ConfigError(f"segments[{number}] keys and values must be [L, H_kv, D] tensors")
        if k.shape != v.shape or k.shape[0] != length:
            raise ConfigError(
                f"segments[{number}] has keys {tuple(k.shape)} and values {tuple(v.shape)}, but the layout says "
                f"{length} positions; pass [L, H_kv, D] tensors of the layout's length"
            )
        _, seg_heads, seg_dim = k.shape
        if seg_dim != q.shape[3]:
            raise ConfigError(f"segments[{number}] has head dim {seg_dim}, but q has head dim {q.shape[3]}")
        if heads_kv == -1:
            heads_kv = seg_heads
        elif seg_heads != heads_kv:
            raise ConfigError(
                f"segments[{number}] has {seg_heads} KV heads, but segments[0] has {heads_kv}; "
                "all segments of one layer share the KV head count"
            )
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise ConfigError(
                f"segments[{number}] KV dtype ({k.dtype}, {v.dtype}) differs from q's {q.dtype}; "
                "cast the KV or the queries so they match"
            )
        if k.device != q.device or v.device != q.device:
            raise ConfigError(
                f"segments[{number}] KV lives on {k.device}/{v.device} but q on {q.device}; "
                "move them to one device"
            )
    if heads_kv == 0:
        raise ConfigError("segments have zero KV heads")
    return heads_kv


def _check_rows(rows: tuple[torch.Tensor, ...], lengths: tuple[int, ...], causal: tuple[bool, ...], batch: int,
                tokens: int) -> None:
    """Check query indices with a few whole-forest array operations (no loop over branches).

    numpy rather than torch: these arrays are tiny, and torch's threaded kernels cost more in wake-ups than
    the work itself.
    """
    flat = np.concatenate([r.numpy() for r in rows])
    low, high = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
    if low < 0 or high >= batch:
        bad = low if low < 0 else high
        raise ConfigError(f"Segment.queries holds index {bad}, outside the {batch} query rows of q")
    counts = np.array([r.numel() for r in rows], dtype=np.int64)
    seg_ids = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
    if np.unique(seg_ids * batch + flat).size != flat.size:
        raise ConfigError("a Segment lists the same query row twice; each branch reads a segment once")
    for number, (length, is_causal) in enumerate(zip(lengths, causal, strict=True)):
        if length < 0:
            raise ConfigError(f"segments[{number}] has a negative length ({length})")
        if is_causal and length < tokens:
            raise ConfigError(
                f"segments[{number}] is causal with {length} positions but q has T={tokens} tokens; "
                "a causal segment must end with the queries' own T tokens"
            )
    keys = np.bincount(flat, weights=np.repeat(np.array(lengths, dtype=np.int64), counts), minlength=batch)
    empty = np.flatnonzero(keys == 0)
    if empty.size > 0:
        shown = ", ".join(str(int(i)) for i in empty[:8])
        raise ConfigError(
            f"query rows [{shown}{', ...' if empty.size > 8 else ''}] attend over no keys: every branch "
            "needs at least one segment with KV positions"
        )


def _check_scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    value = math.nan
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):  # numpy floats and ints are Real too
        try:
            value = float(scale)
        except OverflowError:  # an int too large for a float
            value = math.inf
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"scale must be a positive finite number or None (1/sqrt(D)), got {scale!r}")
    return value
