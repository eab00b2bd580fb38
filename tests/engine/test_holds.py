"""Holds on finished sequences: each request's own, whatever other requests hold the same tokens."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from ttc.engine.engine import Engine, GenerationRequest
from ttc.engine.loading import load_model
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
