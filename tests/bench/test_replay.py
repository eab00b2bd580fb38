"""ReplayBackend and ScoreCache: every arm of a comparison sees the same samples and scores."""

from __future__ import annotations

import pytest

from ttc.bench.replay import ReplayBackend, ScoreCache
from ttc.testing import ScriptedBackend, guessing_responder
from ttc.types import Sampling

pytestmark = pytest.mark.anyio


async def test_every_arm_gets_each_prompts_samples_in_the_order_first_drawn() -> None:
    inner = ScriptedBackend(guessing_responder)
    replay = ReplayBackend(inner)
    prompt = await replay.tokenize("What is 3 + 4 + 12?")
    first = await replay.complete(prompt, 4, Sampling(max_tokens=64, temperature=0.8, seed=1))
    first += await replay.complete(prompt, 4, Sampling(max_tokens=64, temperature=0.8, seed=2))
    replay.rewind()
    again = await replay.complete(prompt, 8, Sampling(max_tokens=64, temperature=0.8, seed=99))
    assert [c.text for c in again] == [c.text for c in first]
    assert len({c.text for c in first}) > 1  # the samples differ from each other: the pool is not one sample
    assert replay.fresh_samples == 8 and [call.n for call in inner.calls] == [4, 4]
    more = await replay.complete(prompt, 2, Sampling(max_tokens=64, temperature=0.8, seed=5))
    assert replay.fresh_samples == 10 and inner.calls[-1].n == 2 and len(more) == 2


async def test_other_sampling_settings_draw_from_a_pool_of_their_own() -> None:
    inner = ScriptedBackend(guessing_responder)
    replay = ReplayBackend(inner)
    prompt = await replay.tokenize("What is 5 * 6?")
    await replay.complete(prompt, 2, Sampling(max_tokens=64, temperature=0.8, seed=1))
    greedy = await replay.complete(prompt, 1, Sampling(max_tokens=64, temperature=0.0, seed=1))
    assert len(greedy) == 1 and replay.fresh_samples == 3


async def test_stop_strings_given_as_a_list_share_the_pool_of_the_same_tuple() -> None:
    """Sampling takes a list of stop strings; the replay's pool key hashed it and raised a raw TypeError."""
    inner = ScriptedBackend(guessing_responder)
    replay = ReplayBackend(inner)
    prompt = await replay.tokenize("What is 5 * 6?")
    listed = await replay.complete(prompt, 2, Sampling(max_tokens=64, temperature=0.8, stop=["\n"], seed=1))
    replay.rewind()
    as_tuple = await replay.complete(prompt, 2, Sampling(max_tokens=64, temperature=0.8, stop=("\n",), seed=1))
    assert as_tuple == listed and replay.fresh_samples == 2


async def test_a_score_is_computed_once() -> None:
    calls: list[str] = []

    class Counting:
        async def score(self, question: str, solution: str) -> float:
            calls.append(solution)
            return float(len(solution))

    cache = ScoreCache(Counting())
    assert [await cache.score("q", s) for s in ("a", "bb", "a")] == [1.0, 2.0, 1.0]
    assert calls == ["a", "bb"]


async def test_a_pool_extended_with_its_first_seed_draws_new_samples_not_copies() -> None:
    """A seeded backend asked again with the seed of the pool's first draw hands back its first samples."""
    inner = ScriptedBackend(guessing_responder)
    replay = ReplayBackend(inner)
    prompt = await replay.tokenize("What is 3 + 4 + 12?")
    sampling = Sampling(max_tokens=64, temperature=0.8, seed=7)
    first = await replay.complete(prompt, 4, sampling)
    replay.rewind()
    pool = await replay.complete(prompt, 8, sampling)
    assert [c.text for c in pool[:4]] == [c.text for c in first]
    assert inner.calls[-1].sampling.seed != 7
    assert [c.text for c in pool[4:]] != [c.text for c in first]  # the copies it drew were the first four again
