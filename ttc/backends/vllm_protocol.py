"""The JSON ttc exchanges with vLLM's OpenAI-compatible server: request bodies out, typed values back.

Kept apart from the transport so the shapes can be checked without a server and so the client's own cost per
request (building and parsing these) can be measured on its own.

Prompts go out as token ids and completions come back with ``return_token_ids``, so no text is ever re-tokenized:
the ids a strategy sends are the ids the server's prefix cache sees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ttc.backends.vllm_errors import protocol_error
from ttc.types import Completion, FinishReason, PromptLogprobs, Sampling, is_int

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


@dataclass(frozen=True)
class ServerInfo:
    """What ``/v1/models`` says about the served model."""

    model: str
    max_model_len: int | None


@dataclass(frozen=True)
class CallUsage:
    """Token counts of one request as the server reported them (prompt counted once, whatever ``n``)."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int


def completion_payload(model: str, prompt: Sequence[int], n: int, sampling: Sampling) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "prompt": list(prompt),
        "n": n,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "return_token_ids": True,
        "include_stop_str_in_output": True,
    }
    if sampling.stop:
        payload["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        payload["seed"] = sampling.seed
    if sampling.logprobs:
        payload["logprobs"] = 0  # the sampled token's own logprob, no alternatives
    return payload


def prompt_logprobs_payload(model: str, prompt: Sequence[int], top_k: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": list(prompt),
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": top_k,
        "return_token_ids": True,
    }


def parse_models(body: Any, wanted: str | None, *, url: str) -> ServerInfo:
    """The served model named ``wanted`` (or the only/first one) and its context length."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise protocol_error("GET /v1/models listed no model", kind="models", url=url)
    cards = [card for card in data if isinstance(card, dict) and isinstance(card.get("id"), str)]
    names = [str(card["id"]) for card in cards]
    if wanted is None:
        card = cards[0] if cards else None
    else:
        card = next((c for c in cards if c["id"] == wanted), None)
        if card is None:
            raise protocol_error(f"model {wanted!r} is not served here; the server lists {names}. Pass one of "
                                 "those as model= (or TTC_VLLM_MODEL)", kind="models", url=url)
    if card is None:
        raise protocol_error("GET /v1/models returned no usable model card", kind="models", url=url)
    limit = card.get("max_model_len")
    usable = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
    return ServerInfo(model=str(card["id"]), max_model_len=limit if usable else None)


def parse_usage(body: Mapping[str, Any]) -> CallUsage:
    """Usage of one response; ``cached_tokens`` is 0 when the server runs without --enable-prompt-tokens-details."""
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    counts = CallUsage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_prompt_tokens=int(details.get("cached_tokens") or 0),
    )
    if min(counts.prompt_tokens, counts.completion_tokens, counts.cached_prompt_tokens) < 0:
        raise ValueError(f"negative token counts in usage: {usage}")
    return counts


def _choices(body: Any, *, kind: str, url: str) -> list[dict[str, Any]]:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices:
        raise protocol_error("the response holds no choices", kind=kind, url=url)
    return sorted((c for c in choices if isinstance(c, dict)), key=lambda c: int(c.get("index", 0)))


def _is_token_id(value: object) -> bool:
    return is_int(value) and value >= 0


def int_token_ids(values: object) -> tuple[int, ...] | None:
    """Token ids as the server must send them: a list of ints >= 0 (a float, a string, a bool or a negative number
    is not one, and would index the vocabulary from its end)."""
    if not isinstance(values, list) or not all(_is_token_id(v) for v in values):
        return None
    return tuple(values)


# A log-probability is at most 0; vLLM's float32 arithmetic may round one just above it.
_LOGPROB_SLACK = 1e-6


def _logprob(value: Any, *, kind: str, url: str) -> float:
    """One log-probability as the server sent it. NaN or a value above 0 is no probability at all: taken as data it
    would rank a path above every real one (or poison every comparison), so it is refused."""
    number = -math.inf if value is None else float(value)
    if math.isnan(number) or number > _LOGPROB_SLACK:
        raise protocol_error(f"a logprob of {value!r} is no log-probability (NaN or above 0)", kind=kind, url=url)
    return number


def parse_completions(body: Any, *, n: int, want_logprobs: bool, url: str, max_tokens: int | None = None,
                      kind: str = "complete") -> tuple[list[Completion], CallUsage]:
    """``n`` completions in index order (indices 0 to n-1, once each), each with its text and token ids (and
    logprobs when asked for), none longer than ``max_tokens``: more would spend past the caller's budget."""
    choices = _choices(body, kind=kind, url=url)
    if len(choices) != n:
        raise protocol_error(f"asked for n={n} completions, got {len(choices)}", kind=kind, url=url)
    if [c.get("index", 0) for c in choices] != list(range(n)):
        raise protocol_error(f"the choices' indices are {[c.get('index') for c in choices]}, not 0 to {n - 1}",
                             kind=kind, url=url)
    usage = parse_usage(body)
    out = [_completion(choice, usage, want_logprobs, kind=kind, url=url) for choice in choices]
    longest = max(len(c.token_ids) for c in out)
    if max_tokens is not None and longest > max_tokens:
        raise protocol_error(f"a completion holds {longest} tokens, over the max_tokens={max_tokens} asked for",
                             kind=kind, url=url)
    return out, usage


def _completion(choice: Mapping[str, Any], usage: CallUsage, want_logprobs: bool, *, kind: str,
                url: str) -> Completion:
    if "token_ids" not in choice:
        raise protocol_error("a choice has no token_ids; ttc needs vLLM >= 0.10.2, whose completions API accepts "
                             "return_token_ids", kind=kind, url=url)
    token_ids = int_token_ids(choice.get("token_ids"))
    if token_ids is None:
        raise protocol_error(f"a choice's token_ids are not a list of ints >= 0: {str(choice.get('token_ids'))[:80]}",
                             kind=kind, url=url)
    text = choice.get("text")
    if not isinstance(text, str):
        raise protocol_error("a choice has no text", kind=kind, url=url)
    logprobs: tuple[float, ...] | None = None
    if want_logprobs:
        block = choice.get("logprobs") or {}
        values = block.get("token_logprobs")
        if not isinstance(values, list) or len(values) != len(token_ids):
            raise protocol_error("logprobs were requested but the choice has none per token", kind=kind, url=url)
        logprobs = tuple(_logprob(v, kind=kind, url=url) for v in values)
    return Completion(
        text=text,
        token_ids=token_ids,
        finish_reason=_FINISH.get(str(choice.get("finish_reason")), "abort"),
        logprobs=logprobs,
        prompt_tokens=usage.prompt_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


def _row_token(key: str, *, kind: str, url: str) -> int:
    """A prompt-logprob row's key: a token id written as a JSON object key."""
    token = int(key)
    if token < 0:
        raise protocol_error(f"a prompt logprob row names token id {key!r}, below 0", kind=kind, url=url)
    return token


def parse_prompt_logprobs(body: Any, prompt: Sequence[int], *, url: str,
                          kind: str = "prompt_logprobs") -> tuple[PromptLogprobs, CallUsage]:
    """Per-position distributions over the prompt; position 0 has none (nothing predicts it)."""
    choice = _choices(body, kind=kind, url=url)[0]
    rows = choice.get("prompt_logprobs")
    if not isinstance(rows, list) or len(rows) != len(prompt):
        got = len(rows) if isinstance(rows, list) else "none"
        raise protocol_error(f"expected {len(prompt)} prompt logprob rows, got {got}", kind=kind, url=url)
    top: list[Mapping[int, float] | None] = []
    for row in rows:
        if row is None:
            top.append(None)
            continue
        top.append({_row_token(token, kind=kind, url=url): _logprob(entry["logprob"], kind=kind, url=url)
                    for token, entry in row.items()})
    return PromptLogprobs(token_ids=tuple(prompt), top=tuple(top)), parse_usage(body)


__all__ = [
    "CallUsage",
    "ServerInfo",
    "completion_payload",
    "int_token_ids",
    "parse_completions",
    "parse_models",
    "parse_prompt_logprobs",
    "parse_usage",
    "prompt_logprobs_payload",
]
