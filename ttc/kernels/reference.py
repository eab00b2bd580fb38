"""Cascade attention in plain torch: the CPU production path and the reference the Triton kernels are held to.

Each segment is attended ONCE for all the branches that read it: their query rows are stacked into one matrix
and multiplied against the segment's keys, so a prefix shared by 64 branches costs one matrix-matrix product
instead of 64 matrix-vector products over 64 copies of the same KV. Partial results are then merged per branch
through their log-sum-exp, which is exact because softmax over a union of disjoint key sets is the lse-weighted
mix of the softmaxes over the parts.

Short segments that the same branches read (the blocks of one path, split where other sequences left the tree)
are joined into one, their KV concatenated: softmax over the concatenation is softmax over the union, so this is
exact, and one product over a joined run costs less than a product and a merge per block. Then segments with the
same number of readers and similar lengths (typically the per-branch suffixes) are attended together in one
batched product over zero-padded copies of their KV: hundreds of tiny products would otherwise cost more in
per-operation overhead than in arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from ttc.errors import ConfigError
from ttc.kernels.segments import Forest, ForestLayout

# Scores per block ([segments x H_kv, rows, keys] fp32) stay around 8 MiB: large enough for efficient matrix
# products, small enough to stay mostly in cache across the max / exp / sum passes, and a 16k-token prefix
# read by 256 branches never materialises gigabytes of scores. (Measured: 2-8 MiB blocks are fastest.)
_SCORE_BLOCK_ELEMENTS = 1 << 21
_MIN_KEY_BLOCK = 64
# Segments are stacked at most this many bytes of K (and of V) at a time: the copy stays in cache for the
# products that read it, and large fresh allocations (page faults on every call) are avoided.
_STACK_BYTES = 2 << 20
# Segments read by the same rows are joined while the joined run stays this short: below it, a segment's fixed
# cost (about twenty small operations and a merge) outweighs copying its KV; a longer segment stays a view.
_JOIN_TOKENS = 512


def merge_state(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results over disjoint key sets into the result over their union.

    ``o_*`` are ``[..., D]`` outputs normalised over their own keys and ``lse_*`` the matching ``[...]``
    log-sum-exp of the scaled scores. A part with ``lse = -inf`` (no keys) contributes nothing; if both parts are
    empty the result is zeros with ``lse = -inf`` rather than NaN. Statistics are computed in fp32; the output
    keeps the promoted dtype of ``o_a`` and ``o_b``.
    """
    given = {"o_a": o_a, "lse_a": lse_a, "o_b": o_b, "lse_b": lse_b}
    wrong = next((name for name, value in given.items() if not isinstance(value, torch.Tensor)), None)
    if wrong is not None:
        raise ConfigError(f"merge_state needs four tensors; {wrong} is a {type(given[wrong]).__name__}")
    if o_a.shape != o_b.shape or lse_a.shape != lse_b.shape or o_a.shape[:-1] != lse_a.shape:
        raise ConfigError(
            f"merge_state needs o_a, o_b of one shape [..., D] and lse_a, lse_b of shape [...]; got "
            f"{tuple(o_a.shape)}, {tuple(lse_a.shape)}, {tuple(o_b.shape)}, {tuple(lse_b.shape)}"
        )
    out_dtype = torch.promote_types(o_a.dtype, o_b.dtype)
    lse_a, lse_b = lse_a.float(), lse_b.float()
    top = _finite_or_zero(torch.maximum(lse_a, lse_b))
    w_a = torch.exp(lse_a - top)
    w_b = torch.exp(lse_b - top)
    total = w_a + w_b
    inv = _safe_reciprocal(total)
    merged = o_a.float() * (w_a * inv).unsqueeze(-1) + o_b.float() * (w_b * inv).unsqueeze(-1)
    return merged.to(out_dtype), top + torch.log(total)


