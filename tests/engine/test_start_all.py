"""Starting many requests at once: prompts a search holds share one forward, and decode as if started alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ttc.engine.engine import Engine, GenerationRequest
from ttc.engine.loading import load_model
from ttc.types import Completion, Sampling

CountForwards = Callable[[Engine], list[tuple[int, ...]]]


def _engine(path: Path) -> Engine:
    return Engine(load_model(path, device="cpu", dtype=torch.float32), seed=0)


def _run(engine: Engine, prompts: list[tuple[int, ...]], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
    """Start ``prompts`` together and decode them to the end, on this thread (no scheduler)."""
    results: dict[int, Any] = {}
    requests = [GenerationRequest(prompt, n, sampling, reply=lambda result, i=i: results.__setitem__(i, result))
                for i, prompt in enumerate(prompts)]
    engine.start_all(requests, lambda request, error: results.__setitem__(requests.index(request), error))
    while engine.active_branches:
        engine.step()
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert not errors, errors
    return [results[i] for i in range(len(prompts))]


def test_held_prompts_start_in_one_forward_and_decode_as_if_alone(
    checkpoint: Path, count_forwards: CountForwards,
) -> None:
    engine = _engine(checkpoint)
    prompt = (1, 5, 9, 13, 17, 21)
    [branches] = _run(engine, [prompt], Sampling(max_tokens=6, temperature=1.0, seed=3), n=4)
    nodes = list(dict.fromkeys(prompt + c.token_ids for c in branches))  # held: all but each last token cached
    assert len(nodes) > 1
    cold = (2, 4, 6, 8, 10, 12, 14)
    greedy = Sampling(max_tokens=5, temperature=0.0)
    forwards = count_forwards(engine)
    together = _run(engine, [*nodes, nodes[0], cold], greedy)
    # The cold prompt is prefilled first, on its own; then the distinct held prompts run their last tokens.
    assert forwards[:2] == [(1, len(cold)), (len(nodes), 1)]
    engine.tree.check()
    for prompt_ids, [completion] in zip([*nodes, nodes[0], cold], together, strict=True):
        [[alone]] = _run(_engine(checkpoint), [prompt_ids], greedy)  # a fresh engine prefills the whole prompt
        assert completion.token_ids == alone.token_ids
        assert completion.prompt_tokens == len(prompt_ids)
    assert [c.cached_prompt_tokens for [c] in together] == [len(n) - 1 for n in nodes] + [len(nodes[0]) - 1, 0]


def test_a_branch_done_at_once_does_not_evict_a_prompt_started_with_it(checkpoint: Path) -> None:
    """A one-token request drops its hold while the batch starts, which trims the cache: with no room for cache
    (or for holds), the next request's freshly prefilled prompt must still be there when its branch forks."""
    first, second = (1, 5, 9, 13, 17, 21), (2, 4, 6, 8, 10, 12, 14)
    greedy = Sampling(max_tokens=8, temperature=0.0)
    [[alone]] = _run(_engine(checkpoint), [second], greedy)
    for settings in ({"cache_tokens": 0}, {"share_prefix": False, "max_held": 0}):
        engine = Engine(load_model(checkpoint, device="cpu", dtype=torch.float32), seed=0, **settings)
        requests = [GenerationRequest(first, 2, Sampling(max_tokens=1, temperature=0.0), reply=lambda _: None)]
        out: list[list[Completion]] = []
        requests.append(GenerationRequest(second, 1, greedy, reply=out.append))
        errors: list[Exception] = []
        engine.start_all(requests, lambda _, error: errors.append(error))  # noqa: B023 (called before the loop goes on)
        assert not errors
        while engine.active_branches:
            engine.step()
        [[completion]] = out
        assert completion.token_ids == alone.token_ids, settings
        engine.tree.check()


def test_a_fork_that_fails_after_its_first_branch_leaves_nothing_held(checkpoint: Path, monkeypatch: Any) -> None:
    """A request fails whole when one of its branches cannot be set up: no open block may stay held."""
    import ttc.engine.engine as engine_module

    made: list[int] = []
    real = engine_module.IncrementalDetokenizer

    def failing(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        if len(made) == 2:
            raise RuntimeError("detokenizer refused")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "IncrementalDetokenizer", failing)
    engine = _engine(checkpoint)
    errors: list[Exception] = []
    request = GenerationRequest((1, 5, 9, 13), 3, Sampling(max_tokens=4, temperature=1.0, seed=1),
                                reply=lambda result: None)
    engine.start_all([request], lambda _, error: errors.append(error))
    assert [str(e) for e in errors] == ["detokenizer refused"]
    engine.tree.check()
    assert engine.tree.live_tokens == 0 and engine.active_branches == 0
    assert not any(block.open for block in engine.tree.blocks.values())


def test_a_request_whose_first_sample_fails_leaves_nothing_held(checkpoint: Path, monkeypatch: Any) -> None:
    """Sampling the first tokens can fail after every branch has forked (both ways of drawing them): the
    request fails whole and gives its prompt's KV back, or it stays held for the engine's life."""
    import ttc.engine.engine as engine_module

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sampler refused")

    monkeypatch.setattr(engine_module, "sample", refuse)
    monkeypatch.setattr(engine_module, "select", refuse)
    engine = _engine(checkpoint)
    for distinct in (False, True):
        errors: list[Exception] = []
        request = GenerationRequest((1, 5, 9, 13), 3, Sampling(max_tokens=4, temperature=1.0, seed=1,
                                                                distinct=distinct), reply=lambda result: None)
        engine.start_all([request], lambda _, error: errors.append(error))  # noqa: B023 (called at once)
        assert [str(e) for e in errors] == ["sampler refused"], distinct
        engine.tree.clear_cache()
        engine.tree.check()
        assert engine.tree.live_tokens == 0 and engine.active_branches == 0, distinct
        assert engine.counters.calls == 0
