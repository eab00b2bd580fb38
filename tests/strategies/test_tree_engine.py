"""The tree searches on the real local engine (a tiny random checkpoint): KV holds all released, peak from the engine.

The model never emits EOS and emits a newline about once in a hundred tokens, so with steps capped at 96 tokens
enough steps end at the delimiter for every tree to branch and deepen: real prefixes, real holds, real batching.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tree_doubles import HashPRM, round_events, run_search

from ttc.types import Budget

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SEARCHES = {
    "beam": {"beam_width": 3, "expand": 2},
    "dvts": {"subtrees": 3, "expand": 2},
    "rebase": {"width": 5},
    "ets": {"width": 5},
}
BUDGET = 600


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ttc.engine.synthetic import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tree-llama"), family="llama", seed=7, eos_token_id=None)


@pytest.fixture
async def backend(model_path: Path) -> AsyncIterator[object]:
    from ttc.backends.local import LocalBackend

    async with LocalBackend.from_pretrained(model_path, threads=1) as engine:
        yield engine


@pytest.mark.parametrize("name", sorted(SEARCHES))
async def test_search_on_the_engine_releases_every_hold(name: str, backend: object) -> None:
    options = {**SEARCHES[name], "max_step_tokens": 96, "temperature": 1.0}
    result, ctx, meter = await run_search(name, options, backend, HashPRM(),  # type: ignore[arg-type]
                                          budget=Budget(tokens=BUDGET), seed=0)
    stats = backend.stats()  # type: ignore[attr-defined]
    usage = meter.usage()
    assert stats.live_kv_tokens == 0, "every node the search created must have been released"
    assert 0 < usage.peak_kv_tokens <= stats.peak_kv_tokens
    assert usage.generated_tokens <= BUDGET
    assert usage.generated_tokens == stats.generated_tokens
    assert max(n.depth for n in ctx.recorder.nodes()) >= 2, "the tree should branch past its first steps"
    assert result.candidates


async def test_ets_clusters_steps_by_the_engines_hidden_states(backend: object) -> None:
    from ttc.strategies.embed import BackendEmbedder, resolve_embedder

    assert isinstance(resolve_embedder("auto", backend), BackendEmbedder)
    options = {**SEARCHES["ets"], "width": 8, "max_step_tokens": 96, "temperature": 1.0}
    _, ctx, _ = await run_search("ets", options, backend, HashPRM(),  # type: ignore[arg-type]
                                 budget=Budget(tokens=BUDGET), seed=0)
    events = round_events(ctx)
    assert events and all(e["ilp_status"] == "optimal" for e in events)
    assert max(int(e["n_clusters"]) for e in events) > 1  # type: ignore[call-overload]
    assert backend.stats().live_kv_tokens == 0  # type: ignore[attr-defined]
