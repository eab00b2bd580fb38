"""The synchronous core of the local engine: prefill, batched decode steps, prompt scoring, holds.

Everything here runs on one thread (the scheduler's worker), so the KV tree needs no locks. A request is
prefilled once, reusing the longest cached prefix, and forked into ``n`` branches; every ``step`` then decodes
one token for every active branch of every request in a single forward.

A request for distinct continuations (``Sampling.distinct``) is a beam instead (``ttc.engine.distinct``): each
step keeps its ``n`` best children of its live branches and finished ones, forking a branch that keeps several
children under a sealed block they share and dropping one that keeps none.

A finished branch keeps a *hold* on its blocks, keyed by its full token sequence (prompt + completion), because
a search strategy usually extends what it just generated. ``release`` drops the hold of a completion its caller
has (a request still running may hold the same tokens); blocks nobody holds stay in the tree as cache until
evicted. Holds are capped, oldest dropped first, by count (``max_held``) and by live KV tokens (``cache_tokens``),
so a caller that never releases cannot pin memory forever.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import torch
from torch import Tensor

from ttc.backends.base import BackendStats
from ttc.engine.detokenizer import IncrementalDetokenizer
from ttc.engine.distinct import Pick, select
from ttc.engine.kv_tree import KVBlock, KVTree, ScoredPosition
from ttc.engine.loading import LoadedModel
from ttc.engine.plans import DecodePlan, ExtendPlan
from ttc.engine.sampler import RowSettings, branch_seed, make_generator, sample
from ttc.errors import ConfigError, ContextLengthError
from ttc.types import Completion, FinishReason, PromptLogprobs, Sampling

Reply = Callable[[object], None]
"""Receives a request's result, or the exception it failed with (called on the engine thread)."""

_LOGIT_CHUNK_ELEMENTS = 1 << 24
_BRANCH_CAPACITY = 128
# A batched forward of ragged rows is padded to its longest row: rows join one while its padding stays below its
# real tokens and its padded size below this many tokens (activations, scratch KV and scores stay small).
_FORWARD_TOKENS = 4096
_Row = TypeVar("_Row")


@dataclass
class GenerationRequest:
    prompt: tuple[int, ...]
    n: int
    sampling: Sampling
    reply: Reply
    cancelled: bool = False


@dataclass
class ScoreRequest:
    """Logprobs of every token of ``prompt``, each with the ``top_k`` most likely alternatives."""

    prompt: tuple[int, ...]
    top_k: int
    reply: Reply


@dataclass
class _Branch:
    request: _Running
    index: int
    block: KVBlock
    settings: RowSettings
    detok: IncrementalDetokenizer
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pending: int | None = None
    finish: FinishReason | None = None
    stopped: bool = False  # finished by a stop string (not EOS, not its length)
    inherited: int = 0  # generated tokens copied from the branch it forked from, which decoded and counted them
    phi: float = 0.0  # distinct requests: the text's log-probability under the sampling distribution
    gumbel: float = 0.0  # distinct requests: its perturbed value (the beam keeps the largest)


@dataclass
class _Running:
    request: GenerationRequest
    cached: int
    branches: list[_Branch] = field(default_factory=list)
    generator: torch.Generator | None = None  # distinct requests: the beam's noise
    delivered: bool = False  # its completions went to its caller, who alone may release their holds


@dataclass
class Counters:
    calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    scored_tokens: int = 0
    decode_steps: int = 0
    kv_token_steps: int = 0


