"""A model-based test of the KV block tree: random request lifecycles, as the engine drives them, checked after
every operation against a brute-force model of what the tree must hold.

Requests prefill prompts (lookup, then add what the tree lacks, batched as ``Engine._prefill`` does, under
``trim_deferred``), fork branches (``branch`` + ``acquire``, or ``copy_path`` unshared), decode (``append`` and
write each token's KV, here its id), finish (``seal`` and keep a hold, dropping the oldest holds past a cap),
get cancelled (``release(seal(...))``), score (lookups, add, trim), or just look up prefixes of sequences still
being decoded, which splits open blocks. The vocabulary is tiny so prefixes collide and siblings share first
tokens; the cache cap is small so eviction runs often.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ttc.engine.kv_tree import KVBlock, KVTree, ScoredPosition

TOKENS = st.integers(1, 4)
# A prompt: (which known sequence to start from, how many of its last tokens to cut, tokens to add after the cut).
PROMPT = st.tuples(st.integers(0, 63), st.integers(0, 8), st.lists(TOKENS, max_size=4))
MAX_HELD = 3
KNOWN = 24


def _path_tokens(block: KVBlock) -> list[int]:
    return [t for b in block.path() for t in b.tokens]


def _kv(tree: KVTree, tokens: Sequence[int]) -> torch.Tensor:
    """Storage whose every entry equals its token id, as a forward's scratch rows would hold it."""
    storage = tree.allocate(len(tokens))
    storage.copy_(torch.tensor(tokens, dtype=storage.dtype)[None, None, :, None, None].expand_as(storage))
    return storage


