"""The KV cache as a radix tree of token blocks with reference counts.

A block is a run of consecutive tokens with their keys and values for every layer; a block's parent holds the
tokens that precede it, so a root-to-block path is one token sequence and siblings are alternative continuations.
Forking a sequence into branches adds empty child blocks: the branches share every block above them, and
attention reads a shared block once for all of them (``ttc.kernels.forest_attention``).

Reference counts say how many holders (decoding sequences, finished sequences a strategy may still extend) have
a block on their path. A block with holders is *live*; a block without is *cached*: still findable by a later
request with the same prefix (radix lookup over token ids), evicted least-recently-used first once cached tokens
exceed the cache's cap. Live and peak counts therefore measure what search actually needs, not what the cache
happens to remember.

Blocks are split where a new prefix diverges inside them. A block that a sequence is still appending to
(``open``) is split even at its end, so a new request never grows children under tokens that are still moving.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ScoredPosition:
    """The cached next-token distribution that predicted one token: its own logprob and the top-k."""

    top_k: int
    top: tuple[tuple[int, float], ...]
    logprob: float


class KVBlock:
    """A run of tokens and their KV ``storage`` [layers, 2, capacity, H_kv, D]; see the module docstring."""

    __slots__ = ("children", "id", "last_used", "open", "parent", "refs", "scores", "start", "storage", "tokens")

    def __init__(self, block_id: int, parent: KVBlock | None, start: int, storage: Tensor | None) -> None:
        self.id = block_id
        self.parent = parent
        self.start = start
        self.storage = storage
        self.tokens: list[int] = []
        self.children: dict[int, list[KVBlock]] = {}
        self.refs = 0
        self.last_used = 0
        self.open = False
        self.scores: dict[int, ScoredPosition] = {}

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def end(self) -> int:
        """Absolute position one past this block's last token."""
        return self.start + len(self.tokens)

    @property
    def capacity(self) -> int:
        return 0 if self.storage is None else int(self.storage.shape[2])

    def keys(self, layer: int, length: int | None = None) -> Tensor:
        assert self.storage is not None
        return self.storage[layer, 0, : self.length if length is None else length]

    def values(self, layer: int, length: int | None = None) -> Tensor:
        assert self.storage is not None
        return self.storage[layer, 1, : self.length if length is None else length]

    def path(self) -> list[KVBlock]:
        """Blocks from the first below the root down to this one."""
        chain: list[KVBlock] = []
        block: KVBlock | None = self
        while block is not None and block.parent is not None:
            chain.append(block)
            block = block.parent
        chain.reverse()
        return chain

    def __repr__(self) -> str:
        return f"KVBlock(id={self.id}, start={self.start}, length={self.length}, refs={self.refs})"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    size = min(len(a), len(b))
    if a[:size] == b[:size]:
        return size
    n = 0
    while n < size and a[n] == b[n]:
        n += 1
    return n


