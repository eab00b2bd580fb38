"""Process reward models on any backend, with incremental scoring.

A PRM scores every step of a solution. In a tree search most of a new node's steps were already scored as its
parent's, so scores are cached by a hash of (question, step prefix): a child costs only its new step. The request
still carries the whole prefix as token ids, so vLLM's prefix cache or the local engine's KV tree makes the prefix
cheap to re-read; ``StepScores.scored_tokens`` counts only what had not been scored before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from ttc.backends.base import Backend, unreadable_characters
from ttc.backends.lru import LRUCache
from ttc.concurrency import run_concurrently
from ttc.errors import ConfigError, ContextLengthError, VerifierError
from ttc.types import PromptLogprobs, check_unicode
from ttc.verifiers.base import Aggregation, StepScores, UnreadableSolution
from ttc.verifiers.prm_presets import PRMPreset, get_preset

T = TypeVar("T")


@runtime_checkable
class SupportsChatTemplate(Protocol):
    async def tokenize_chat(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool) -> list[int]:
        ...


@runtime_checkable
class SupportsPooling(Protocol):
    async def pool(self, prompt: Sequence[int]) -> list[list[float]]: ...


class StepScoreCache:
    """Scores by a hash of (verifier, question, steps[:i+1]): the key of step i depends on every step before it,
    and on the verifier that scored it, so that PRMs given one cache never answer each other's scores."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._lru: LRUCache[bytes, float] = LRUCache(capacity)

    @staticmethod
    def keys(question: str, steps: Sequence[str], verifier: str = "") -> list[bytes]:
        """Each text enters the hash after its length, so no split of the same characters between the verifier's
        identity, the question and the steps (or between two steps) gives another key's input."""
        digest = hashlib.sha256()
        out = []
        for index, text in enumerate((verifier, question, *steps)):
            data = text.encode()
            digest.update(len(data).to_bytes(8, "big") + data)
            if index > 1:  # a key per step: the verifier's and the question's own hashes key nothing
                out.append(digest.copy().digest())
        return out

    def get(self, key: bytes) -> float | None:
        return self._lru.get(key)

    def put(self, key: bytes, value: float) -> None:
        self._lru.put(key, value)


class PartlyScored(VerifierError):
    """A scoring that failed after some of its requests were answered (a judge asks about each step in a request
    of its own, and a later step can overflow its context): those were spent, and ``spent`` holds the steps judged
    before the failure and what they cost, so that the caller charges them also where it leaves the solution
    unscored. The failure itself is the cause (``unscorable`` reads it there)."""

    def __init__(self, message: str, spent: StepScores) -> None:
        super().__init__(message)
        self.spent = spent


def spent_before(exc: BaseException) -> StepScores:
    """What a scoring that raised ``exc`` spent before it failed. Nothing, unless it is a ``PartlyScored``: every
    other family sends one request per scoring, and a backend refuses a prompt too long for its context before
    computing any of it."""
    return exc.spent if isinstance(exc, PartlyScored) else StepScores(())


