"""Holds on finished sequences: each request's own, whatever other requests hold the same tokens."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

from ttc.engine.engine import Engine, GenerationRequest
from ttc.engine.loading import LoadedModel, load_model
from ttc.types import Completion, Sampling

PROMPT = (3, 4, 5, 6)


def test_cancelling_a_request_leaves_another_requests_hold_on_the_same_sequence(llama_path: Path) -> None:
    """Two branches that ended on their first token both hold the prompt's own block. With room for one hold, the
    cap drops the first request's; cancelling that request then took away the second request's hold instead, so
    its caller's release found nothing and its KV could be evicted."""
    loaded = load_model(llama_path, device="cpu", dtype=torch.float32)
    stops = tuple(string.ascii_letters[:26] + string.digits)  # a stop on about half of what the model writes
    replies: list[list[Completion] | BaseException] = []
    for seed in range(200):  # a draw where one of two branches stops at once and the other goes on
        engine = Engine(loaded, max_held=1, seed=0)
        sampling = Sampling(max_tokens=20, temperature=1.0, seed=seed, stop=stops)
        first = GenerationRequest(PROMPT, 2, sampling, reply=replies.append)
        engine.start(first)
        branches = engine._running[0].branches if engine._running else []
        if len(branches) == 2 and branches[0].finish is not None and branches[1].finish is None:
            break
    else:
        raise AssertionError("no seed in 200 stops one branch on its first token and not the other")
    stopped = PROMPT + tuple(branches[0].generated)
    engine.start(GenerationRequest(PROMPT, 1, sampling, reply=replies.append))  # the same first token: it stops
    [[second]] = [r for r in replies if isinstance(r, list)]
    assert tuple(second.token_ids) == stopped[len(PROMPT):] and len(engine.holds[stopped]) == 1  # the cap: one
    first.cancelled = True
    engine.step()
    assert engine.release(stopped)  # the second request's hold, which the cap left and the cancel must leave
    engine.tree.check()
    assert engine.tree.match(PROMPT)[0].refs == 0


def _one_branch_stopped_at_once(loaded: LoadedModel, replies: list[list[Completion] | BaseException]) -> tuple[
        Engine, GenerationRequest, Sampling, tuple[int, ...]]:
    """An engine running a two-branch request whose first branch stopped on its first token and whose second goes
    on; the sampling it ran with and the first branch's whole sequence."""
    stops = tuple(string.ascii_letters[:26] + string.digits)  # a stop on about half of what the model writes
    for seed in range(200):
        replies.clear()  # a draw whose branches both stopped at once was answered
        engine = Engine(loaded, seed=0)
        sampling = Sampling(max_tokens=20, temperature=1.0, seed=seed, stop=stops)
        running = GenerationRequest(PROMPT, 2, sampling, reply=replies.append)
        engine.start(running)
        branches = engine._running[0].branches if engine._running else []
        if len(branches) == 2 and branches[0].finish is not None and branches[1].finish is None:
            return engine, running, sampling, PROMPT + tuple(branches[0].generated)
    raise AssertionError("no seed in 200 stops one branch on its first token and not the other")


def test_a_release_takes_a_delivered_completions_hold_not_one_of_a_request_still_running(llama_path: Path) -> None:
    """A release dropped the oldest hold on its tokens: there, a finished branch of a request still decoding its
    other branch. Once that request was cancelled (or a distinct draw dropped the branch), the released
    completion's own hold stayed for good, and its KV with it."""
    loaded = load_model(llama_path, device="cpu", dtype=torch.float32)
    replies: list[list[Completion] | BaseException] = []
    engine, running, sampling, stopped = _one_branch_stopped_at_once(loaded, replies)
    engine.start(GenerationRequest(PROMPT, 1, sampling, reply=replies.append))  # the same first token: it stops
    [[delivered]] = replies
    assert PROMPT + tuple(delivered.token_ids) == stopped and len(engine.holds[stopped]) == 2
    assert engine.release(stopped)  # its caller releases what it got, once
    running.cancelled = True
    engine.step()
    engine.tree.check()
    assert (engine._held_count, engine.holds, engine.tree.live_tokens) == (0, {}, 0)


def test_a_request_cancelled_before_its_reply_keeps_no_hold(llama_path: Path) -> None:
    """Cancelled while its prompt was prefilled, it finished at once and was answered anyway: a reply to a caller
    who is gone (its event loop perhaps closed), whose holds nobody would ever release."""
    loaded = load_model(llama_path, device="cpu", dtype=torch.float32)
    engine = Engine(loaded, seed=0)
    replies: list[object] = []
    request = GenerationRequest(PROMPT, 3, Sampling(max_tokens=1, temperature=1.0, seed=0), reply=replies.append)
    forward = engine.model.hidden_states

    def cancelled_meanwhile(*args: Any) -> torch.Tensor:
        request.cancelled = True  # the caller's loop cancels it while the engine thread computes
        return forward(*args)

    engine.model.hidden_states = cancelled_meanwhile  # type: ignore[method-assign]
    engine.start(request)
    engine.tree.check()
    assert replies == []
    assert (engine._held_count, engine.holds, engine.tree.live_tokens, engine._running) == (0, {}, 0, [])
