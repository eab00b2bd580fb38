"""Sampling(distinct=True) on the local engine: n different texts, drawn from the same distribution as independent
samples but without replacement, with the KV and token counts of a beam that shares its prefixes."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from ttc.backends.local import LocalBackend
from ttc.backends.vllm import VLLMBackend
from ttc.bench.replay import ReplayBackend
from ttc.errors import ConfigError
from ttc.testing.scripted import ScriptedBackend
from ttc.types import Sampling


def _distinct(seed: int, max_tokens: int = 8, top_p: float = 1.0, temperature: float = 1.0) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, distinct=True)


@pytest.mark.anyio
async def test_n_different_texts_the_same_for_a_seed(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Pick a number: ")
    first = await backend.complete(prompt, 12, _distinct(3))
    again = await backend.complete(prompt, 12, _distinct(3))
    other = await backend.complete(prompt, 12, _distinct(4))
    ids = [c.token_ids for c in first]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert ids == [c.token_ids for c in again]
    assert ids != [c.token_ids for c in other]
    for c in first:
        assert c.prompt_tokens == len(prompt) and c.text == await backend.detokenize(c.token_ids)


@pytest.mark.anyio
async def test_a_beam_decodes_shared_prefixes_once_and_frees_what_it_drops(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Shared prefix, then branches: ")
    before = backend.stats().generated_tokens
    drawn = await backend.complete(prompt, 16, _distinct(7, max_tokens=10, temperature=0.2))  # peaked: prefixes shared
    decoded = backend.stats().generated_tokens - before
    # Every text is a path of the beam's tree; the tree's tokens are each decoded once, and the dropped
    # branches' tokens add to them, so decoding costs at least the tree and at most the 16 texts plus what was
    # dropped, which a beam of 16 over 10 steps bounds by 16 * 10.
    tree = {c.token_ids[: i + 1] for c in drawn for i in range(len(c.token_ids))}
    assert len(tree) <= decoded < sum(len(c.token_ids) for c in drawn) + 16 * 10
    assert len(tree) < sum(len(c.token_ids) for c in drawn)  # some prefix is shared
    backend.engine.tree.check()
    # Only the finished texts hold KV: the prompt and each text's own tree, nothing of the dropped branches.
    held = len(prompt) + len({c.token_ids[: i + 1] for c in drawn for i in range(len(c.token_ids) - 1)})
    assert backend.stats().live_kv_tokens == held
    for c in drawn:
        await backend.release([*prompt, *c.token_ids])
    assert backend.stats().live_kv_tokens == 0


@pytest.mark.anyio
async def test_an_unshared_engine_gives_a_beam_private_copies_and_the_same_texts(backend: LocalBackend,
                                                                                 model_path: Path) -> None:
    """share_prefix=False is the baseline that measures sharing: a beam's children still shared their prompt and
    common prefix there, so the baseline held as little KV as the engine it measured."""
    prompt = await backend.tokenize("A rather long shared prompt here: ")
    sampling = _distinct(2, max_tokens=4, temperature=0.7)
    async with LocalBackend.from_pretrained(model_path, threads=1, share_prefix=False) as private:
        shared_out = await backend.complete(prompt, 8, sampling)
        private_out = await private.complete(prompt, 8, sampling)
        assert [c.token_ids for c in private_out] == [c.token_ids for c in shared_out]
        live = private.stats().live_kv_tokens
        assert live >= 8 * len(prompt)  # every text holds its own copy of the prompt
        for c in private_out:
            await private.release([*prompt, *c.token_ids])
        assert private.stats().live_kv_tokens == 0
        private.engine.tree.check()
    for c in shared_out:
        await backend.release([*prompt, *c.token_ids])


@pytest.mark.anyio
async def test_fewer_texts_when_the_nucleus_leaves_fewer_and_one_is_greedy(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Only the likeliest: ")
    [greedy] = await backend.complete(prompt, 1, Sampling(max_tokens=8, temperature=0.0))
    drawn = await backend.complete(prompt, 5, _distinct(1, top_p=1e-6))  # the nucleus is the top token alone
    assert [c.token_ids for c in drawn] == [greedy.token_ids]


@pytest.mark.anyio
async def test_stop_strings_and_length_finish_each_text(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Stop at a letter: ")
    drawn = await backend.complete(prompt, 10, Sampling(max_tokens=6, temperature=1.0, seed=2, stop=("a", "e"),
                                                        distinct=True, logprobs=True))
    assert len({c.token_ids for c in drawn}) == len(drawn) == 10
    for c in drawn:
        if c.finish_reason == "stop":
            assert c.text.endswith(("a", "e"))
        else:
            assert len(c.token_ids) == 6 and "a" not in c.text and "e" not in c.text
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)


@pytest.mark.anyio
async def test_two_draws_without_replacement_follow_the_model(backend: LocalBackend) -> None:
    """One token, two texts: the first drawn is a plain sample, the second is drawn from what is left."""
    prompt = await backend.tokenize("Any letter: ")
    scored = await backend.prompt_logprobs([*prompt, 0], top_k=backend.engine.config.vocab_size)
    dist = scored.top[-1]
    assert dist is not None
    temperature = 0.1  # the likeliest token has 0.69, the next 0.09: the second draw is far from the first's law
    weights = {t: math.exp(lp / temperature) for t, lp in dist.items()}
    p = {t: w / sum(weights.values()) for t, w in weights.items()}
    draws = 3000
    first: Counter[int] = Counter()
    second: Counter[int] = Counter()
    for seed in range(draws):
        a, b = await backend.complete(prompt, 2, _distinct(seed, max_tokens=1, temperature=temperature))
        assert a.token_ids != b.token_ids
        first[a.token_ids[0]] += 1
        second[b.token_ids[0]] += 1
        for c in (a, b):
            await backend.release([*prompt, *c.token_ids])
    expected_second = {b: sum(p[a] * p[b] / (1 - p[a]) for a in p if a != b) for b in p}
    tv_first = sum(abs(first[t] / draws - p[t]) for t in p) / 2
    tv_second = sum(abs(second[t] / draws - expected_second[t]) for t in p) / 2
    # 3000 draws land within about 0.03 of the truth here; a second draw made with replacement would be off by
    # the distance between the two laws.
    with_replacement = sum(abs(expected_second[t] - p[t]) for t in p) / 2
    assert with_replacement > 0.4
    assert tv_first < 0.05 and tv_second < 0.05


def test_greedy_decoding_has_no_distinct_draw() -> None:
    with pytest.raises(ConfigError, match="temperature > 0"):
        Sampling(temperature=0.0, distinct=True)
    with pytest.raises(ConfigError, match="distinct must be a bool"):
        Sampling(distinct=1)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_backends_that_sample_independently_refuse_a_distinct_draw(backend: LocalBackend) -> None:
    sampling = _distinct(0)
    with pytest.raises(ConfigError, match="local engine"):
        await VLLMBackend("http://127.0.0.1:9").complete([1, 2], 4, sampling)  # refused before any connection
    with pytest.raises(ConfigError, match="local engine"):
        await ScriptedBackend(["x"]).complete([1, 2], 4, sampling)
    with pytest.raises(ConfigError, match="local engine"):
        await ReplayBackend(backend).complete([1, 2], 4, sampling)
