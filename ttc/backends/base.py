"""The contract between strategies and the engines that run models.

Prompts travel as token ids, never text: a child node's prompt is its parent's exact ids plus new ones, so a
prefix is never re-tokenized differently, vLLM's prefix cache hits, and the local engine's radix lookup finds
the shared KV blocks. Strategies never see a KV cache; ``release`` is their only hint about one.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ttc.errors import ConfigError
from ttc.types import Completion, PromptLogprobs, Sampling

MAX_THREADS = 1024
"""The most CPU threads a local engine is given: a larger count only makes its OpenMP pool start (or fail to
start) threads that wait for each other, and one beyond 2**31 kills the engine's worker outright."""

@dataclass(frozen=True)
class BackendStats:
    """Cumulative counters since the backend was created; strategies diff two snapshots to get a run's share.

    ``peak_kv_tokens`` / ``live_kv_tokens`` are exact for the local engine; remote backends report 0 (the
    strategy estimates live KV from its tree's unique tokens instead). ``kv_token_steps`` sums the live KV tokens
    of every decode step (``decode_steps``), so over an interval their ratio is the mean KV held per step: the
    "average KV cache size during the search" that ETS is measured by, where the peak says only how large the
    tree grew once. ``prefix_cache_hit_rate`` is the server's own figure where it publishes one.
    """

    calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    scored_tokens: int = 0
    live_kv_tokens: int = 0
    peak_kv_tokens: int = 0
    decode_steps: int = 0
    kv_token_steps: int = 0
    kv_bytes_per_token: int = 0
    prefix_cache_hit_rate: float | None = None


@runtime_checkable
class Backend(Protocol):
    """An engine that can extend token sequences and score them. One implementation per engine."""

    @property
    def name(self) -> str:
        """A short label for traces, e.g. ``local:/path/to/model`` or ``vllm:http://host:8000``."""
        ...

    @property
    def eos_token_id(self) -> int | None: ...

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_special_tokens=True`` is for the start of a prompt (BOS where the model
        expects one); pieces appended to an existing prompt are tokenized without."""
        ...

    async def detokenize(self, token_ids: Sequence[int]) -> str: ...

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        """``n`` independent continuations of ``prompt``.

        With ``sampling.seed`` set, the same call returns the same completions. Generation stops at EOS, at
        ``max_tokens``, or right after a stop string (which is kept in the text and the token ids).
        """
        ...

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        """Log-probabilities of every prompt token, plus the ``top_k`` most likely tokens at each position."""
        ...

    async def release(self, prompt: Sequence[int]) -> None:
        """Hint that no future request will extend ``prompt``: its private KV may be freed now."""
        ...

    def stats(self) -> BackendStats: ...

    async def aclose(self) -> None: ...


def context_window(backend: object) -> int | None:
    """The positions ``backend``'s model holds, where it says (``max_model_len``: the local engine's, a vLLM
    server's once connected); None otherwise. Read by name, as the Backend protocol leaves it out: a backend may
    not know it (a test double, a server not yet asked), and a draft's or synthesizer's may differ from the target's."""
    window = getattr(backend, "max_model_len", None)
    return window if isinstance(window, int) else None


def draws_distinct(backend: object) -> bool | None:
    """Whether ``backend`` can draw continuations without replacement (``Sampling(distinct=True)``), where it says
    (a ``draws_distinct`` attribute); None where it does not, and its ``complete`` decides. Read by name, as
    ``max_model_len`` is, so a backend written before the attribute existed keeps working: strategies refuse
    ``distinct`` up front only on a backend that says it cannot, before any question's trace opens."""
    value = getattr(backend, "draws_distinct", None)
    return value if isinstance(value, bool) else None


def token_ids(prompt: object) -> tuple[int, ...]:
    """The engine's form of a prompt; text or other values are a ConfigError saying how to get token ids."""
    if isinstance(prompt, str | bytes):
        raise ConfigError("a prompt must be token ids, not text: `await backend.tokenize(text)` gives them")
    if not isinstance(prompt, Iterable):
        raise ConfigError(f"a prompt must be a sequence of token ids, got {type(prompt).__name__}")
    ids = tuple(prompt)
    bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)), None)
    if bad is not None:
        raise ConfigError(f"token id {bad!r} is not an int: a prompt must be token ids from `backend.tokenize`")
    return tuple(int(t) for t in ids)


async def unreadable_characters(backend: Backend, text: str) -> list[str]:
    """The characters of ``text`` that ``backend`` has no token for, each asked alone (only once ``text`` fails):
    what an error about text a model cannot read names, where the backend's own error names the whole text."""
    try:
        await backend.tokenize(text)
        return []
    except ConfigError:
        pass
    missing = []
    for char in dict.fromkeys(text):
        try:
            await backend.tokenize(char)
        except ConfigError:
            missing.append(char)
    return missing


__all__ = ["MAX_THREADS", "Backend", "BackendStats", "context_window", "draws_distinct", "token_ids",
           "unreadable_characters"]
