"""Cascade attention over a search forest in Triton: every segment's KV is read once for all its branches.

Two launches, whatever the shape of the forest:

1. ``_segment_partials_kernel`` runs one program per (work item, KV head). A work item is a block of one
   segment's stacked query rows (branch x token x group head) against one split of that segment's keys; it
   streams the keys with an online softmax, flash-decode style, and writes a partial (output, lse) per row.
   Splitting long segments keeps the GPU busy when few branches share them; many branches on one segment give
   it parallelism through their query blocks instead.
2. ``_merge_partials_kernel`` folds each branch's partials (all its segments, all their splits) into its final
   output through their log-sum-exp.

Segments are separate tensors, so the first kernel addresses them through element offsets from one base tensor
(a table built on the host); this keeps one launch for hundreds of segments instead of one launch per segment,
which would cost more than the attention itself at decode time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from ttc.errors import ConfigError
from ttc.kernels.segments import TRITON_MAX_HEAD_DIM, Forest
from ttc.types import is_int

_LOG2E = 1.4426950408889634
_MIN_SPLIT = 256  # keys per split below which splitting costs more (partials) than it gains (parallelism)
_WORK_COLS = 10  # k_off, v_off, length, causal, rows_off, n_rows, row_start, key_start, key_end, part_base


@triton.jit  # type: ignore[untyped-decorator]
def _segment_partials_kernel(  # type: ignore[no-untyped-def]
    Q,
    KV,
    WORK,
    ROWS,
    PART_O,
    PART_LSE,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kl,
    stride_kh,
    tokens,
    head_dim,
    heads_q,
    qk_scale,
    GROUP: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
    WORK_COLS: tl.constexpr,
):
    item = WORK + tl.program_id(0).to(tl.int64) * WORK_COLS
    kv_head = tl.program_id(1)
    k_off = tl.multiple_of(tl.load(item + 0), ALIGN)
    v_off = tl.multiple_of(tl.load(item + 1), ALIGN)
    length = tl.load(item + 2)
    causal = tl.load(item + 3)
    rows_off = tl.load(item + 4)
    n_rows = tl.load(item + 5)
    row_start = tl.load(item + 6)
    key_start = tl.load(item + 7)
    key_end = tl.load(item + 8)
    part_base = tl.load(item + 9)

    # Rows of this block: segment-local row r = (query i * T + token t) * GROUP + g.
    r = row_start + tl.arange(0, BLOCK_M)
    r_mask = r < n_rows
    g = r % GROUP
    token = (r // GROUP) % tokens
    local = r // GROUP // tokens
    branch = tl.load(ROWS + rows_off + local, mask=r_mask, other=0).to(tl.int64)  # branch * stride_qb: 64 bits
    head = kv_head * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    q = tl.load(
        Q + branch[:, None] * stride_qb + token[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=r_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)

    # Token t of a causal segment sees positions < length - T + t + 1; others see the whole segment.
    limit = tl.where(causal != 0, length - tokens + token + 1, length)
    hi = tl.minimum(key_end, tl.max(tl.where(r_mask, limit, 0), axis=0))

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    kv_row = kv_head * stride_kh + d[None, :]
    for start in range(key_start, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = n < hi
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(KV + k_off + n[:, None] * stride_kl + kv_row, mask=kv_mask, other=0.0)
        if DOT_FP32:  # noqa: SIM108 (a constexpr branch, resolved when the kernel is compiled)
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        visible = (n[None, :] < limit[:, None]) & n_mask[None, :]
        s = tl.where(visible, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(KV + v_off + n[:, None] * stride_kl + kv_row, mask=kv_mask, other=0.0)
        if DOT_FP32:  # noqa: SIM108
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    filled = l_i > 0
    l_safe = tl.where(filled, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(filled, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    part = (part_base + local * tokens + token) * heads_q + head
    tl.store(PART_O + part[:, None] * head_dim + d[None, :], out, mask=r_mask[:, None] & d_mask[None, :])
    tl.store(PART_LSE + part, lse, mask=r_mask)


@triton.jit  # type: ignore[untyped-decorator]
def _merge_partials_kernel(  # type: ignore[no-untyped-def]
    PART_O,
    PART_LSE,
    OFFSETS,
    ENTRIES,
    OUT,
    LSE,
    tokens,
    heads_q,
    head_dim,
    stride_ob,
    stride_ot,
    stride_oh,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * stride_ob in 32 bits wraps past 2**31 output elements
    b = row // tokens
    t = row % tokens
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = head < heads_q
    d = tl.arange(0, BLOCK_D)
    mask = h_mask[:, None] & (d < head_dim)[None, :]
    first = tl.load(OFFSETS + b)
    last = tl.load(OFFSETS + b + 1)

    m_run = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for e in range(first, last):
        part = (tl.load(ENTRIES + e) + t) * heads_q + head
        lse = tl.load(PART_LSE + part, mask=h_mask, other=float("-inf"))
        o = tl.load(PART_O + part[:, None] * head_dim + d[None, :], mask=mask, other=0.0)
        m_new = tl.maximum(m_run, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        scale_old = tl.exp(m_run - m_safe)
        weight = tl.exp(lse - m_safe)
        acc = acc * scale_old[:, None] + o * weight[:, None]
        total = total * scale_old + weight
        m_run = m_new

    filled = total > 0
    total_safe = tl.where(filled, total, 1.0)
    out = acc / total_safe[:, None]
    lse_out = tl.where(filled, m_run + tl.log(total_safe), float("-inf"))
    out_ptrs = OUT + b * stride_ob + t * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=mask)
    tl.store(LSE + row * heads_q + head, lse_out, mask=h_mask)


@dataclass(frozen=True)
class _Launch:
    """Host-built tables for one call: work items, flat query rows, and each branch's partial slots."""

    base: torch.Tensor
    keepalive: tuple[torch.Tensor, ...]  # contiguous copies the work table points into
    work: torch.Tensor
    rows: torch.Tensor
    offsets: torch.Tensor
    entries: torch.Tensor
    n_items: int
    n_parts: int
    stride_l: int
    stride_h: int
    align: int
    block_m: int


