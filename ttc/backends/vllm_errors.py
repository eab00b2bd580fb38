"""Turning vLLM's HTTP failures into ``BackendError`` messages that say what to do.

Which failures are retryable follows HTTP semantics: 429, 500 and 502-504 are the server's transient state; any
other 4xx is a problem with the request itself, and 501 (what vLLM answers a request its model cannot serve) a
problem with the server, which a retry would only repeat.
"""

from __future__ import annotations

import json
import re

import httpx

from ttc.errors import BackendError, ContextLengthError

_MAX_BODY_CHARS = 500
_MAX_TEXT_CHARS = 200
"""A body that is not vLLM's JSON (a proxy's or another server's page) is shown as one line of at most this."""


def server_message(response: httpx.Response) -> str:
    """The human-readable message in a vLLM error body (either of its JSON shapes), else the body on one line.

    Errors are printed on one line: another server's HTML page came through whole, over a dozen lines of markup,
    where what to say is that the URL does not lead to vLLM."""
    text = response.text
    if is_html(response):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        named = f" ({_one_line(title.group(1), 80)!r})" if title and title.group(1).strip() else ""
        return f"an HTML page{named}"
    try:
        body = json.loads(text)
    except ValueError:
        return _one_line(text, _MAX_TEXT_CHARS) or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_BODY_CHARS]
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:_MAX_BODY_CHARS]
    return _one_line(text, _MAX_BODY_CHARS)


def is_html(response: httpx.Response) -> bool:
    """Whether the body is a web page: vLLM answers every error in JSON, so the URL leads to something else."""
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return media in ("text/html", "application/xhtml+xml") or \
        response.text.lstrip()[:15].lower().startswith(("<!doctype html", "<html"))


def not_vllm(page: str) -> str:
    """What to say of a web page where vLLM's JSON was due (a 404 or a success): the URL leads to another server."""
    return f"{page}, not vLLM's JSON API: check that the URL is a vLLM server's base URL (e.g. http://127.0.0.1:8000)"


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _is_json(response: httpx.Response) -> bool:
    try:
        json.loads(response.text)
    except ValueError:
        return False
    return True


_TRANSIENT = frozenset({429, 500, 502, 503, 504})


def is_retryable_status(status: int) -> bool:
    """Overload and server failures that may pass; 501 (vLLM's answer to NotImplementedError) and 505 never do."""
    return status in _TRANSIENT


def error_from_response(response: httpx.Response, *, kind: str, url: str) -> BackendError:
    """A ``BackendError`` for a non-2xx response, with a hint matching the status."""
    status = response.status_code
    message = server_message(response)
    retryable = is_retryable_status(status)
    if is_html(response) and status == 404:
        # Another server's "not found" page: the URL is what to check. A proxy's page for another status (a 502
        # while vLLM restarts behind it, a 401 from its login) keeps that status's hint below.
        return BackendError(f"the server answered HTTP 404 with {not_vllm(message)}", url=url, kind=kind,
                            retryable=retryable)
    if status in (401, 403):
        hint = "the server rejected the API key; pass api_key= or set TTC_VLLM_API_KEY to the server's --api-key"
    elif status == 404:
        hint = ("not found: check the URL (it should be the server root, e.g. http://host:8000) and that the model "
                "name is one listed by GET /v1/models")
    elif status == 429:
        hint = "the server is overloaded; lower max_concurrency or add replicas"
    elif status == 501:
        hint = "the server or its model does not support this request (e.g. scoring needs a pooling model)"
    elif status >= 500:
        hint = "the server failed; see its log"
    elif 300 <= status < 400:
        hint = (f"the URL redirects to {response.headers.get('location', 'another address')}: pass the server root "
                "it redirects to")
    elif "maximum context length" in message:
        hint = "shorten the prompt or lower Sampling.max_tokens"
    else:
        hint = "the request was invalid for this server"
    error = ContextLengthError if "maximum context length" in message else BackendError
    sender = "vLLM" if _is_json(response) else "the server"  # vLLM's errors are JSON; a proxy's may not be
    return error(f"{sender} answered HTTP {status}: {message} ({hint})", url=url, kind=kind, retryable=retryable)


def context_length_error(*, prompt_tokens: int, max_tokens: int, max_model_len: int, kind: str,
                         url: str) -> ContextLengthError:
    """The request cannot fit the server's context window; said before sending it."""
    return ContextLengthError(
        f"request does not fit the model's context: prompt of {prompt_tokens} tokens + max_tokens {max_tokens} "
        f"= {prompt_tokens + max_tokens} tokens, over the server's max_model_len of {max_model_len}; shorten the "
        "prompt, lower Sampling.max_tokens, or serve the model with a larger --max-model-len",
        url=url, kind=kind, retryable=False,
    )


def connection_error(exc: Exception, *, kind: str, url: str, attempts: int, reached: bool = False,
                     replicas: int = 1) -> BackendError:
    """The last attempt's failure: the server was not there (``reached`` false), or it was and the connection broke
    mid-exchange (it closed, crashed or restarted while answering), which asks for another remedy."""
    if reached:
        return BackendError(
            f"the vLLM server broke the connection mid-reply, {attempts} attempt(s): {type(exc).__name__}: "
            f"{exc or 'no detail'} (did it crash or restart? its log says why)",
            url=url, kind=kind, retryable=True,
        )
    which = "the vLLM server" if replicas == 1 else f"any of the {replicas} vLLM replicas (the last tried below)"
    return BackendError(
        f"could not reach {which} after {attempts} attempt(s): {type(exc).__name__}: {exc or 'no detail'} "
        "(is it running, and is the URL right?)",
        url=url, kind=kind, retryable=True,
    )


def timeout_error(exc: Exception, *, kind: str, url: str, timeout: float) -> BackendError:
    return BackendError(
        f"no answer from the vLLM server within {timeout:g}s ({type(exc).__name__}); the server may be overloaded: "
        "raise timeout= (or the TTC_VLLM_TIMEOUT environment variable) or lower max_concurrency / max_tokens",
        url=url, kind=kind, retryable=True,
    )


def protocol_error(detail: str, *, kind: str, url: str) -> BackendError:
    return BackendError(f"unexpected answer from the vLLM server: {detail}", url=url, kind=kind, retryable=False)


__all__ = [
    "connection_error",
    "context_length_error",
    "error_from_response",
    "is_html",
    "is_retryable_status",
    "not_vllm",
    "protocol_error",
    "server_message",
    "timeout_error",
]