class KVTreeMachine(RuleBasedStateMachine):
    """The tree under test plus what the engine would know: open branches, holds, recent sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = self._new_tree(True, 8)
        self.budget = 8
        self.active: list[tuple[KVBlock, list[int]]] = []  # open branches and the whole sequence each ends
        self.holds: list[tuple[tuple[int, ...], KVBlock]] = []  # finished sequences, oldest first
        self.known: dict[tuple[int, ...], None] = {}  # recent prompts and finished sequences, to query
        self.peak = 0

    @staticmethod
    def _new_tree(share: bool, cap: int) -> KVTree:
        return KVTree(num_layers=2, kv_heads=1, head_dim=2, device=torch.device("cpu"), dtype=torch.float32,
                      cache_tokens=cap, share=share)

    @initialize(share=st.sampled_from([True, True, True, False]), cap=st.sampled_from([0, 4, 10, 24, 1000]))
    def setup(self, share: bool, cap: int) -> None:
        self.tree = self._new_tree(share, cap)
        self.budget = cap  # the engine caps live tokens held by finished sequences with the cache's budget

    # ------------------------------------------------------------------ model helpers
    def _remember(self, tokens: Sequence[int]) -> None:
        key = tuple(tokens)
        self.known.pop(key, None)
        self.known[key] = None
        while len(self.known) > KNOWN:
            del self.known[next(iter(self.known))]

    def _prompt(self, spec: tuple[int, int, list[int]]) -> tuple[int, ...]:
        """A fresh prompt, or one extending or diverging from a sequence decoding, held or seen before."""
        index, cut, tail = spec
        pool = [tuple(seq) for _, seq in self.active] + [key for key, _ in self.holds] + list(self.known)
        base = pool[index % (len(pool) + 1)] if index % (len(pool) + 1) < len(pool) else ()
        prompt = (*base[: max(0, len(base) - cut)], *tail)
        return prompt or (1,)

    def _cached(self) -> tuple[dict[int, tuple[int, ...]], set[tuple[int, ...]]]:
        """Every registered block's root-to-block tokens, and every prefix of those (ending anywhere in a block)."""
        paths: dict[int, tuple[int, ...]] = {self.tree.root.id: ()}

        def path(block: KVBlock) -> tuple[int, ...]:
            if block.id not in paths:
                assert block.parent is not None
                paths[block.id] = path(block.parent) + tuple(block.tokens)
            return paths[block.id]

        prefixes: set[tuple[int, ...]] = set()
        for b in self.tree.blocks.values():
            whole = path(b)
            prefixes.update(whole[:n] for n in range(b.start + 1, b.end + 1))
        return paths, prefixes

    def _longest(self, tokens: Sequence[int], prefixes: set[tuple[int, ...]] | None = None) -> int:
        """The longest prefix of ``tokens`` on any root-to-block path, by brute force over all of them."""
        if not self.tree.share:
            return 0
        prefixes = self._cached()[1] if prefixes is None else prefixes
        n = 0
        while n < len(tokens) and tuple(tokens[: n + 1]) in prefixes:
            n += 1
        return n

    def _assert_values(self, block: KVBlock, upto: int) -> None:
        """The KV stored along ``block``'s path for positions [0, upto) equals the token ids."""
        for b in block.path():
            if b.start >= upto:
                break
            n = min(b.length, upto - b.start)
            assert b.storage is not None
            stored = b.storage[:, :, :n].transpose(0, 2).reshape(n, -1)
            assert stored.amin(1).tolist() == stored.amax(1).tolist() == [float(t) for t in b.tokens[:n]], b

    def _lookup(self, tokens: Sequence[int]) -> tuple[KVBlock, int]:
        expected = self._longest(tokens)
        block, matched = self.tree.lookup(tokens)
        assert matched == expected, (tokens, matched, expected)
        if matched == 0:
            assert block is self.tree.root
        else:
            assert block.id in self.tree.blocks and not block.open and block.end == matched
            assert _path_tokens(block) == list(tokens[:matched])
            self._assert_values(block, matched)
        return block, matched

    def _add_missing(self, tokens: Sequence[int], start: int) -> KVBlock:
        """What ``Engine._run`` does once the forward is done: look up again, keep the KV the tree lacks."""
        end, matched = self._lookup(tokens)
        assert matched >= start, "the cached prefix shrank during a forward"
        if matched < len(tokens):
            end = self.tree.add(end, tokens[matched:], _kv(self.tree, tokens[matched:]))
        assert _path_tokens(end) == list(tokens)
        return end

    def _prefill(self, prompts: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], KVBlock]:
        """``Engine._prefill``: prompts with more than a last token to compute run one by one, the rest together."""
        done: dict[tuple[int, ...], KVBlock] = {}
        light = []
        for tokens in dict.fromkeys(prompts):
            _, matched = self._lookup(tokens)
            if matched >= len(tokens) - 1:
                light.append(tokens)
            else:
                done[tokens] = self._add_missing(tokens, matched)
        for tokens in light:  # every lookup first, as a batched forward does (``Engine._last_tokens``)
            self._lookup(tokens)
        for tokens in light:
            done[tokens] = self._add_missing(tokens, len(tokens) - 1)
        for tokens, end in done.items():  # later lookups split blocks; the tail keeps its identity and path
            assert end.id in self.tree.blocks and _path_tokens(end) == list(tokens)
            self._remember(tokens)
        return done

    def _finish(self, index: int) -> None:
        """``Engine._finish``: seal, hold, and drop the oldest holds past the count and live-token caps."""
        block, tokens = self.active.pop(index)
        parent = block.parent
        ended = self.tree.seal(block)
        assert not ended.open and _path_tokens(ended) == tokens
        assert ended is block or (block.length == 0 and ended is parent and block.id not in self.tree.blocks)
        self.holds.append((tuple(tokens), ended))
        self._remember(tokens)
        while self.holds and (len(self.holds) > MAX_HELD or self.tree.live_tokens > self.budget):
            self.tree.release(self.holds.pop(0)[1])

    # ------------------------------------------------------------------ operations
    @rule(prompts=st.lists(PROMPT, min_size=1, max_size=3), n=st.integers(1, 3), at_once=st.integers(0, 1),
          capacity=st.integers(1, 4))
    def start(self, prompts: list[tuple[int, int, list[int]]], n: int, at_once: int, capacity: int) -> None:
        """``Engine.start_all``: prefill, fork ``n`` branches per request, some finishing at once."""
        requests = [self._prompt(p) for p in prompts]
        with self.tree.trim_deferred():
            done = self._prefill(requests)
            for tokens in requests:
                end = done[tokens]
                assert end.id in self.tree.blocks and _path_tokens(end) == list(tokens)
                forked = []
                for _ in range(n):
                    if self.tree.share:
                        block = self.tree.branch(end, capacity)
                    else:
                        block = self.tree.copy_path(end, end.end + capacity)
                    self.tree.acquire(block)
                    forked.append((block, list(tokens)))
                    assert _path_tokens(block) == list(tokens)
                self.active.extend(forked)
                for _ in range(min(at_once, n)):  # a branch sampling EOS first: it ends where its prompt does
                    self._finish(len(self.active) - len(forked))
                    forked.pop(0)

    @precondition(lambda self: self.active)
    @rule(tokens=st.lists(TOKENS, min_size=1, max_size=6), rounds=st.integers(1, 4))
    def step(self, tokens: list[int], rounds: int) -> None:
        """``Engine.step``: one token for every open branch, its KV written at the offset ``append`` returns."""
        for r in range(rounds):
            for i, (block, seq) in enumerate(self.active):
                token = tokens[(i + r) % len(tokens)]
                offset = self.tree.append(block, token)
                assert offset == block.length - 1 and block.start + offset == len(seq)
                assert block.storage is not None
                block.storage[:, :, offset] = float(token)
                seq.append(token)

    @precondition(lambda self: self.active)
    @rule(index=st.integers(0, 63), token=TOKENS)
    def decode_one(self, index: int, token: int) -> None:
        """One branch runs ahead of its siblings (branches finish and start at different times)."""
        block, seq = self.active[index % len(self.active)]
        offset = self.tree.append(block, token)
        assert block.start + offset == len(seq)
        assert block.storage is not None
        block.storage[:, :, offset] = float(token)
        seq.append(token)

    @precondition(lambda self: self.active)
    @rule(index=st.integers(0, 63), cancel=st.booleans())
    def finish(self, index: int, cancel: bool) -> None:
        """A branch samples EOS (``Engine._finish``) or its request is cancelled (``Engine._abandon``)."""
        if not cancel:
            self._finish(index % len(self.active))
            return
        block, _ = self.active.pop(index % len(self.active))
        self.tree.release(self.tree.seal(block))

    @precondition(lambda self: self.holds)
    @rule(index=st.integers(0, 63))
    def release(self, index: int) -> None:
        """``Engine.release``: a strategy is done with a finished sequence."""
        _, block = self.holds.pop(index % len(self.holds))
        self.tree.release(block)

    @rule(prompts=st.lists(PROMPT, min_size=1, max_size=3))
    def score(self, prompts: list[tuple[int, int, list[int]]]) -> None:
        """``Engine.score_all`` (and ``embed``): every lookup first, then keep what the forwards computed, trim."""
        keys = list(dict.fromkeys(self._prompt(p) for p in prompts))
        starts = [self._lookup(tokens)[1] for tokens in keys]
        for tokens, start in zip(keys, starts, strict=True):
            end = self._add_missing(tokens, start)
            self._remember(tokens)
            for b in end.path():  # a distribution per predicted position, as _store_scores keeps them
                for offset in range(1 if b.start == 0 else 0, b.length):
                    b.scores.setdefault(offset, ScoredPosition(1, ((b.tokens[offset], 0.0),), float(b.tokens[offset])))
        self.tree.trim()

    @precondition(lambda self: any(block.length for block, _ in self.active))
    @rule(index=st.integers(0, 63), back=st.integers(0, 3), tail=st.lists(TOKENS, max_size=2))
    def lookup_decoding(self, index: int, back: int, tail: list[int]) -> None:
        """A request for what a branch is still decoding (a prefix, maybe diverging): it splits the open block."""
        decoding = [(block, seq) for block, seq in self.active if block.length]
        block, seq = decoding[index % len(decoding)]
        cut = max(block.start + 1, len(seq) - back)
        self._lookup([*seq[:cut], *tail])

    @precondition(lambda self: len(self.active) >= 3)
    @rule()
    def fail_all(self) -> None:
        """``Engine.fail_all``: every decoding branch lets go, and nothing unreferenced stays cached."""
        for block, _ in self.active:
            self.tree.release(self.tree.seal(block))
        self.active.clear()
        self.tree.clear_cache()
        assert self.tree.cached_tokens == 0  # nothing unreferenced is open or above a held block

    # ------------------------------------------------------------------ invariants
    @invariant()
    def tree_is_consistent(self) -> None:
        tree = self.tree
        tree.check()
        assert tree.peak_live_tokens >= tree.live_tokens and tree.peak_live_tokens >= self.peak
        self.peak = tree.peak_live_tokens
        # Structure: every non-empty block is findable under its parent by its first token, every listed child is
        # registered there, and only open blocks (a branch that has not decoded yet) are empty.
        for node in [tree.root, *tree.blocks.values()]:
            for first, children in node.children.items():
                assert children, f"{node!r} keeps an empty child list"
                for child in children:
                    assert tree.blocks.get(child.id) is child and child.parent is node
                    assert child.tokens and child.tokens[0] == first and child.start == node.end
        for b in tree.blocks.values():
            assert b.capacity >= b.length, b
            assert b.parent is not None
            if b.tokens:
                assert b in b.parent.children.get(b.tokens[0], [])
            else:
                assert b.open, f"{b!r} is empty but closed"
            self._assert_values(b, b.end)
            for offset, scored in b.scores.items():  # split moves each distribution with its position
                assert 0 <= offset < b.length and scored.logprob == b.tokens[offset] == scored.top[0][0], (b, offset)
        # Holders: each open branch and each hold pins its whole path; the counts say exactly that.
        refs: dict[int, int] = {}
        for block, tokens in [*self.active, *((b, list(k)) for k, b in self.holds)]:
            assert _path_tokens(block) == list(tokens)
            for b in block.path():
                assert tree.blocks.get(b.id) is b, f"{b!r} is held but was evicted"
                refs[b.id] = refs.get(b.id, 0) + 1
        assert {b.id: b.refs for b in tree.blocks.values() if b.refs} == refs
        assert {b.id for b in tree.blocks.values() if b.open} == {b.id for b, _ in self.active}
        assert all(not b.open for _, b in self.holds)
        # Eviction: every operation that can add cached tokens trims, unless a batch defers it.
        if tree.cached_tokens > tree.cache_tokens:
            assert not any(tree._evictable(b) for b in tree.blocks.values())
        if not tree.share:
            assert tree.cached_tokens == 0

    @invariant()
    def match_finds_the_longest_cached_prefix(self) -> None:
        tree = self.tree
        paths, prefixes = self._cached()
        ends = {paths[b.id] for b in tree.blocks.values() if b.length}
        held = [list(tokens) for _, tokens in self.active] + [list(k) for k, _ in self.holds]
        queries = [*held, *(list(k) for k in self.known)]
        queries += [[*q, 1] for q in held] + [[*q[:-1], 5 - q[-1]] for q in held if q]
        for tokens in queries:
            block, matched = tree.match(tokens)
            expected = self._longest(tokens, prefixes)
            assert matched == expected, (tokens, matched, expected)
            if not tree.share:
                assert block is tree.root
                continue
            if tokens in held:
                assert matched == len(tokens), f"held sequence {tokens} is no longer cached"
            if matched == 0:
                assert block is tree.root
                continue
            assert tree.blocks.get(block.id) is block and block.start < matched <= block.end
            assert paths[block.id][:matched] == tuple(tokens[:matched])  # so are its values: see tree_is_consistent
            # Documented tie-break: a path ending exactly at a block's end is preferred (no split needed).
            if tuple(tokens[:matched]) in ends:
                assert block.end == matched, (tokens, block)


TestKVTreeModel = KVTreeMachine.TestCase
TestKVTreeModel.settings = settings(
    max_examples=120,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