class CachedPRM(ABC):
    """Shared machinery: the cache, usage counters, and the ProcessVerifier methods."""

    call_per_step: ClassVar[bool] = False
    """Whether scoring sends one request per new step (else one for the whole prefix)."""

    def __init__(self, backend: Backend, preset: PRMPreset, *, cache: StepScoreCache | None = None,
                 incremental: bool = True) -> None:
        self.backend = backend
        self.preset = preset
        self.cache = cache or StepScoreCache()
        self.incremental = incremental
        self.scored_tokens = 0
        self.calls = 0

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return list((await self.score_steps_detailed(question, steps)).scores)

    async def score_steps_detailed(self, question: str, steps: Sequence[str]) -> StepScores:
        if not isinstance(question, str):
            raise ConfigError(f"a PRM scores steps of a question given as a string, got {type(question).__name__}")
        if isinstance(steps, str | bytes) or not all(isinstance(step, str) for step in steps):
            raise ConfigError("a PRM scores a list of step strings (ttc.verifiers.base.split_steps makes one from a "
                              f"solution), got {steps!r:.80}")
        if not steps:
            return StepScores((), 0, 0)
        self._check_unicode(question, steps)
        keys = self.cache.keys(question, steps, self.identity)
        cached: list[float] = []
        for key in keys if self.incremental else ():
            value = self.cache.get(key)
            if value is None:
                break
            cached.append(value)
        if len(cached) == len(steps):
            return StepScores(tuple(cached), 0, len(cached))
        try:
            scores, new_tokens = await self._score(question, steps, cached)
        except PartlyScored as exc:
            self._keep(keys, exc.spent)
            raise
        if len(scores) != len(steps):
            raise VerifierError(f"{self.preset.name}: got {len(scores)} scores for {len(steps)} steps")
        requests = len(steps) - len(cached) if self.call_per_step else 1
        # The cached steps keep the scores the cache gave them: the same (question, steps) always scores the same,
        # whichever path through them was scored first.
        result = StepScores((*cached, *scores[len(cached):]), new_tokens, len(cached), requests)
        self._keep(keys, result)
        return result

    @functools.cached_property
    def identity(self) -> str:
        """What a cached score depends on besides the text: the family, the model and the preset. Read once: a
        server's model name is learnt on its first call, and the key must not change with it (nothing would be
        found again); a model named up front tells apart two served at one URL (an adapter, a router)."""
        model = getattr(self.backend, "model", None)
        return f"{type(self).__qualname__}\n{self.backend.name}\n{model}\n{self.preset!r}"

    def _check_unicode(self, question: str, steps: Sequence[str]) -> None:
        """No tokenizer (nor the cache's hash) encodes a lone surrogate: in the question it is the caller's text to
        fix; in a step, this one solution cannot be read."""
        check_unicode(question, "the question")
        for n, step in enumerate(steps, start=1):
            try:
                check_unicode(step, f"step {n}")
            except ConfigError as exc:
                raise UnreadableSolution(f"PRM preset {self.preset.name!r} cannot read this solution: {exc}") \
                    from exc

    def _keep(self, keys: Sequence[bytes], scored: StepScores) -> None:
        """Steps judged before a failure are kept as a finished scoring's are: what they cost is counted, and
        the next path through them asks only about the rest. Those found cached are left as they are."""
        for key, value in zip(keys[scored.cached_steps: len(scored.scores)], scored.scores[scored.cached_steps:],
                              strict=True):
            self.cache.put(key, value)
        self.scored_tokens += scored.scored_tokens
        self.calls += scored.calls

    async def score_many(self, question: str, candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score several candidates concurrently (the backend batches them)."""
        results: list[list[float]] = [[] for _ in candidates]

        async def one(i: int) -> None:
            results[i] = await self.score_steps(question, candidates[i])

        # One candidate's VerifierError is raised as itself, as score_steps raises it, not in an ExceptionGroup.
        await run_concurrently([functools.partial(one, i) for i in range(len(candidates))])
        return results

    async def single_token(self, text: str) -> int:
        ids = await self.backend.tokenize(text)
        if len(ids) != 1:
            raise VerifierError(f"PRM preset {self.preset.name!r}: {text!r} must be one token for this model, "
                                f"got {len(ids)} ({ids}); pick a preset that matches the model")
        return ids[0]

    async def _tokenized(self, tokenizing: Awaitable[T], question: str, steps: Sequence[str]) -> T:
        """The tokens of a scoring prompt holding ``question`` and ``steps``. Where the backend has no token for
        some of its characters, a step the policy wrote with them is this solution's failure, not the caller's
        (the others of its question can still be scored); the question's, or the preset's own words', is raised
        as the backend raised it."""
        try:
            return await tokenizing
        except ConfigError as exc:
            if isinstance(exc, ContextLengthError) or await unreadable_characters(self.backend, question):
                raise
            for n, step in enumerate(steps, start=1):
                chars = await unreadable_characters(self.backend, step)
                if chars:
                    raise UnreadableSolution(
                        f"PRM preset {self.preset.name!r} on {self.backend.name} cannot read step {n} of this "
                        f"solution ({step!r:.80}): its vocabulary has no token for {', '.join(map(repr, chars))}; "
                        "a verifier whose vocabulary holds the characters the policy writes can score it") from exc
            raise

    def _tag_inside(self, step: int | None) -> ConfigError | UnreadableSolution:
        """The refusal of a text holding the preset's step tag, which the PRM would read as a step boundary that no
        judgement follows (part of a step would go unjudged): in the question (``step`` None) it is the caller's
        text; in step ``step``, this one solution's."""
        where = "the question" if step is None else f"step {step}"
        message = (f"PRM preset {self.preset.name!r} separates steps with {self.preset.tag!r}, and the question or a "
                   f"step contains it ({where}): remove it from the text before scoring")
        return ConfigError(message) if step is None else UnreadableSolution(message)

    async def _logprobs(self, ids: Sequence[int], top_k: int) -> PromptLogprobs:
        """The prompt logprobs of a scoring prompt; one the PRM cannot read (longer than its context, with the
        step tags the policy never wrote) is the verifier's failure, named as such, not a prompt to shorten."""
        with self._readable(ids):
            return await self.backend.prompt_logprobs(ids, top_k=top_k)

    @contextlib.contextmanager
    def _readable(self, ids: Sequence[int]) -> Iterator[None]:
        """A refusal of the scoring prompt ``ids`` (a ContextLengthError from either backend, or a token it cannot read)
        as this verifier's failure: the prompt is the PRM's, not the caller's."""
        try:
            yield
        except (ConfigError, ContextLengthError) as exc:
            raise VerifierError(f"PRM preset {self.preset.name!r} on {self.backend.name} cannot score this "
                                f"solution ({len(ids)} tokens with its question and step markers): {exc}; use a PRM "
                                "with a longer context, or shorter solutions (max_tokens)") from exc

    @abstractmethod
    async def _score(self, question: str, steps: Sequence[str], cached: Sequence[float]) -> tuple[list[float], int]:
        """All step scores, and how many tokens beyond the cached steps' prefix were sent; ``cached`` holds the
        scores of the first steps, found in the cache before any await (a concurrent scoring may evict them)."""


def judgement(dist: Mapping[int, float] | None, good: int, bad: int, where: str, *, actual: int | None = None,
              top_k: int | None = None) -> float:
    """P(good) / (P(good) + P(bad)) from a logprob distribution.

    A judgement token missing from the returned top-k is at most as likely as the least likely of the top-k, and
    is given that bound; at least one of the two must be present. The distribution of a prompt position also
    holds the prompt's own token there (``actual``) whether or not it is among the top-k: where it is not (one
    entry more than ``top_k``), its logprob bounds nothing, so the bound is taken without it.
    """
    if dist is None:
        raise VerifierError(f"no distribution at {where}")
    lg, lb = dist.get(good), dist.get(bad)
    if lg is None and lb is None:
        raise VerifierError(f"neither judgement token is among the returned logprobs at {where}: raise top_k "
                            "(and the server's --max-logprobs) or check the preset's good/bad tokens")
    ranked = top_k_only(dist, actual, top_k)
    floor = min(ranked.values()) if ranked else min(dist.values())
    lg = floor if lg is None else lg
    lb = floor if lb is None else lb
    top = max(lg, lb)
    pg, pb = math.exp(lg - top), math.exp(lb - top)
    return pg / (pg + pb)


def top_k_only(dist: Mapping[int, float], actual: int | None, top_k: int | None) -> Mapping[int, float]:
    """The top-k of a prompt position's distribution, without the prompt's own token there (``actual``) where it
    was returned only as that (one entry more than ``top_k``)."""
    if actual is not None and top_k is not None and len(dist) > top_k and actual in dist:
        return {token: logprob for token, logprob in dist.items() if token != actual}
    return dist


class TokenPRM(CachedPRM):
    """Math-Shepherd-style PRM: judgement read from the distribution right after each step tag.

    After the last tag the prompt holds the good token (after the others, the separator), and a prompt position
    also returns its own token's logprob: read from the top-k alone, a step scores the same whether or not it is
    the last one, so its score depends only on the steps up to it and caches like every other family's."""

    async def _score(self, question: str, steps: Sequence[str], cached: Sequence[float]) -> tuple[list[float], int]:
        cached_steps = len(cached)
        p = self.preset
        tag, good, bad = [await self.single_token(t) for t in (p.tag, p.good, p.bad)]
        ids = await self.backend.tokenize(p.prefix.format(question=question), add_special_tokens=True)
        if tag in ids:
            raise self._tag_inside(None)
        tags: list[int] = []
        for n, step in enumerate(steps, start=1):
            step_ids = await self._tokenized(self.backend.tokenize(p.step_template.format(step=step, n=n)),
                                             question, steps[:n])
            if tag in step_ids:
                raise self._tag_inside(n)
            ids += step_ids
            ids.append(tag)
            tags.append(len(ids) - 1)
            ids += await self.backend.tokenize(p.separator) if n < len(steps) else [good]
        known = tags[cached_steps - 1] + 1 if cached_steps else 0
        lp = await self._logprobs(ids, p.top_k)
        return [judgement(self._top_k(lp, t + 1, ids), good, bad, f"step {i + 1}") for i, t in enumerate(tags)], \
            len(ids) - known

    def _top_k(self, lp: PromptLogprobs, position: int, ids: Sequence[int]) -> Mapping[int, float] | None:
        dist = lp.top[position]
        return None if dist is None else top_k_only(dist, ids[position], self.preset.top_k)


class ChatPRM(CachedPRM):
    """RLHFlow-style PRM: steps as user turns, ``+``/``-`` as the assistant's judgement."""

    def _messages(self, question: str, steps: Sequence[str], upto: int) -> list[dict[str, str]]:
        msgs: list[dict[str, str]] = []
        for i, step in enumerate(steps[:upto]):
            content = self.preset.first_turn.format(question=question, step=step) if i == 0 else step
            msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": self.preset.good}]
        return msgs

    async def _score(self, question: str, steps: Sequence[str], cached: Sequence[float]) -> tuple[list[float], int]:
        cached_steps = len(cached)
        backend = self.backend
        if not isinstance(backend, SupportsChatTemplate):
            raise VerifierError(f"chat PRMs need a backend that applies chat templates; {backend.name} does not")
        good, bad = await self.single_token(self.preset.good), await self.single_token(self.preset.bad)
        positions, ids = await self._tokenized(self._layout(backend, question, steps), question, steps)
        if any(pos >= len(ids) or ids[pos] != good for pos in positions):
            raise VerifierError("the chat template does not place the judgement token where expected: "
                                "its prompts are not prefixes of the whole conversation")
        lp = await self._logprobs(ids, self.preset.top_k)
        known = positions[cached_steps - 1] + 1 if cached_steps else 0
        return [judgement(lp.top[pos], good, bad, f"step {i + 1}", actual=ids[pos], top_k=self.preset.top_k)
                for i, pos in enumerate(positions)], len(ids) - known

    async def _layout(self, backend: SupportsChatTemplate, question: str,
                      steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Where each judgement is read, and the whole conversation's tokens."""
        positions = []
        for k in range(len(steps)):
            turns = self._messages(question, steps, k + 1)[:-1]
            positions.append(len(await backend.tokenize_chat(turns, add_generation_prompt=True)))
        ids = await backend.tokenize_chat(self._messages(question, steps, len(steps)), add_generation_prompt=False)
        return positions, ids


class PoolingPRM(CachedPRM):
    """Qwen2.5-Math-PRM-style: a reward head's positive-class probability at each step separator."""

    async def _score(self, question: str, steps: Sequence[str], cached: Sequence[float]) -> tuple[list[float], int]:
        cached_steps = len(cached)
        backend = self.backend
        if not isinstance(backend, SupportsPooling) or not isinstance(backend, SupportsChatTemplate):
            raise VerifierError(f"pooling PRMs need vLLM's pooling endpoint; {backend.name} does not offer it")
        p = self.preset
        # Steps are read at the separators: one inside a step would be read as another step.
        if p.tag in question:
            raise self._tag_inside(None)
        inside = next((n for n, step in enumerate(steps, start=1) if p.tag in step), None)
        if inside is not None:
            raise self._tag_inside(inside)
        sep = await self.single_token(p.tag)
        messages = [{"role": "user", "content": p.prefix.format(question=question)},
                    {"role": "assistant", "content": p.tag.join(steps) + p.tag}]
        if p.system:
            messages.insert(0, {"role": "system", "content": p.system})
        ids = await self._tokenized(backend.tokenize_chat(messages, add_generation_prompt=False), question, steps)
        where = [i for i, t in enumerate(ids) if t == sep]
        with self._readable(ids):
            rows = await backend.pool(ids)
        picked = rows if len(rows) == len(where) else [rows[i] for i in where] if len(rows) == len(ids) else None
        if picked is None or len(picked) != len(steps):
            raise VerifierError(f"pooling PRM returned {len(rows)} rows for {len(ids)} tokens and {len(steps)} steps")
        narrow = next((row for row in picked if len(row) <= p.positive_class), None)
        if narrow is not None:
            raise VerifierError(f"PRM preset {p.name!r} reads class {p.positive_class} of the reward head, which "
                                f"returned {len(narrow)} per token: set the preset's positive_class for this model")
        known = where[cached_steps - 1] + 1 if cached_steps else 0
        return [float(row[p.positive_class]) for row in picked], len(ids) - known


class LikelihoodPRM(CachedPRM):
    """A step's score is exp(the least logprob among its tokens) under a language model that knows the task.

    A model trained longer than the policy (or a larger one of its family) puts little probability on a wrong
    operand, operator or value, and one such token is enough to mark the step; averaging would dilute it over
    the step's well-predicted tokens. A step's own tokens are scored, not the separator after it, so its score
    depends only on the steps up to it and caches like every other family's.
    """

    preferred_aggregate: Aggregation = "min"
    """Each step is judged on its own, so a path is as good as its weakest step (tree searches read this)."""

    async def _score(self, question: str, steps: Sequence[str], cached: Sequence[float]) -> tuple[list[float], int]:
        cached_steps = len(cached)
        p = self.preset
        ids = await self.backend.tokenize(p.prefix.format(question=question), add_special_tokens=True)
        spans: list[tuple[int, int]] = []
        for n, step in enumerate(steps, start=1):
            if n > 1:
                ids += await self.backend.tokenize(p.separator)
            start = max(1, len(ids))  # nothing predicts the first token of the input
            ids += await self._tokenized(self.backend.tokenize(p.step_template.format(step=step, n=n)), question,
                                         steps[:n])
            spans.append((start, len(ids)))
        if not ids:
            raise VerifierError(f"{p.name}: the question and steps tokenized to nothing; check the preset's prefix")
        lp = await self._logprobs(ids, 0)
        known = spans[cached_steps - 1][1] if cached_steps else 0
        return [self._step_score(lp, a, b) for a, b in spans], len(ids) - known

    @staticmethod
    def _step_score(lp: PromptLogprobs, start: int, end: int) -> float:
        """An empty step carries no evidence either way: it keeps the score 1."""
        values = [lp.token_logprob(i) for i in range(start, end)]
        if any(v is None for v in values):
            raise VerifierError("the backend's prompt logprobs lack a prompt token's own logprob")
        return math.exp(min((v for v in values if v is not None), default=0.0))


class GenerativeJudge(CachedPRM):
    """For models without a PRM: ask the model whether each step is correct and read P(Yes) against P(No)."""

    call_per_step = True  # one prompt_logprobs request for each step not scored before

    TEMPLATE = ("Question: {question}\nSolution so far:\n{previous}\nNew step: {step}\n"
                "Is the new step correct? Answer Yes or No.\nAnswer:")

    async def _score(self, question: str, steps: Sequence[str], cached: Sequence[float]) -> tuple[list[float], int]:
        good, bad = await self.single_token(self.preset.good), await self.single_token(self.preset.bad)
        scores = list(cached)  # as found before the awaits above: re-read after them, an evicted one read as 0.0
        sent = asked = 0
        try:
            for k in range(len(cached), len(steps)):
                text = self.TEMPLATE.format(question=question, previous="\n".join(steps[:k]) or "(none)",
                                            step=steps[k])
                ids = await self._tokenized(self.backend.tokenize(text, add_special_tokens=True), question,
                                            steps[: k + 1]) + [good]
                lp = await self._logprobs(ids, self.preset.top_k)
                sent, asked = sent + len(ids), asked + 1
                scores.append(judgement(lp.top[-1], good, bad, f"step {k + 1}", actual=ids[-1],
                                        top_k=self.preset.top_k))
        except VerifierError as exc:
            if not asked:
                raise
            # The requests answered before this one were computed: spent, whether or not the solution is scored.
            raise PartlyScored(str(exc), StepScores(tuple(scores), sent, len(cached), asked)) from exc
        return scores, sent


FAMILIES: dict[str, type[CachedPRM]] = {"token": TokenPRM, "chat": ChatPRM, "pooling": PoolingPRM,
                                        "likelihood": LikelihoodPRM}


def load_prm(backend: Backend, preset: str | os.PathLike[str] | PRMPreset = "mini") -> CachedPRM:
    """A PRM of the preset's family on ``backend`` (the backend serving the PRM checkpoint); ``preset`` is a
    PRMPreset, or what ``get_preset`` looks up (a name or a preset file's path)."""
    if not isinstance(backend, Backend):  # else a PRM that failed at its first scoring with a raw AttributeError
        raise ConfigError(f"load_prm needs the Backend serving the PRM checkpoint (e.g. LocalBackend.from_pretrained("
                          f"mini_model_path('checker'))) as its first argument, got {type(backend).__name__}")
    chosen = preset if isinstance(preset, PRMPreset) else get_preset(preset)
    return FAMILIES[chosen.family](backend, chosen)


def judge(backend: Backend, *, yes: str = " Yes", no: str = " No", top_k: int = 20) -> GenerativeJudge:
    """A generative judge on the policy (or any instruction-following model)."""
    return GenerativeJudge(backend, PRMPreset(name="judge", family="chat", good=yes, bad=no, top_k=top_k))


__all__ = ["CachedPRM", "ChatPRM", "GenerativeJudge", "LikelihoodPRM", "PartlyScored", "PoolingPRM", "StepScoreCache",
           "StepScores", "SupportsChatTemplate", "SupportsPooling", "TokenPRM", "judge", "judgement", "load_prm",
           "spent_before", "top_k_only"]