class Engine:
    """Model + KV tree + sampling; see the module docstring. Not thread-safe: one thread drives it."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        share_prefix: bool = True,
        cache_tokens: int | None = None,
        max_held: int = 1024,
        seed: int = 0,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.eos = frozenset(self.config.eos_token_ids)
        bytes_per_token = self.model.kv_bytes_per_token
        budget = max(4096, (1 << 30) // bytes_per_token) if cache_tokens is None else cache_tokens
        self.tree = KVTree(
            num_layers=self.config.num_layers,
            kv_heads=self.config.num_kv_heads,
            head_dim=self.config.head_dim,
            device=self.model.device,
            dtype=self.model.dtype,
            cache_tokens=budget,
            share=share_prefix,
        )
        self.share = share_prefix
        self.max_held = max_held
        self.hold_budget_tokens = budget
        # The finished branches holding each sequence, oldest first. Branches, not their blocks: branches that
        # ended on their first token all hold the prompt's own block, and one request's hold must not be taken
        # for another's when it is dropped (a cancelled request took away a hold the cap had left to another).
        self.holds: OrderedDict[tuple[int, ...], list[_Branch]] = OrderedDict()
        self._held_count = 0
        self._rng = random.Random(seed)
        self._running: list[_Running] = []
        self._active: list[_Branch] = []
        self._stats_lock = threading.Lock()
        self.counters = Counters()

    # ------------------------------------------------------------------ queries
    @property
    def active_branches(self) -> int:
        return len(self._active)

    def stats(self) -> BackendStats:
        with self._stats_lock:
            c = self.counters
            return BackendStats(
                calls=c.calls,
                prompt_tokens=c.prompt_tokens,
                cached_prompt_tokens=c.cached_prompt_tokens,
                generated_tokens=c.generated_tokens,
                scored_tokens=c.scored_tokens,
                live_kv_tokens=self.tree.live_tokens,
                peak_kv_tokens=self.tree.peak_live_tokens,
                decode_steps=c.decode_steps,
                kv_token_steps=c.kv_token_steps,
                kv_bytes_per_token=self.tree.bytes_per_token,
                prefix_cache_hit_rate=c.cached_prompt_tokens / c.prompt_tokens if c.prompt_tokens else None,
            )

    def check_vocabulary(self, token_ids: Sequence[int], what: str = "token id") -> None:
        """Refuse an id outside the model's vocabulary (an index past the embedding table)."""
        vocab = self.config.vocab_size
        bad = next((t for t in token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ConfigError(f"{what} {bad} is outside the model's vocabulary [0, {vocab})")

    def validate_prompt(self, prompt: Sequence[int], *, generate: bool = True) -> None:
        """Reject prompts the model cannot run, with the reason and the fix.

        A prompt to extend needs a free position for its first new token; one only scored or embedded may fill
        the context, as a completion that stopped at the context's end does.
        """
        if not prompt:
            raise ConfigError("prompt must hold at least one token id; tokenize a non-empty text first")
        self.check_vocabulary(prompt, "prompt token id")
        if len(prompt) + generate > self.config.max_positions:
            room = "leaves no room" if generate else "does not fit"
            raise ContextLengthError(
                f"prompt of {len(prompt)} tokens {room} in the model's {self.config.max_positions}-position "
                "context; shorten it"
            )

    # ------------------------------------------------------------------ prefill
    def _prefix_views(self, block: KVBlock, upto: int) -> list[tuple[KVBlock, int]]:
        """(block, tokens used) along ``block``'s path, covering absolute positions [0, upto)."""
        return [(b, min(b.length, upto - b.start)) for b in block.path() if b.start < upto]

    def _run(self, rows: Sequence[tuple[tuple[int, ...], KVBlock, int]]) -> tuple[list[KVBlock], Tensor]:
        """One forward over ``tokens[start:]`` of every (tokens, end, start) row, each over its cached
        ``tokens[:start]`` on the path to ``end``; what the tree lacks of a row's tokens is kept as a new block.
        Returns the block ending each row's tokens and the hidden states [B, T, hidden] of the rows' new tokens
        (a shorter row is padded at its end).

        Callers look every row up first: a lookup can split a block that another row's prefix reads. Before
        keeping KV the tree is looked up again, row by row, so rows that share new tokens keep them once.
        """
        counts = [len(tokens) - start for tokens, _, start in rows]
        width = max(counts)
        layers, two, heads, dim = self.tree.shape
        device = self.model.device
        scratch = torch.empty(layers, two, len(rows), width, heads, dim, device=device, dtype=self.model.dtype)
        plan = ExtendPlan([self._prefix_views(end, start) for _, end, start in rows], scratch)
        padded = [(tokens, start, width - n) for (tokens, _, start), n in zip(rows, counts, strict=True)]
        ids = torch.tensor([[*tokens[start:], *[tokens[-1]] * pad] for tokens, start, pad in padded], device=device)
        positions = torch.tensor([[*range(start, len(tokens)), *[len(tokens) - 1] * pad]
                                  for tokens, start, pad in padded], device=device)
        hidden = self.model.hidden_states(ids, positions, max(len(tokens) for tokens, _, _ in rows) - 1, plan)
        ends = []
        for row, ((tokens, _, start), n) in enumerate(zip(rows, counts, strict=True)):
            end, matched = self.tree.lookup(tokens)
            if matched < start:  # the KV of tokens[matched:start] is in no scratch row: keeping it would corrupt
                raise RuntimeError(f"the cached prefix shrank from {start} to {matched} tokens during a forward")
            if matched < len(tokens):
                # The tree copies a view of a larger scratch (a batch's rows, a recomputed cached prefix).
                end = self.tree.add(end, tokens[matched:], scratch[:, :, row, matched - start : n])
            ends.append(end)
        return ends, hidden

    # ------------------------------------------------------------------ requests
    def start(self, request: GenerationRequest) -> None:
        """Prefill ``request``'s prompt and fork its branches (some may finish at once)."""
        errors: list[Exception] = []
        self.start_all([request], lambda _, error: errors.append(error))
        if errors:
            raise errors[0]

    def start_all(self, requests: Sequence[GenerationRequest],
                  on_error: Callable[[GenerationRequest, Exception], None]) -> None:
        """Prefill and fork ``requests``, in order; a request that cannot start goes to ``on_error`` instead.

        Prompts are prefilled together as :meth:`_prefill` allows; a prompt repeated in the batch is computed
        once, and its later requests count all but its last token as cached, as if started after the first.
        """
        seen: set[tuple[int, ...]] = set()
        # No prompt may be evicted before its branches hold it; after, older cache (or, unshared, a prompt
        # itself) may go.
        with self.tree.trim_deferred():
            done, failed = self._prefill([request.prompt for request in requests])
            for request in requests:
                prompt = request.prompt
                if prompt in failed:
                    on_error(request, failed[prompt])
                    continue
                end, hidden, cached = done[prompt]
                if prompt in seen:
                    cached = len(prompt) - 1
                seen.add(prompt)
                try:
                    self._launch(request, end, self.model.logits(hidden[None]), cached)
                except Exception as exc:
                    on_error(request, exc)
        self._deliver_finished()

    def _prefill(self, sequences: Sequence[tuple[int, ...]]) -> tuple[
            dict[tuple[int, ...], tuple[KVBlock, Tensor, int]], dict[tuple[int, ...], Exception]]:
        """Compute what the tree lacks of each distinct sequence: the block ending it, the final hidden state at
        its last token, and how many of its tokens were cached; and the sequences that failed, with their errors.

        A search extends what it holds, and a held sequence is cached but for its last token (the last one a
        finished branch sampled is never fed back): those run together in one forward, as a decode step would.
        Sequences with more to compute are prefilled one by one, first, so the batched lookups see their blocks.
        """
        done: dict[tuple[int, ...], tuple[KVBlock, Tensor, int]] = {}
        failed: dict[tuple[int, ...], Exception] = {}
        light: list[tuple[int, ...]] = []
        for tokens in dict.fromkeys(sequences):
            try:
                end, matched = self.tree.lookup(tokens)
                if matched >= len(tokens) - 1:
                    light.append(tokens)
                    continue
                (end,), hidden = self._run([(tokens, end, matched)])
                done[tokens] = (end, hidden[0, -1], matched)
            except Exception as exc:
                failed[tokens] = exc
        if light:
            try:
                ends, last = self._last_tokens(light)
            except Exception as exc:
                failed.update(dict.fromkeys(light, exc))
            else:
                for row, tokens in enumerate(light):
                    done[tokens] = (ends[row], last[row], len(tokens) - 1)
        return done, failed

    def _launch(self, request: GenerationRequest, end: KVBlock, logits: Tensor, cached: int) -> None:
        """Fork ``request``'s branches under its prompt's block ``end`` and sample their first tokens."""
        running = _Running(request, cached=cached)
        seed = request.sampling.seed if request.sampling.seed is not None else self._rng.getrandbits(63)
        # Running from its first fork, so that a failure anywhere below gives back whatever its branches hold
        # (blocks, or holds of branches already finished): a request the caller never hears of again must not
        # keep its prompt's KV alive for the engine's life.
        self._running.append(running)
        try:
            for index in range(1 if request.sampling.distinct else request.n):
                running.branches.append(self._fork(running, index, end, seed))
            if request.sampling.distinct:
                running.generator = make_generator(branch_seed(seed, -1), self.model.device)
                self._grow(running, running.branches, logits.reshape(1, -1))
            else:
                tokens, logprobs = sample(logits.expand(request.n, -1), [b.settings for b in running.branches])
                for branch, token, logprob in zip(running.branches, tokens, logprobs, strict=True):
                    self._accept(branch, token, logprob)
        except Exception:
            self._abandon(running)
            raise
        with self._stats_lock:
            self.counters.calls += 1
            self.counters.prompt_tokens += len(request.prompt)
            self.counters.cached_prompt_tokens += cached

    def _grow(self, running: _Running, live: Sequence[_Branch], logits: Tensor) -> None:
        """One step of a distinct request's beam: keep its best finished branches and children of ``live``
        (whose next-token ``logits`` these are), forking a branch kept more than once, dropping one kept never."""
        sampling = running.request.sampling
        assert running.generator is not None
        finished = [b for b in running.branches if b.finish is not None]
        kept, picks = select(logits, [b.phi for b in live], [b.gumbel for b in live], [b.gumbel for b in finished],
                             running.request.n, temperature=sampling.temperature, top_p=sampling.top_p,
                             generator=running.generator)
        for index, branch in enumerate(finished):
            if index not in kept:
                self._drop_hold_on(branch)
        children: dict[int, list[Pick]] = {}
        for pick in picks:
            children.setdefault(pick.row, []).append(pick)
        model_logprobs = torch.log_softmax(logits, dim=-1)
        grown: list[tuple[_Branch, Pick]] = []
        for row, branch in enumerate(live):
            mine = children.get(row, [])
            if len(mine) == 1:
                grown.append((branch, mine[0]))
                continue
            self._count(branch)
            sealed = self.tree.seal(branch.block)
            for pick in mine:  # several children share the prefix decoded so far, each in a block of its own
                grown.append((self._split(branch, sealed), pick))
            self.tree.release(sealed)
        running.branches = [b for i, b in enumerate(finished) if i in kept] + [b for b, _ in grown]
        for branch, pick in grown:
            branch.phi, branch.gumbel = pick.logprob, pick.gumbel
            self._accept(branch, pick.token, float(model_logprobs[pick.row, pick.token]))

    def _split(self, parent: _Branch, sealed: KVBlock) -> _Branch:
        """A copy of live ``parent`` that decodes into a new block under ``sealed``, the block ending its text."""
        sampling = parent.request.request.sampling
        capacity = max(1, min(sampling.max_tokens - len(parent.generated), _BRANCH_CAPACITY))
        # Without sharing (the baseline that measures it), a child gets its own copy of the path, as a fork does.
        block = self.tree.branch(sealed, capacity) if self.share else \
            self.tree.copy_path(sealed, sealed.end + capacity)
        self.tree.acquire(block)
        return _Branch(parent.request, parent.index, block, parent.settings, parent.detok.copy(),
                       generated=list(parent.generated), logprobs=list(parent.logprobs),
                       inherited=len(parent.generated), phi=parent.phi, gumbel=parent.gumbel)

    def _count(self, branch: _Branch) -> None:
        """Count the tokens ``branch`` decoded itself: once, when it finishes, is dropped or forks."""
        with self._stats_lock:
            self.counters.generated_tokens += len(branch.generated) - branch.inherited
        branch.inherited = len(branch.generated)

    def _fork(self, running: _Running, index: int, end: KVBlock, seed: int) -> _Branch:
        sampling = running.request.sampling
        capacity = min(sampling.max_tokens, _BRANCH_CAPACITY)
        # Everything that can fail comes before the block is taken: a branch not yet in ``running.branches`` is
        # not released by ``_launch``'s cleanup.
        generator = make_generator(branch_seed(seed, index), self.model.device)
        settings = RowSettings(sampling.temperature, sampling.top_p, generator)
        detok = IncrementalDetokenizer(self.tokenizer, sampling.stop, running.request.prompt)
        block = self.tree.branch(end, capacity) if self.share else self.tree.copy_path(end, end.end + capacity)
        self.tree.acquire(block)
        return _Branch(running, index, block, settings, detok)

    def _accept(self, branch: _Branch, token: int, logprob: float) -> None:
        branch.generated.append(token)
        branch.logprobs.append(logprob)
        stop = branch.detok.push(token)
        sampling = branch.request.request.sampling
        full = branch.block.end + 1 >= self.config.max_positions  # no position left for another token
        if token in self.eos or (stop is not None and not full):
            branch.stopped = stop is not None
            self._finish(branch, "stop")
        elif full or len(branch.generated) >= sampling.max_tokens:
            # A stop string on the context's last position ends a step whose sequence cannot go on: a caller
            # reading "stop" would ask for the next step and be refused, so it is cut by the context's length.
            self._finish(branch, "length")
        else:
            branch.pending = token
            self._active.append(branch)

    def _finish(self, branch: _Branch, reason: FinishReason) -> None:
        branch.finish = reason
        branch.pending = None
        branch.block = self.tree.seal(branch.block)
        key = branch.request.request.prompt + tuple(branch.generated)
        self.holds.setdefault(key, []).append(branch)
        self.holds.move_to_end(key)
        self._held_count += 1
        self._count(branch)
        while self.holds and (
            self._held_count > self.max_held or self.tree.live_tokens > self.hold_budget_tokens
        ):
            self._drop_hold(next(iter(self.holds)))

    def _drop_hold(self, key: tuple[int, ...], *, delivered: bool = False) -> bool:
        """Drop the oldest hold on ``key``; with ``delivered``, the oldest of a request whose caller has it.

        A caller releases what it was given. A branch of a request still running (or cancelled before its reply)
        may hold the same tokens: taking its hold would leave the caller's own, which nobody releases after.
        """
        held = self.holds.get(key, [])
        index = next((i for i, b in enumerate(held) if not delivered or b.request.delivered), None)
        if index is None:
            return False
        branch = held.pop(index)
        if not held:
            del self.holds[key]
        self._held_count -= 1
        self.tree.release(branch.block)
        return True

    def _deliver_finished(self) -> None:
        """Reply to every request whose branches have all finished; a cancelled one's holds are dropped instead,
        as its caller is gone (its event loop may be closed: a reply could never reach it, nor be released)."""
        done = [r for r in self._running if all(b.finish is not None for b in r.branches)]
        if not done:
            return
        self._running = [r for r in self._running if r not in done]
        for running in done:
            if running.request.cancelled:
                for branch in running.branches:
                    self._drop_hold_on(branch)
                continue
            if running.generator is not None:  # a draw without replacement, in the order it ranks them
                running.branches.sort(key=lambda b: b.gumbel, reverse=True)
            running.delivered = True  # before the reply: the caller may release as soon as it has it
            running.request.reply([self._completion(running, b) for b in running.branches])

    def _completion(self, running: _Running, branch: _Branch) -> Completion:
        assert branch.finish is not None
        return Completion(
            text=branch.detok.full_text(stopped=branch.stopped),
            token_ids=tuple(branch.generated),
            finish_reason=branch.finish,
            logprobs=tuple(branch.logprobs) if running.request.sampling.logprobs else None,
            prompt_tokens=len(running.request.prompt),
            cached_prompt_tokens=running.cached,
        )

    # ------------------------------------------------------------------ decoding
    def step(self) -> None:
        """Decode one token for every active branch, all requests in one forward."""
        self._drop_cancelled()
        branches, self._active = self._active, []
        if not branches:
            return
        offsets, positions, tokens = [], [], []
        for branch in branches:
            assert branch.pending is not None
            offset = self.tree.append(branch.block, branch.pending)
            offsets.append(offset)
            positions.append(branch.block.start + offset)
            tokens.append([branch.pending])
        with self._stats_lock:
            self.counters.decode_steps += 1
            self.counters.kv_token_steps += self.tree.live_tokens  # KV held during this forward, new tokens too
        plan = DecodePlan([b.block for b in branches], offsets)
        device = self.model.device
        ids = torch.tensor(tokens, device=device)
        pos = torch.tensor(positions, device=device)[:, None]
        hidden = self.model.hidden_states(ids, pos, max(positions), plan)
        logits = self.model.logits(hidden[:, 0])
        rows: dict[int, list[int]] = {}  # a distinct request's live branches, by row, to grow as one beam
        independent = []
        for row, branch in enumerate(branches):
            if branch.request.generator is None:
                independent.append(row)
            else:
                rows.setdefault(id(branch.request), []).append(row)
        if independent:
            own = logits if not rows else logits.index_select(0, torch.tensor(independent, device=device))
            sampled, logprobs = sample(own, [branches[i].settings for i in independent])
            for row, token, logprob in zip(independent, sampled, logprobs, strict=True):
                self._accept(branches[row], token, logprob)
        for beam in rows.values():
            index = torch.tensor(beam, device=device)
            self._grow(branches[beam[0]].request, [branches[i] for i in beam], logits.index_select(0, index))
        self._deliver_finished()

    def _drop_cancelled(self) -> None:
        cancelled = [r for r in self._running if r.request.cancelled]
        for running in cancelled:
            self._abandon(running)

    def _abandon(self, running: _Running) -> None:
        """Forget a request: its active branches release their blocks, finished ones their holds."""
        self._running.remove(running)
        self._active = [b for b in self._active if b.request is not running]
        for branch in running.branches:
            if branch.finish is None:
                self.tree.release(self.tree.seal(branch.block))
            else:
                self._drop_hold_on(branch)

    def _drop_hold_on(self, branch: _Branch) -> None:
        """Drop ``branch``'s own hold, where the cap or a release has not dropped it already."""
        key = branch.request.request.prompt + tuple(branch.generated)
        held = self.holds.get(key, [])
        index = next((i for i, other in enumerate(held) if other is branch), None)
        if index is not None:
            del held[index]
            if not held:
                del self.holds[key]
            self._held_count -= 1
            self.tree.release(branch.block)

    def fail_all(self, error: BaseException) -> None:
        """Abandon every running request, telling each caller ``error``.

        A step that failed half-way may have left tokens whose KV was never written, so every unreferenced block
        is evicted too: a later request must not find them.
        """
        failed = list(self._running)
        for running in failed:
            self._abandon(running)
        self.tree.clear_cache()
        for running in failed:
            running.request.reply(error)

    # ------------------------------------------------------------------ release
    def release(self, tokens: Sequence[int]) -> bool:
        """Drop one hold on the sequence ``tokens`` that a delivered completion took; False when none held it."""
        return self._drop_hold(tuple(tokens), delivered=True)

    # ------------------------------------------------------------------ embedding
    def embed(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """The final hidden state at each sequence's last token, one row per sequence.

        It is what the model has made of the whole sequence, and so of a search-tree step in its context: ETS
        clusters these to tell redundant steps from different ones. Cached prefixes are read, not recomputed,
        and a frontier the search holds runs its last tokens in one forward (:meth:`_prefill`).
        """
        wanted = [tuple(sequence) for sequence in sequences]
        done, failed = self._prefill(wanted)
        self.tree.trim()
        for error in failed.values():
            raise error
        return [done[tokens][1].float().tolist() for tokens in wanted]

    def _last_tokens(self, batch: Sequence[tuple[int, ...]]) -> tuple[list[KVBlock], Tensor]:
        """One forward over the last tokens of distinct sequences whose other tokens are all cached: the block
        ending each sequence, and the final hidden states [B, hidden]. A last token the tree lacks is kept as a
        one-token block, as a prefill keeps its tokens."""
        looked = [self.tree.lookup(tokens) for tokens in batch]
        ends, hidden = self._run([(tokens, end, len(tokens) - 1)
                                  for tokens, (end, _) in zip(batch, looked, strict=True)])
        return ends, hidden[:, 0]

    # ------------------------------------------------------------------ scoring
    def score(self, prompt: Sequence[int], top_k: int) -> PromptLogprobs:
        """Logprobs of every prompt token; positions whose distributions are cached are not recomputed."""
        results: list[object] = []
        self.score_all([ScoreRequest(tuple(prompt), top_k, results.append)])
        if isinstance(results[0], Exception):
            raise results[0]
        return cast(PromptLogprobs, results[0])

    def score_all(self, requests: Sequence[ScoreRequest]) -> None:
        """Score every request, replying to each with its logprobs or its error.

        A search scores all its new nodes at once, each a cached path plus a new step: the positions without a
        cached distribution run together, in as few forwards as their lengths allow (:func:`_padded_groups`).
        """
        keys = list(dict.fromkeys((request.prompt, request.top_k) for request in requests))
        ends: dict[tuple[tuple[int, ...], int], KVBlock] = {}
        failed: dict[tuple[tuple[int, ...], int], Exception] = {}
        for key in keys:  # every lookup first: one can split a block another key's path reads
            try:
                ends[key] = self.tree.lookup(key[0])[0]
            except Exception as exc:
                failed[key] = exc
        work = []  # (tokens, top_k, end, start): run tokens[start:], store the distributions after each
        for (tokens, top_k), end in ends.items():
            first = self._first_unscored(end, len(tokens), top_k)
            if first < len(tokens):
                work.append((tokens, top_k, end, first - 1))
        with self._stats_lock:
            self.counters.calls += len(requests)
            # Only positions whose distributions are computed now count: cached ones cost nothing.
            self.counters.scored_tokens += sum(len(tokens) - start - 1 for tokens, _, _, start in work)
        for group in _padded_groups(work, lambda row: len(row[0]) - row[3]):
            try:
                done, hidden = self._run([(tokens, end, start) for tokens, _, end, start in group])
                for row, ((tokens, top_k, _, start), end) in enumerate(zip(group, done, strict=True)):
                    self._store_scores(end, tokens, start, hidden[row, : len(tokens) - start - 1], top_k)
                    ends[(tokens, top_k)] = end
            except Exception as exc:
                failed.update(dict.fromkeys(((tokens, top_k) for tokens, top_k, _, _ in group), exc))
        results: dict[tuple[tuple[int, ...], int], object] = dict(failed)
        for key in ends.keys() - failed.keys():
            try:
                results[key] = self._read_scores(ends[key], *key)
            except Exception as exc:
                results[key] = exc
        self.tree.trim()  # before the replies: a caller sees the cache within its cap once it has its scores
        for request in requests:
            request.reply(results[(request.prompt, request.top_k)])

    def _first_unscored(self, end: KVBlock, length: int, top_k: int) -> int:
        """First position in [1, length) without a cached distribution of at least ``top_k`` entries."""
        position = 1
        for b in end.path():
            for offset in range(max(0, position - b.start), b.length):
                scored = b.scores.get(offset)
                if scored is None or scored.top_k < top_k:
                    return max(1, b.start + offset)
                position = b.start + offset + 1
        return min(max(position, 1), length)

    def _store_scores(self, end: KVBlock, tokens: Sequence[int], start: int, hidden: Tensor, top_k: int) -> None:
        """Distributions predicting ``tokens[start + 1:]`` from ``hidden`` (one row per predicting token)."""
        targets = torch.tensor(tokens[start + 1 :], device=hidden.device)
        rows = max(1, _LOGIT_CHUNK_ELEMENTS // self.config.vocab_size)
        path = end.path()
        starts = [b.start for b in path]
        for first in range(0, hidden.shape[0], rows):
            logprobs = torch.log_softmax(self.model.logits(hidden[first : first + rows]), dim=-1)
            chosen = logprobs.gather(1, targets[first : first + rows, None]).squeeze(1).tolist()
            k = min(top_k, logprobs.shape[-1])
            values, ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())
            for i, (own, vals, idx) in enumerate(zip(chosen, values.tolist(), ids.tolist(), strict=True)):
                position = start + 1 + first + i
                block = path[bisect.bisect_right(starts, position) - 1]
                known = block.scores.get(position - block.start)
                if known is None or known.top_k < top_k:  # a request batched with this one may want more
                    block.scores[position - block.start] = ScoredPosition(top_k, tuple(zip(idx, vals, strict=True)),
                                                                          own)

    def _read_scores(self, end: KVBlock, tokens: Sequence[int], top_k: int) -> PromptLogprobs:
        top: list[dict[int, float] | None] = [None]
        for block in end.path():
            for offset in range(1 if block.start == 0 else 0, block.length):
                scored = block.scores.get(offset)
                if scored is None:
                    raise RuntimeError(f"position {block.start + offset} was scored but has no distribution")
                dist = dict(scored.top[:top_k])
                dist[block.tokens[offset]] = scored.logprob
                top.append(dist)
        if len(top) != len(tokens):
            raise RuntimeError(f"scored {len(top)} positions for a {len(tokens)}-token prompt")
        return PromptLogprobs(token_ids=tuple(tokens), top=tuple(top))


def _padded_groups(rows: Sequence[_Row], count: Callable[[_Row], int]) -> list[list[_Row]]:
    """Rows in forwards of similar lengths, longest first: a forward takes the next row while its padding stays
    below its real tokens and its padded size within ``_FORWARD_TOKENS`` (a row longer than that runs alone)."""
    groups: list[list[_Row]] = []
    real = width = 0
    for row in sorted(rows, key=count, reverse=True):
        n = count(row)
        size = (len(groups[-1]) + 1) * width if groups else 0
        if not groups or size > 2 * (real + n) or size > _FORWARD_TOKENS:
            groups.append([])
            real, width = 0, n
        groups[-1].append(row)
        real += n
    return groups


__all__ = ["Counters", "Engine", "GenerationRequest", "Reply", "ScoreRequest"]