def forest_attention_torch(q: torch.Tensor, forest: Forest) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every branch over its segments: ``([B, T, H_q, D]`` in q's dtype, ``[B, T, H_q]`` fp32)."""
    groups, branches = _groups(forest, q.device)
    scaled = q.float() * forest.scale
    outs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    for group in groups:
        out, lse = _group_attention(scaled.index_select(0, group.flat_rows), group, forest)
        outs.append(out)
        lses.append(lse)
    return _scatter_merge(torch.cat(outs), torch.cat(lses), branches, q)


@dataclass(frozen=True)
class _Unit:
    """Segments read by the same rows, attended as one: their KV concatenated in ``members`` order.

    Only the last member may be causal, so that the queries' own tokens end the concatenation, where a causal
    segment's mask expects them.
    """

    members: tuple[int, ...]  # segment indices
    rows: torch.Tensor  # the rows every member is read by
    length: int
    causal: bool


@dataclass(frozen=True)
class _Group:
    """Units attended in one batched product: same reader count, lengths padded to ``padded``.

    Everything here follows from the forest's layout and head shape, not from its KV, so it is built once per
    layout (and kept in ``ForestLayout.cache``) however many layers attend that forest.
    """

    members: tuple[_Unit, ...]
    lengths: tuple[int, ...]
    flat_rows: torch.Tensor  # [n*m] branch indices, segment-major
    shape: tuple[int, int]  # (n segments, m readers each)
    padded: int
    limits: torch.Tensor | None  # first hidden key per score row, [n*H_kv, rows, 1]; None when all are visible
    first_hidden: int  # the smallest of ``limits`` (``padded`` when None): key blocks before it need no mask


def _groups(forest: Forest, device: torch.device) -> tuple[list[_Group], torch.Tensor]:
    """The layout's groups for this head shape and device, and every group's branch indices in order."""
    key = ("torch", forest.heads_kv, forest.group, forest.head_dim, device)
    if key not in forest.layout.cache:
        groups = _build_groups(forest, device)
        forest.layout.cache[key] = groups, torch.cat([g.flat_rows for g in groups])
    return cast(tuple[list[_Group], torch.Tensor], forest.layout.cache[key])


def _build_groups(forest: Forest, device: torch.device) -> list[_Group]:
    """Bucket the units by (readers, causal, padded length); padding wastes at most 1/8.

    Buckets are cut into stacks of at most ``_STACK_BYTES``; a lone segment is never copied.
    """
    buckets: dict[tuple[int, bool, int], list[_Unit]] = {}
    for unit in _units(forest.layout):
        buckets.setdefault((unit.rows.numel(), unit.causal, _padded_length(unit.length)), []).append(unit)
    groups = []
    row_bytes = forest.heads_kv * forest.head_dim * 4
    for (readers, causal, size_class), members in buckets.items():
        per_stack = max(1, _STACK_BYTES // (size_class * row_bytes))
        for first in range(0, len(members), per_stack):
            chosen = tuple(members[first : first + per_stack])
            lengths = tuple(unit.length for unit in chosen)
            padded = max(lengths)
            limits = _visible_limits(lengths, padded, causal, readers, forest, device)
            groups.append(
                _Group(
                    members=chosen,
                    lengths=lengths,
                    flat_rows=torch.cat([unit.rows for unit in chosen]).to(device),
                    shape=(len(chosen), readers),
                    padded=padded,
                    limits=limits,
                    first_hidden=padded if limits is None else int(limits.min()),
                )
            )
    return groups


def _units(layout: ForestLayout) -> list[_Unit]:
    """The non-empty segments, those read by the same rows joined in order while the join stays within
    ``_JOIN_TOKENS``; a causal segment comes after its readers' other segments and closes its unit."""
    by_rows: dict[tuple[int, ...], list[int]] = {}
    for number, (length, rows) in enumerate(zip(layout.lengths, layout.rows, strict=True)):
        if length > 0 and rows.numel() > 0:
            by_rows.setdefault(tuple(sorted(rows.tolist())), []).append(number)
    units: list[_Unit] = []
    for readers, numbers in by_rows.items():
        rows = torch.tensor(readers, dtype=torch.int64)
        ordered = sorted(numbers, key=lambda number: layout.causal[number])  # stable: causal ones last
        run: list[int] = []
        total = 0  # positions in ``run``
        for number in ordered:
            if run and (layout.causal[run[-1]] or total + layout.lengths[number] > _JOIN_TOKENS):
                units.append(_unit(layout, run, rows, total))
                run, total = [], 0
            run.append(number)
            total += layout.lengths[number]
        units.append(_unit(layout, run, rows, total))
    return units


def _unit(layout: ForestLayout, members: Sequence[int], rows: torch.Tensor, length: int) -> _Unit:
    return _Unit(tuple(members), rows, length, layout.causal[members[-1]])


def _padded_length(length: int) -> int:
    """The size class of a length: its top four bits rounded up, so classes are at most 1/8 wider."""
    step = 1 << max(0, length.bit_length() - 4)
    return -(-length // step) * step


def _stack_kv(group: _Group, forest: Forest) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as ``[n*H_kv, P, D]``; a lone segment is a view (never copied), a group one padded copy."""
    keys = [_joined(forest.keys, unit) for unit in group.members]
    values = [_joined(forest.values, unit) for unit in group.members]
    if len(keys) == 1:  # [L, H, D] -> [H, L, D] strided views, which bmm reads without copying
        return keys[0].float().transpose(0, 1), values[0].float().transpose(0, 1)
    if all(length == group.padded for length in group.lengths):
        k_all = torch.stack([k.transpose(0, 1) for k in keys])
        v_all = torch.stack([v.transpose(0, 1) for v in values])
    else:
        first = keys[0]
        shape = (len(keys), first.shape[1], group.padded, first.shape[2])
        k_all, v_all = first.new_zeros(shape), first.new_zeros(shape)  # padding is masked out, but never NaN
        for slot, (k, v, length) in enumerate(zip(keys, values, group.lengths, strict=True)):
            k_all[slot, :, :length] = k.transpose(0, 1)
            v_all[slot, :, :length] = v.transpose(0, 1)
    n, heads_kv, padded, dim = k_all.shape
    return k_all.float().view(n * heads_kv, padded, dim), v_all.float().view(n * heads_kv, padded, dim)


def _joined(tensors: Sequence[torch.Tensor], unit: _Unit) -> torch.Tensor:
    """A unit's ``[L, H_kv, D]`` keys or values: the lone member's own tensor, else its members' concatenated."""
    if len(unit.members) == 1:
        return tensors[unit.members[0]]
    return torch.cat([tensors[i] for i in unit.members])


def _group_attention(
    q_rows: torch.Tensor, group: _Group, forest: Forest
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend each segment of a group for its ``m`` readers (``q_rows``: their fp32 queries, already scaled):
    ``[n*m, T, H_q, D]`` fp32 and ``[n*m, T, H_q]``.

    Query heads are folded as ``[n*H_kv, m*T*group, D]``, so each KV head multiplies the stacked queries of its
    whole GQA group at once; the KV is never repeated per query head.
    """
    n, m = group.shape
    tokens, heads_kv, gsize, dim = forest.tokens, forest.heads_kv, forest.group, forest.head_dim
    queries = (
        q_rows.view(n, m, tokens, heads_kv, gsize, dim)
        .permute(0, 3, 1, 2, 4, 5)
        .reshape(n * heads_kv, m * tokens * gsize, dim)
    )
    keys, values = _stack_kv(group, forest)
    block = max(_MIN_KEY_BLOCK, _SCORE_BLOCK_ELEMENTS // (queries.shape[0] * queries.shape[1]))
    out, lse = _block_attention(queries, keys, values, 0, min(group.padded, block), group)
    for start in range(block, group.padded, block):
        stop = min(group.padded, start + block)
        part_out, part_lse = _block_attention(queries, keys, values, start, stop, group)
        out, lse = merge_state(out, lse, part_out, part_lse)
    out = out.view(n, heads_kv, m, tokens, gsize, dim).permute(0, 2, 3, 1, 4, 5)
    lse = lse.view(n, heads_kv, m, tokens, gsize).permute(0, 2, 3, 1, 4)
    return out.reshape(n * m, tokens, -1, dim), lse.reshape(n * m, tokens, -1)


def _visible_limits(lengths: tuple[int, ...], padded: int, causal: bool, readers: int, forest: Forest,
                    device: torch.device) -> torch.Tensor | None:
    """Per score row, the first hidden key position (``[n*H_kv, rows, 1]``), or None if every key is visible.

    Padding hides positions ``>= L``; a causal segment also hides ``>= L - T + t + 1`` from query token ``t``.
    """
    if not causal and all(length == padded for length in lengths):
        return None
    tokens, gsize = forest.tokens, forest.group
    token = torch.arange(readers * tokens * gsize, device=device) // gsize % tokens
    hidden_tail = (tokens - 1 - token) if causal else torch.zeros_like(token)
    limits = torch.tensor(lengths, dtype=torch.int64, device=device).view(-1, 1) - hidden_tail.view(1, -1)
    return limits.repeat_interleave(forest.heads_kv, dim=0).unsqueeze(-1)


def _block_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    stop: int,
    group: _Group,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of the stacked queries over key positions ``[start, stop)`` of ``group``'s keys."""
    scores = torch.bmm(queries, keys[:, start:stop].transpose(1, 2))  # [batch, rows, keys]
    limits = group.limits if group.first_hidden < stop else None
    if limits is not None:
        lo = max(start, group.first_hidden)
        positions = torch.arange(lo, stop, device=scores.device)
        scores[:, :, lo - start :].masked_fill_(positions >= limits, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True)
    if limits is not None:
        top = _finite_or_zero(top)  # a row may see no key of this block
    probs = scores.sub_(top).exp_()
    total = probs.sum(dim=-1)
    out = torch.bmm(probs, values[:, start:stop])
    return out.mul_(_safe_reciprocal(total).unsqueeze(-1)), top.squeeze(-1) + torch.log(total)


def _scatter_merge(
    outs: torch.Tensor, lses: torch.Tensor, branches: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge every (unit, branch) partial into its branch at once; a branch may own many partials."""
    batch = q.shape[0]
    if branches.numel() == batch:  # every branch owns exactly one partial (each reads at least one): a reorder
        out = outs.new_empty((batch, *outs.shape[1:])).index_copy_(0, branches, outs)
        return out.to(q.dtype), lses.new_empty((batch, *lses.shape[1:])).index_copy_(0, branches, lses)
    flat_lse = lses.reshape(lses.shape[0], -1)
    top = torch.full((batch, flat_lse.shape[1]), float("-inf"), dtype=torch.float32, device=q.device)
    top.scatter_reduce_(0, branches.unsqueeze(1).expand_as(flat_lse), flat_lse, "amax")
    top = _finite_or_zero(top.view(q.shape[:3]))
    weights = torch.exp(lses - top.index_select(0, branches))
    total = torch.zeros_like(top).index_add_(0, branches, weights)
    out = torch.zeros((batch, *outs.shape[1:]), dtype=torch.float32, device=q.device)
    out.index_add_(0, branches, outs.mul_(weights.unsqueeze(-1)))
    out.mul_(_safe_reciprocal(total).unsqueeze(-1))
    return out.to(q.dtype), top + torch.log(total)


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """Replace -inf maxima (rows with no keys) by 0 so that ``x - max`` never computes ``-inf - -inf``."""
    return torch.where(torch.isneginf(x), torch.zeros_like(x), x)


def _safe_reciprocal(total: torch.Tensor) -> torch.Tensor:
    """``1 / total`` for a softmax denominator taken after subtracting the maximum, and 1 where it is 0.

    Such a total is either 0 (no keys: every term is ``exp(-inf)``, and so is the numerator) or at least 1 (the
    maximum's own term is ``exp(0)``), so clamping at 1 changes nothing else and never divides by zero.
    """
    return total.clamp_min(1.0).reciprocal_()