def interpreting() -> bool:
    """True when these kernels were defined under ``TRITON_INTERPRET=1`` and so run on the host."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_segment_partials_kernel, InterpretedFunction)


def forest_attention_triton(
    q: torch.Tensor, forest: Forest, *, kv_split: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cascade attention of a checked forest: ``([B, T, H_q, D]`` in q's dtype, ``[B, T, H_q]`` fp32).

    ``kv_split`` caps the keys one program reads (rounded up to the key block); by default it is chosen so
    the launch fills the device.
    """
    _check_launchable(q, forest)
    if kv_split is not None and (not is_int(kv_split) or kv_split <= 0):
        raise ConfigError(f"kv_split must be a positive int number of keys, got {kv_split!r}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    interpret = interpreting()
    dot_fp32 = interpret or q.dtype == torch.float32
    # Register budgets measured for sm_90 at head dim 128: fp16/bf16 tiles of 64x64 fit without spilling;
    # exact fp32 products need far more registers, so fp32 keeps 16 query rows per program.
    max_block_m = 16 if dot_fp32 and not interpret else 64
    block_n = 32 if interpret else 64
    block_d = max(16, triton.next_power_of_2(forest.head_dim))
    launch = _plan(q, forest, kv_split, block_n, max_block_m)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    part_o = torch.empty((launch.n_parts, forest.heads_q, forest.head_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((launch.n_parts, forest.heads_q), dtype=torch.float32, device=q.device)
    if launch.n_items > 0:
        _segment_partials_kernel[(launch.n_items, forest.heads_kv)](
            q,
            launch.base,
            launch.work,
            launch.rows,
            part_o,
            part_lse,
            q.stride(0),
            q.stride(1),
            q.stride(2),
            launch.stride_l,
            launch.stride_h,
            forest.tokens,
            forest.head_dim,
            forest.heads_q,
            forest.scale * _LOG2E,
            GROUP=forest.group,
            ALIGN=launch.align,
            BLOCK_M=launch.block_m,
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            DOT_FP32=dot_fp32,
            WORK_COLS=_WORK_COLS,
            num_warps=4,
            num_stages=2,
        )
    block_h = min(16, triton.next_power_of_2(forest.heads_q))
    _merge_partials_kernel[(forest.batch * forest.tokens, triton.cdiv(forest.heads_q, block_h))](
        part_o,
        part_lse,
        launch.offsets,
        launch.entries,
        out,
        lse,
        forest.tokens,
        forest.heads_q,
        forest.head_dim,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        BLOCK_H=block_h,
        BLOCK_D=block_d,
    )
    return out, lse


def _check_launchable(q: torch.Tensor, forest: Forest) -> None:
    interpret = interpreting()
    if q.device.type == "cpu" and not interpret:
        raise ConfigError(
            "impl='triton' got CPU tensors but the kernels were compiled for a GPU: set TRITON_INTERPRET=1 in "
            "the environment before ttc.kernels.triton_forest (or triton) is imported, or use impl='torch'"
        )
    if q.device.type != "cpu" and interpret:
        raise ConfigError(
            f"TRITON_INTERPRET=1 runs the kernels on the host, but q is on {q.device}; pass CPU tensors or "
            "start the process without TRITON_INTERPRET"
        )
    if q.device.type not in ("cpu", "cuda"):
        raise ConfigError(f"impl='triton' runs on CUDA devices only, got {q.device}; use impl='torch'")
    if forest.head_dim > TRITON_MAX_HEAD_DIM:
        raise ConfigError(
            f"impl='triton' supports head dim up to {TRITON_MAX_HEAD_DIM}, got {forest.head_dim}; use impl='torch'"
        )


def _kv_tensors(forest: Forest) -> tuple[list[torch.Tensor], list[torch.Tensor], int, int]:
    """K and V of every segment, made to share one (position, head) stride with unit last stride.

    Views into one KV pool already share strides and are used in place; anything else is copied contiguous.
    Empty segments are never read, so their layout does not count.
    """
    keys, values = list(forest.keys), list(forest.values)
    live = [t for k, v, n in zip(keys, values, forest.layout.lengths, strict=True) if n > 0 for t in (k, v)]
    strides = {_layout(t) for t in live}
    if len(strides) == 1:
        stride_l, stride_h, stride_d = strides.pop()
        if stride_d == 1:
            return keys, values, stride_l, stride_h
    keys = [t.contiguous() for t in keys]
    values = [t.contiguous() for t in values]
    heads, dim = forest.heads_kv, forest.head_dim
    return keys, values, heads * dim, dim


def _layout(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides that matter: a size-1 dimension's stride is never used, so it is normalised to contiguous."""
    length, heads, dim = t.shape
    stride_l, stride_h, stride_d = t.stride()
    return (
        stride_l if length > 1 else heads * dim,
        stride_h if heads > 1 else dim,
        stride_d if dim > 1 else 1,
    )


def _element_offsets(base: torch.Tensor, tensors: list[torch.Tensor]) -> tuple[np.ndarray, int]:
    """Offsets (in elements) of each non-empty tensor's first element from ``base``'s, and their alignment.

    The alignment (in elements) lets the kernel promise the compiler 16-byte aligned rows, so it can issue
    vector loads; empty tensors get offset 0 because no program reads them.
    """
    size = base.element_size()
    byte_offsets = np.array(
        [t.data_ptr() - base.data_ptr() if t.numel() else 0 for t in tensors], dtype=np.int64
    )
    if np.any(byte_offsets % size):
        raise ValueError("a KV tensor starts at an address that is not a multiple of its element size")
    aligned = all(t.data_ptr() % 16 == 0 for t in [base, *tensors] if t.numel())
    return byte_offsets // size, (16 // size if aligned else 1)


def _plan(
    q: torch.Tensor, forest: Forest, kv_split: int | None, block_n: int, max_block_m: int
) -> _Launch:
    """Build the work table and the per-branch partial lists with whole-forest array operations."""
    keys, values, stride_l, stride_h = _kv_tensors(forest)
    base = next(k for k in keys if k.numel())  # the forest check guarantees a segment with keys
    k_off, align_k = _element_offsets(base, keys)
    v_off, align_v = _element_offsets(base, values)
    align = min(align_k, align_v)
    tokens, group = forest.tokens, forest.group

    m = np.array([r.numel() for r in forest.rows], dtype=np.int64)
    length = np.array(forest.layout.lengths, dtype=np.int64)
    causal = np.array(forest.layout.causal, dtype=np.int64)
    live = (m > 0) & (length > 0)
    n_rows = m * tokens * group
    block_m = min(max_block_m, max(16, triton.next_power_of_2(int(n_rows[live].max(initial=1)))))
    q_blocks = np.where(live, -(-n_rows // block_m), 0)
    split = _split_length(q, forest, q_blocks, length, kv_split, block_n)
    splits = np.where(live, -(-length // split), 0)
    rows_off = np.concatenate([[0], np.cumsum(m)[:-1]])
    parts_per_seg = splits * m * tokens
    part_base = np.concatenate([[0], np.cumsum(parts_per_seg)[:-1]])

    items = q_blocks * splits
    seg = np.repeat(np.arange(len(m)), items)
    local = np.arange(int(items.sum())) - np.repeat(np.cumsum(items) - items, items)
    q_block, which = local // splits[seg], local % splits[seg]
    key_start = which * split
    work = np.stack(
        [
            k_off[seg],
            v_off[seg],
            length[seg],
            causal[seg],
            rows_off[seg],
            n_rows[seg],
            q_block * block_m,
            key_start,
            np.minimum(key_start + split, length[seg]),
            part_base[seg] + which * m[seg] * tokens,
        ],
        axis=1,
    ).astype(np.int64)

    flat_rows = torch.cat(forest.rows).numpy()
    entries, offsets = _branch_entries(flat_rows, m, splits, part_base, rows_off, tokens, forest.batch)
    tables = torch.from_numpy(np.concatenate([work.reshape(-1), flat_rows, offsets, entries]))
    tables = tables.to(q.device)
    n_work, n_flat = work.size, flat_rows.size
    return _Launch(
        base=base,
        keepalive=(*keys, *values),
        work=tables[:n_work],
        rows=tables[n_work : n_work + n_flat],
        offsets=tables[n_work + n_flat : n_work + n_flat + forest.batch + 1],
        entries=tables[n_work + n_flat + forest.batch + 1 :],
        n_items=int(items.sum()),
        n_parts=max(1, int(parts_per_seg.sum())),
        stride_l=stride_l,
        stride_h=stride_h,
        align=align,
        block_m=block_m,
    )


def _branch_entries(
    flat_rows: np.ndarray,
    m: np.ndarray,
    splits: np.ndarray,
    part_base: np.ndarray,
    rows_off: np.ndarray,
    tokens: int,
    batch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each branch, the partial slots (token 0) it merges: CSR ``entries`` indexed by ``offsets``."""
    seg_of_row = np.repeat(np.arange(len(m)), m)
    reps = splits[seg_of_row]
    row_of_entry = np.repeat(np.arange(flat_rows.size), reps)
    which = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    seg = seg_of_row[row_of_entry]
    local = row_of_entry - rows_off[seg]
    slots = part_base[seg] + which * m[seg] * tokens + local * tokens
    branch = flat_rows[row_of_entry]
    order = np.argsort(branch, kind="stable")
    counts = np.bincount(branch, minlength=batch)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return slots[order].astype(np.int64), offsets


def _split_length(
    q: torch.Tensor,
    forest: Forest,
    q_blocks: np.ndarray,
    length: np.ndarray,
    kv_split: int | None,
    block_n: int,
) -> int:
    """Keys per program: enough programs to fill the device, never so short that partials dominate."""
    longest = int(length.max(initial=1))
    if kv_split is not None:
        return max(block_n, math.ceil(kv_split / block_n) * block_n)
    if q.device.type != "cuda":
        return max(block_n, longest)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    tile_keys = int((q_blocks * length).sum()) * forest.heads_kv
    want = math.ceil(tile_keys / (2 * sms))
    split = max(_MIN_SPLIT, math.ceil(want / block_n) * block_n)
    return min(split, max(block_n, math.ceil(longest / block_n) * block_n))