class KVTree:
    """All KV blocks of one model, with exact live/cached/peak token counts.

    ``share`` false turns the tree into a plain per-sequence cache: lookups find nothing and unreferenced blocks
    are freed at once. That is the baseline the prefix-sharing benchmark compares against.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
        cache_tokens: int,
        share: bool = True,
    ) -> None:
        self.shape = (num_layers, 2, kv_heads, head_dim)
        self.device = device
        self.dtype = dtype
        self.cache_tokens = cache_tokens if share else 0
        self.share = share
        self.bytes_per_token = 2 * num_layers * kv_heads * head_dim * dtype.itemsize
        self._ids = itertools.count()
        self._clock = itertools.count(1)
        self.root = KVBlock(next(self._ids), None, 0, None)
        self.blocks: dict[int, KVBlock] = {}
        self.live_tokens = 0
        self.cached_tokens = 0
        self.peak_live_tokens = 0
        self._trim_deferred = 0

    # ----------------------------------------------------------------- storage
    def allocate(self, capacity: int) -> Tensor:
        layers, two, heads, dim = self.shape
        return torch.empty(layers, two, max(capacity, 1), heads, dim, device=self.device, dtype=self.dtype)

    def reserve(self, block: KVBlock, extra: int) -> None:
        """Make room for ``extra`` more tokens, doubling so appends stay amortised O(1)."""
        needed = block.length + extra
        if needed <= block.capacity:
            return
        storage = self.allocate(max(needed, 2 * block.capacity, 16))
        if block.storage is not None and block.length:
            storage[:, :, : block.length].copy_(block.storage[:, :, : block.length])
        block.storage = storage

    @property
    def reserved_bytes(self) -> int:
        """Bytes of KV storage allocated (capacity, not content): each buffer once, however many blocks view it."""
        buffers = {b.storage.untyped_storage().data_ptr(): b.storage.untyped_storage().nbytes()
                   for b in self.blocks.values() if b.storage is not None}
        return sum(buffers.values())

    def _oversized(self, storage: Tensor, tokens: int) -> bool:
        """Whether ``storage`` keeps alive more KV memory than ``tokens`` tokens need: a doubled buffer, or a view
        into a larger one (a batch's scratch, a buffer another block was cut from). Cached as it is, the cache's
        token cap would not bound its memory."""
        return storage.untyped_storage().nbytes() > tokens * self.bytes_per_token

    # ------------------------------------------------------------------ lookup
    def match(self, tokens: Sequence[int]) -> tuple[KVBlock, int]:
        """The deepest block on the longest cached prefix of ``tokens`` and that prefix's length.

        The prefix may end inside the returned block; nothing is modified. Branches decoding side by side leave
        several children under one first token, so the child sharing most tokens at one level is not always on
        the longest path (a sibling it outran may hold a deeper child): every fully matched child is followed.
        Where two paths match equally far, one that ends at a block's end is preferred (no split needed).
        """
        if not self.share:
            return self.root, 0
        best, best_len, best_whole = self.root, 0, True
        stack = [(self.root, 0)]
        while stack:
            block, matched = stack.pop()
            if matched > best_len or (matched == best_len and not best_whole):
                best, best_len, best_whole = block, matched, True
            if matched == len(tokens):
                continue
            for child in block.children.get(tokens[matched], ()):
                common = _common_prefix(child.tokens, tokens[matched:])
                if common == child.length:
                    stack.append((child, matched + common))
                elif matched + common > best_len:
                    best, best_len, best_whole = child, matched + common, False
        return best, best_len

    def lookup(self, tokens: Sequence[int]) -> tuple[KVBlock, int]:
        """Like ``match`` but splits blocks so the prefix ends exactly at the returned block's end.

        The returned block is never open, so new children may be added under it.
        """
        block, matched = self.match(tokens)
        if block is self.root:
            return block, 0
        offset = matched - block.start
        if offset < block.length or block.open:
            block = self.split(block, offset)
        self.touch(block)
        return block, matched

    def split(self, block: KVBlock, offset: int) -> KVBlock:
        """Cut ``block`` before its ``offset``-th token; return the new head, leaving ``block`` as the tail.

        The tail keeps its identity, so sequences decoding into it are unaffected. The head gets a copy of its
        part; a closed tail gets one too, so the old buffer goes now: a tail viewing it kept all of it alive (a
        1-token tail held 64 tokens' KV), up to twice what the cache's token cap allows. An open tail keeps
        viewing it (a sequence appends there) until :meth:`seal` trims it.
        """
        if not 0 < offset <= block.length:
            raise ValueError(f"split offset {offset} outside (0, {block.length}]")
        parent = block.parent
        assert parent is not None and block.storage is not None
        head = KVBlock(next(self._ids), parent, block.start, block.storage[:, :, :offset].clone())
        head.tokens = block.tokens[:offset]
        head.refs = block.refs
        head.last_used = block.last_used
        head.scores = {i: s for i, s in block.scores.items() if i < offset}
        siblings = parent.children[block.tokens[0]]
        siblings[siblings.index(block)] = head
        self.blocks[head.id] = head
        block.tokens = block.tokens[offset:]
        block.start += offset
        tail = block.storage[:, :, offset:]
        block.storage = tail if block.open else tail.clone()
        block.scores = {i - offset: s for i, s in block.scores.items() if i >= offset}
        block.parent = head
        if block.tokens:
            head.children[block.tokens[0]] = [block]
        return head

    # ------------------------------------------------------------------ growth
    def add(self, parent: KVBlock, tokens: Sequence[int], storage: Tensor) -> KVBlock:
        """A new cached (unreferenced) child of ``parent`` holding ``tokens`` and their KV ``storage``.

        Storage that views a larger buffer (a row of a batch's scratch, the tail of a recomputed prefix) is copied:
        kept as a view, the block would keep the whole buffer alive past the cache's token cap."""
        if parent.open:
            raise ValueError("cannot add children under a block that is still being appended to")
        if tokens and self._oversized(storage, len(tokens)):
            storage = storage[:, :, : len(tokens)].clone()
        block = KVBlock(next(self._ids), parent, parent.end, storage)
        block.tokens = list(tokens)
        self.blocks[block.id] = block
        if block.tokens:
            parent.children.setdefault(block.tokens[0], []).append(block)
        self.cached_tokens += block.length
        block.last_used = next(self._clock)
        return block

    def branch(self, parent: KVBlock, capacity: int) -> KVBlock:
        """A new empty open child of ``parent`` for a sequence to decode into."""
        block = self.add(parent, (), self.allocate(capacity))
        block.open = True
        return block

    def copy_path(self, block: KVBlock, capacity: int) -> KVBlock:
        """A private open block under the root holding a copy of ``block``'s whole path (sharing disabled)."""
        chain = block.path()
        length = chain[-1].end if chain else 0
        copy = self.branch(self.root, max(capacity, length))
        assert copy.storage is not None
        for part in chain:
            assert part.storage is not None
            copy.storage[:, :, part.start : part.end].copy_(part.storage[:, :, : part.length])
            copy.tokens.extend(part.tokens)
        if copy.tokens:
            self.root.children.setdefault(copy.tokens[0], []).append(copy)
        self.cached_tokens += copy.length
        return copy

    def append(self, block: KVBlock, token: int) -> int:
        """Add one token to an open block (its KV is written by the forward); return its offset in the block."""
        self.reserve(block, 1)
        block.tokens.append(token)
        if block.length == 1 and block.parent is not None:
            block.parent.children.setdefault(token, []).append(block)
        if block.refs:
            self.live_tokens += 1
            self.peak_live_tokens = max(self.peak_live_tokens, self.live_tokens)
        else:
            self.cached_tokens += 1
        return block.length - 1

    # --------------------------------------------------------------- references
    def touch(self, block: KVBlock) -> None:
        tick = next(self._clock)
        for b in block.path():
            b.last_used = tick

    def acquire(self, block: KVBlock) -> None:
        """One more holder of ``block`` and every block above it."""
        tick = next(self._clock)
        for b in block.path():
            if b.refs == 0:
                self.cached_tokens -= b.length
                self.live_tokens += b.length
            b.refs += 1
            b.last_used = tick
        self.peak_live_tokens = max(self.peak_live_tokens, self.live_tokens)

    def release(self, block: KVBlock) -> None:
        """Drop one holder; blocks nobody holds become cached, and the cache is trimmed to its cap.

        An over-release is refused before any count changes: the prompt blocks above a branch are held by its
        siblings too, and a partial decrement would leave them under-counted and open to eviction.
        """
        path = block.path()
        for b in path:
            if b.refs <= 0:
                raise ValueError(f"{b!r} released more often than acquired")
        for b in path:
            b.refs -= 1
            if b.refs == 0:
                self.live_tokens -= b.length
                self.cached_tokens += b.length
        self.trim()

    def seal(self, block: KVBlock) -> KVBlock:
        """Stop appending to ``block`` and return the block that now ends its sequence.

        An empty block is dropped and its parent returned: every holder of the empty block is already counted
        on the parent, so the holds carry over without touching any count.
        """
        block.open = False
        parent = block.parent
        if block.length and block.storage is not None and self._oversized(block.storage, block.length):
            # Growth doubled its storage and a step may stop after a few tokens (up to 128 tokens' KV for 5), or a
            # split left it viewing the buffer its head was cut from.
            block.storage = block.storage[:, :, : block.length].clone()
        if block.length or parent is None or any(block.children.values()):
            return block
        self._remove(block)
        return parent

    # ---------------------------------------------------------------- eviction
    @contextlib.contextmanager
    def trim_deferred(self) -> Iterator[None]:
        """Evict nothing until the block ends, then trim once.

        Starting a batch prefills every prompt before any is held; a branch of an early request that finishes
        at once releases its hold, and a trim then could evict a later request's prompt before its branches
        hold it.
        """
        self._trim_deferred += 1
        try:
            yield
        finally:
            self._trim_deferred -= 1
            self.trim()

    def trim(self) -> None:
        """Evict unreferenced leaf blocks, least recently used first, until cached tokens fit the cap."""
        if self._trim_deferred or self.cached_tokens <= self.cache_tokens:
            return
        heap = [(b.last_used, b.id) for b in self.blocks.values() if self._evictable(b)]
        heapq.heapify(heap)
        while heap and self.cached_tokens > self.cache_tokens:
            _, block_id = heapq.heappop(heap)
            block = self.blocks.get(block_id)
            if block is None or not self._evictable(block):
                continue
            parent = block.parent
            self._remove(block)
            if parent is not None and parent is not self.root and self._evictable(parent):
                heapq.heappush(heap, (parent.last_used, parent.id))

    @staticmethod
    def _evictable(block: KVBlock) -> bool:
        return block.refs == 0 and not block.open and not any(block.children.values())

    def _remove(self, block: KVBlock) -> None:
        parent = block.parent
        if parent is not None and block.tokens:
            siblings = parent.children.get(block.tokens[0], [])
            if block in siblings:
                siblings.remove(block)
            if not siblings:
                parent.children.pop(block.tokens[0], None)
        self.cached_tokens -= block.length
        block.storage = None
        block.parent = None
        self.blocks.pop(block.id, None)

    def clear_cache(self) -> None:
        """Evict every unreferenced block."""
        cap, self.cache_tokens = self.cache_tokens, 0
        self.trim()
        self.cache_tokens = cap

    def check(self) -> None:
        """Recount every block and compare with the running totals (tests call this after each operation)."""
        live = sum(b.length for b in self.blocks.values() if b.refs > 0)
        cached = sum(b.length for b in self.blocks.values() if b.refs == 0)
        if (live, cached) != (self.live_tokens, self.cached_tokens):
            raise AssertionError(f"counts drifted: recount {live=} {cached=}, running {self.live_tokens=} "
                                 f"{self.cached_tokens=}")
        for b in self.blocks.values():
            if b.parent is None:
                raise AssertionError(f"{b!r} is registered but detached")
            if b.parent is not self.root and b.refs > b.parent.refs:
                raise AssertionError(f"{b!r} has more holders than its parent {b.parent!r}")
            if b.start != b.parent.end:
                raise AssertionError(f"{b!r} starts at {b.start} but its parent ends at {b.parent.end}")


__all__ = ["KVBlock", "KVTree", "ScoredPosition"]
