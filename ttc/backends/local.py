"""The in-process backend: a Llama/Qwen2 checkpoint run by ttc's own engine, with no server.

Its point is tree-shaped decoding: the KV cache is a tree of blocks, so branches forked from one prompt share
its KV, a resubmitted prefix is found and reused, and attention reads each shared block once for all branches
(see ``ttc.engine``). Compute runs on a worker thread that batches every concurrent call, so the event loop
stays responsive and concurrent ``complete`` calls decode together.

Importing this module does not import torch; ``LocalBackend.from_pretrained`` does, so ``import ttc`` stays
fast for users of remote backends only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ttc.backends.base import MAX_THREADS, BackendStats, token_ids
from ttc.backends.base import token_ids as token_ids_of  # detokenize's parameter shadows the name
from ttc.errors import BackendError, ConfigError
from ttc.types import Completion, PromptLogprobs, Sampling, is_int

if TYPE_CHECKING:
    import torch

    from ttc.engine.engine import Engine
    from ttc.engine.scheduler import Scheduler


class LocalBackend:
    """``Backend`` implementation over the local engine. Build it with :meth:`from_pretrained`."""

    draws_distinct: ClassVar[bool] = True
    """The engine draws ``Sampling(distinct=True)`` continuations without replacement (``ttc.engine.distinct``)."""

    def __init__(self, engine: Engine, scheduler: Scheduler, *, name: str) -> None:
        self._engine = engine
        self._scheduler = scheduler
        self._name = name
        self._unk = _unknown_id(engine.tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch: int = 64,
        share_prefix: bool = True,
        cache_tokens: int | None = None,
        max_held: int = 1024,
        seed: int = 0,
        threads: int | None = None,
    ) -> LocalBackend:
        """Load the checkpoint folder at ``path`` (config.json, *.safetensors, tokenizer.json).

        ``device`` defaults to CUDA when present, else CPU; ``dtype`` to fp32 on CPU and bf16 on CUDA.
        ``max_batch`` caps branches decoded per step. ``share_prefix=False`` gives every branch a private copy
        of its prompt's KV and disables prefix reuse (the baseline for measuring sharing). Finished sequences stay
        live until ``release`` (a strategy usually extends them next), at most ``max_held`` of them and only while
        live KV stays within ``cache_tokens`` (oldest dropped first); unreferenced KV is kept for prefix reuse up to
        ``cache_tokens`` more (least recently used evicted first); it defaults to 1 GiB worth of KV. ``seed``
        drives requests that bring no seed of their own. ``threads`` sets the engine thread's CPU thread count
        (default: torch's); 1 is fastest for small models on busy machines.
        """
        if not is_int(max_batch) or max_batch < 1:
            raise ConfigError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if cache_tokens is not None and (not is_int(cache_tokens) or cache_tokens < 0):
            raise ConfigError(f"cache_tokens must be an int >= 0 or None, got {cache_tokens!r}")
        if not is_int(max_held) or max_held < 0:
            raise ConfigError(f"max_held must be an int >= 0, got {max_held!r}")
        if threads is not None and (not is_int(threads) or not 1 <= threads <= MAX_THREADS):
            raise ConfigError(f"threads must be an int in [1, {MAX_THREADS}] or None, got {threads!r}")
        from ttc.engine.engine import Engine
        from ttc.engine.loading import load_model
        from ttc.engine.scheduler import Scheduler

        loaded = load_model(path, device=device, dtype=dtype)
        engine = Engine(loaded, share_prefix=share_prefix, cache_tokens=cache_tokens, max_held=max_held, seed=seed)
        scheduler = Scheduler(engine, max_batch=max_batch, threads=threads)
        return cls(engine, scheduler, name=f"local:{loaded.folder}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def eos_token_id(self) -> int | None:
        eos = self._engine.config.eos_token_ids
        return eos[0] if eos else None

    @property
    def max_model_len(self) -> int:
        """The positions the model's context holds, named as the vLLM backend names its server's."""
        return self._engine.config.max_positions

    @property
    def engine(self) -> Engine:
        """The engine itself, for inspection (KV tree, config); drive it only through this backend."""
        return self._engine

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. A character the vocabulary has no token for is a ConfigError, not an unknown
        token: the model would read something else than was asked (a small character vocabulary such as the
        mini models' has 64 tokens; byte-level vocabularies have no unknown token at all)."""
        if not isinstance(text, str):
            raise ConfigError(f"tokenize takes text (a str), got {type(text).__name__}")
        encoding = self._engine.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if self._unk is not None and self._unk in encoding.ids:
            unknown = sorted({text[start:end] for token, (start, end) in zip(encoding.ids, encoding.offsets,
                                                                             strict=True) if token == self._unk})
            raise ConfigError(f"{self.name} has no token for {', '.join(map(repr, unknown))} in {_short(text)!r}: "
                              "write the text (a prompt template's own words too) with the characters its "
                              "vocabulary holds, or use a model that reads them (TTC_MODEL, TTC_VLLM_URL)")
        return list(encoding.ids)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        ids = token_ids_of(token_ids)
        self._engine.check_vocabulary(ids)
        return str(self._engine.tokenizer.decode(list(ids), skip_special_tokens=True))

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        from ttc.engine.engine import GenerationRequest

        if not is_int(n) or n < 1:
            raise ConfigError(f"n must be a positive int, got {n!r}")
        if not isinstance(sampling, Sampling):
            raise ConfigError(f"sampling must be a ttc.types.Sampling, got {type(sampling).__name__}")
        tokens = token_ids(prompt)
        self._engine.validate_prompt(tokens)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def orphaned(result: object) -> None:
            """Completions that came back to a caller who is gone hold KV that nobody else can release."""
            if isinstance(result, list):
                held = [(*tokens, *c.token_ids) for c in result if isinstance(c, Completion)]
                with contextlib.suppress(BackendError):  # a closed engine holds nothing any more
                    self._scheduler.call(lambda engine: [engine.release(ids) for ids in held], lambda _: None)

        request = GenerationRequest(tokens, n, sampling, reply=_settle(loop, future, orphaned))
        self._scheduler.submit(request)
        try:
            return cast(list[Completion], await future)
        except asyncio.CancelledError:
            request.cancelled = True
            if future.done() and not future.cancelled() and future.exception() is None:
                orphaned(future.result())  # delivered, then cancelled before the caller read it
            raise

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        if not is_int(top_k) or top_k < 0:
            raise ConfigError(f"top_k must be an int >= 0, got {top_k!r}")
        tokens = token_ids(prompt)
        self._engine.validate_prompt(tokens, generate=False)
        from ttc.engine.engine import ScoreRequest

        # A request of its own, not a call: the scheduler scores requests that arrive together in one batch.
        scored = await self._send(lambda reply: self._scheduler.submit(ScoreRequest(tokens, top_k, reply)))
        return cast(PromptLogprobs, scored)

    async def embed(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Hidden-state embeddings of whole token sequences (see ``Engine.embed``); ETS's ``auto`` embedder."""
        if isinstance(sequences, str | bytes) or not isinstance(sequences, Sequence):
            raise ConfigError(f"embed takes a list of token id sequences, got {type(sequences).__name__}")
        batch = [token_ids(sequence) for sequence in sequences]
        for tokens in batch:
            self._engine.validate_prompt(tokens, generate=False)
        return cast(list[list[float]], await self._call(lambda engine: engine.embed(batch)))

    async def release(self, prompt: Sequence[int]) -> None:
        tokens = token_ids(prompt)
        await self._call(lambda engine: engine.release(tokens))

    def stats(self) -> BackendStats:
        return self._engine.stats()

    def close(self) -> None:
        """Stop the engine's worker, blocking until it exits (at once when it never started)."""
        self._scheduler.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> LocalBackend:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, run: Callable[[Engine], object]) -> object:
        return await self._send(lambda reply: self._scheduler.call(run, reply))

    async def _send(self, submit: Callable[[Callable[[object], None]], None]) -> object:
        """Submit work to the engine thread with a reply callback, and await the reply on this event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        submit(_settle(loop, future))
        return await future


def _unknown_id(tokenizer: Any) -> int | None:
    """The id a character outside the vocabulary encodes to, if any: BPE and WordPiece models name their unknown
    token, a Unigram model only keeps its id in the tokenizer's JSON."""
    unk = getattr(tokenizer.model, "unk_token", None)
    if isinstance(unk, str):
        found = tokenizer.token_to_id(unk)
        return found if is_int(found) else None
    from tokenizers.models import Unigram  # the local extra's, as the engine that loaded this tokenizer is

    if not isinstance(tokenizer.model, Unigram):  # the JSON of a large BPE vocabulary takes a while to write
        return None
    model = json.loads(tokenizer.to_str()).get("model")
    unk_id = model.get("unk_id") if isinstance(model, dict) else None
    return unk_id if is_int(unk_id) else None


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
            orphaned: Callable[[object], None] | None = None) -> Callable[[object], None]:
    """A reply callback for the engine thread that resolves ``future`` on its own event loop; a result that
    arrives after the caller was cancelled, or after its event loop closed, goes to ``orphaned``."""

    def resolve(result: object) -> None:
        if future.done():
            if orphaned is not None and not isinstance(result, BaseException):
                orphaned(result)
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def reply(result: object) -> None:
        try:
            loop.call_soon_threadsafe(resolve, result)
        except RuntimeError:  # the caller's loop has closed: nobody will read the result, nor release its holds
            if orphaned is not None and not isinstance(result, BaseException):
                orphaned(result)

    return reply


__all__ = ["LocalBackend"]
