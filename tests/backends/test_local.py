"""LocalBackend end to end on tiny real checkpoints: sampling contract, stops, KV sharing, reuse, batching."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from ttc.backends.base import Backend
from ttc.backends.local import LocalBackend
from ttc.engine.synthetic import EOS_ID
from ttc.errors import BackendError, ConfigError, ContextLengthError
from ttc.types import Completion, Sampling

REPO = Path(__file__).resolve().parents[2]
MINI_REASONER = REPO / "ttc" / "models" / "mini" / "reasoner"


def _ids(completions: list[Completion]) -> list[tuple[int, ...]]:
    return [c.token_ids for c in completions]


def _fed(completions: list[Completion]) -> int:
    """KV tokens the branches themselves added: every generated token except the last, which is never fed."""
    return sum(len(c.token_ids) - 1 for c in completions)


@pytest.mark.anyio
async def test_implements_the_backend_protocol(backend: LocalBackend, model_path: Path) -> None:
    assert isinstance(backend, Backend)
    assert backend.name == f"local:{model_path}"
    assert backend.eos_token_id == EOS_ID
    ids = await backend.tokenize("Hi there!")
    assert len(ids) == 9
    assert await backend.detokenize(ids) == "Hi there!"
    assert await backend.tokenize("Hi there!", add_special_tokens=True) == ids  # this tokenizer adds no BOS
    assert backend.stats().kv_bytes_per_token == backend.engine.model.kv_bytes_per_token


@pytest.mark.anyio
async def test_same_seed_same_samples_and_different_seeds_differ(model_path: Path) -> None:
    sampling = Sampling(max_tokens=12, temperature=1.0, seed=11)
    async with LocalBackend.from_pretrained(model_path, threads=1) as one, \
            LocalBackend.from_pretrained(model_path, threads=1) as two:
        prompt = await one.tokenize("Pick a number: ")
        first = await one.complete(prompt, 4, sampling)
        again = await one.complete(prompt, 4, sampling)  # second run hits the cached prompt
        fresh = await two.complete(prompt, 4, sampling)
        other = await one.complete(prompt, 4, Sampling(max_tokens=12, temperature=1.0, seed=12))
    assert _ids(first) == _ids(again) == _ids(fresh)
    assert _ids(other) != _ids(first)
    assert len(set(_ids(first))) > 1
    assert again[0].cached_prompt_tokens == len(prompt) - 1


@pytest.mark.anyio
async def test_stop_string_is_kept_and_finishes_with_stop(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Once upon a time")
    sampling = Sampling(max_tokens=30, temperature=1.0, seed=3)
    [free] = await backend.complete(prompt, 1, sampling)
    stop = free.text[8:10]
    texts = [await backend.detokenize(free.token_ids[:k]) for k in range(len(free.token_ids) + 1)]
    cut = next(k for k, text in enumerate(texts) if stop in text)
    [stopped] = await backend.complete(prompt, 1, Sampling(max_tokens=30, temperature=1.0, seed=3, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[:cut]
    assert stopped.text == await backend.detokenize(free.token_ids[:cut])
    assert stopped.text.endswith(stop)


@pytest.mark.anyio
async def test_max_tokens_finishes_with_length(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("abc")
    outs = await backend.complete(prompt, 3, Sampling(max_tokens=5, temperature=0.0, logprobs=True))
    for out in outs:
        assert out.finish_reason == "length" and len(out.token_ids) == 5
        assert out.logprobs is not None and len(out.logprobs) == 5 and all(lp <= 0 for lp in out.logprobs)
        assert out.prompt_tokens == 3
    [plain] = await backend.complete(prompt, 1, Sampling(max_tokens=2, temperature=0.0))
    assert plain.logprobs is None


@pytest.mark.anyio
async def test_eos_finishes_with_stop_and_is_kept(model_path: Path, tmp_path: Path) -> None:
    async with LocalBackend.from_pretrained(model_path, threads=1) as backend:
        prompt = await backend.tokenize("The end is near")
        [free] = await backend.complete(prompt, 1, Sampling(max_tokens=20, temperature=1.0, seed=8))
    index = next(i for i in range(3, 20) if free.token_ids[i] not in free.token_ids[:i])
    eos = free.token_ids[index]
    folder = shutil.copytree(model_path, tmp_path / "eos")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    async with LocalBackend.from_pretrained(folder, threads=1) as backend:
        [ended] = await backend.complete(prompt, 1, Sampling(max_tokens=20, temperature=1.0, seed=8))
    assert ended.finish_reason == "stop"
    assert ended.token_ids == free.token_ids[: index + 1]


@pytest.mark.anyio
async def test_forked_branches_share_the_prompt_kv(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("A fairly long shared prompt. " * 4)
    outs = await backend.complete(prompt, 6, Sampling(max_tokens=10, temperature=1.0, seed=1))
    stats = backend.stats()
    assert stats.live_kv_tokens == len(prompt) + _fed(outs)
    assert stats.peak_kv_tokens == len(prompt) + _fed(outs)
    assert stats.live_kv_tokens < 2 * len(prompt)  # six private copies would be 6 * len(prompt)


@pytest.mark.anyio
async def test_each_decode_step_counts_the_kv_held_with_the_shared_prompt_once(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Another shared prompt, for the mean KV. ")
    before = backend.stats()
    outs = await backend.complete(prompt, 4, Sampling(max_tokens=10, temperature=1.0, seed=3))
    after = backend.stats()
    fed = [len(c.token_ids) - 1 for c in outs]  # step j feeds every branch that has a j-th token to feed
    assert after.decode_steps - before.decode_steps == max(fed)
    live_at_step = [len(prompt) + sum(min(j, f) for f in fed) for j in range(1, max(fed) + 1)]  # prompt once
    assert after.kv_token_steps - before.kv_token_steps == sum(live_at_step)


@pytest.mark.anyio
async def test_release_frees_only_the_released_branch(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Shared prefix for release: ")
    outs = await backend.complete(prompt, 3, Sampling(max_tokens=8, temperature=1.0, seed=2))
    await backend.release(prompt + list(outs[0].token_ids))
    assert backend.stats().live_kv_tokens == len(prompt) + _fed(outs[1:])
    await backend.release(prompt + list(outs[0].token_ids))  # nothing left to drop: a no-op
    assert backend.stats().live_kv_tokens == len(prompt) + _fed(outs[1:])
    for out in outs[1:]:
        await backend.release(prompt + list(out.token_ids))
    stats = backend.stats()
    assert stats.live_kv_tokens == 0
    assert stats.peak_kv_tokens == len(prompt) + _fed(outs)
    backend.engine.tree.check()
    # Released blocks stay cached: the same prompt is found again.
    [again] = await backend.complete(prompt, 1, Sampling(max_tokens=1, temperature=0.0))
    assert again.cached_prompt_tokens == len(prompt) - 1


@pytest.mark.anyio
async def test_radix_reuse_of_a_parent_plus_its_completion(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Question: what is 2+2?\n")
    [first] = await backend.complete(prompt, 1, Sampling(max_tokens=10, temperature=1.0, seed=4))
    child_prompt = prompt + list(first.token_ids)
    [child] = await backend.complete(child_prompt, 1, Sampling(max_tokens=5, temperature=1.0, seed=5))
    assert child.prompt_tokens == len(child_prompt)
    assert child.cached_prompt_tokens == len(prompt) + len(first.token_ids) - 1
    stats = backend.stats()
    assert stats.calls == 2
    assert stats.prompt_tokens == len(prompt) + len(child_prompt)
    assert stats.cached_prompt_tokens == child.cached_prompt_tokens
    assert stats.generated_tokens == len(first.token_ids) + len(child.token_ids)


async def _workload(backend: LocalBackend) -> list[tuple[list[int], int, Sampling]]:
    texts = ["Alpha beta", "Alpha gamma delta", "Zeta", "Alpha beta"]
    return [
        (await backend.tokenize(text), n, Sampling(max_tokens=16, temperature=t, top_p=p, seed=seed))
        for text, n, t, p, seed in zip(texts, [2, 3, 1, 2], [1.0, 0.8, 0.0, 1.0], [1.0, 0.9, 1.0, 0.95],
                                       [10, 20, 30, 40], strict=True)
    ]


@pytest.mark.anyio
async def test_concurrent_calls_batch_together_and_match_sequential_results(model_path: Path) -> None:
    async with LocalBackend.from_pretrained(model_path, threads=1) as sequential:
        work = await _workload(sequential)
        alone = [await sequential.complete(p, n, s) for p, n, s in work]
        sequential_steps = sequential.engine.counters.decode_steps
    async with LocalBackend.from_pretrained(model_path, threads=1) as concurrent:
        together = await asyncio.gather(*(concurrent.complete(p, n, s) for p, n, s in work))
        concurrent_steps = concurrent.engine.counters.decode_steps
        concurrent.engine.tree.check()
    assert [_ids(c) for c in together] == [_ids(c) for c in alone]
    assert concurrent_steps < sequential_steps / 2


@pytest.mark.anyio
async def test_unshared_engine_gives_the_same_samples_with_private_copies(model_path: Path) -> None:
    sampling = Sampling(max_tokens=8, temperature=1.0, seed=6)
    async with LocalBackend.from_pretrained(model_path, threads=1) as shared, \
            LocalBackend.from_pretrained(model_path, share_prefix=False, threads=1) as private:
        prompt = await shared.tokenize("Private copies of this prompt")
        a = await shared.complete(prompt, 4, sampling)
        b = await private.complete(prompt, 4, sampling)
        assert _ids(a) == _ids(b)
        assert private.stats().peak_kv_tokens == 4 * len(prompt) + _fed(b)
        assert shared.stats().peak_kv_tokens == len(prompt) + _fed(a)
        [again] = await private.complete(prompt, 1, sampling)
        assert again.cached_prompt_tokens == 0
        for out in b:
            await private.release(prompt + list(out.token_ids))
        await private.release(prompt + list(again.token_ids))
        assert private.stats().live_kv_tokens == 0
        assert private.engine.tree.cached_tokens == 0


@pytest.mark.anyio
@pytest.mark.parametrize("distinct", [False, True], ids=["independent", "without-replacement"])
async def test_cancelled_call_frees_its_kv_and_the_engine_keeps_serving(backend: LocalBackend, distinct: bool) -> None:
    prompt = await backend.tokenize("Cancel me")
    sampling = Sampling(max_tokens=1500, temperature=1.0, seed=1, distinct=distinct)
    task = asyncio.create_task(backend.complete(prompt, 6 if distinct else 2, sampling))
    while backend.engine.counters.decode_steps < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [ok] = await backend.complete(prompt, 1, Sampling(max_tokens=3, temperature=0.0))
    assert len(ok.token_ids) == 3
    assert backend.stats().live_kv_tokens == len(prompt) + 2  # only the finished call's hold remains
    backend.engine.tree.check()


@pytest.mark.anyio
async def test_a_cancelled_request_waiting_for_room_does_not_hold_back_the_ones_behind_it(model_path: Path) -> None:
    """It stayed at the head of the queue, so a request that fitted beside the running batch waited for all of
    it to finish."""
    async with LocalBackend.from_pretrained(model_path, threads=1, max_batch=4) as backend:
        prompt = await backend.tokenize("Long one")
        long = asyncio.create_task(backend.complete(prompt, 3, Sampling(max_tokens=1500, temperature=1.0, seed=0)))
        while backend.engine.counters.decode_steps < 3:
            await asyncio.sleep(0.01)
        blocked = asyncio.create_task(backend.complete(prompt, 4, Sampling(max_tokens=5, temperature=1.0)))
        await asyncio.sleep(0.05)  # queued: 3 + 4 branches do not fit in 4
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        [short] = await asyncio.wait_for(backend.complete(prompt, 1, Sampling(max_tokens=3, temperature=0.0)), 60)
        assert len(short.token_ids) == 3 and not long.done()  # admitted beside the running batch
        await long


def watch_replies(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once the engine thread has handed a reply to the caller's loop (posted, not yet read)."""
    import ttc.backends.local as local

    answered = threading.Event()
    settle = local._settle

    def watched(*args: Any) -> Any:
        reply = settle(*args)

        def on_reply(result: object) -> None:
            reply(result)
            answered.set()

        return on_reply

    monkeypatch.setattr(local, "_settle", watched)
    return answered


@pytest.mark.anyio
@pytest.mark.parametrize("read_first", [False, True], ids=["reply-after-cancel", "cancel-after-reply"])
async def test_a_call_cancelled_once_the_engine_has_answered_frees_its_kv(
        backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, read_first: bool) -> None:
    """The completions reached no caller, so no caller could release them: they held KV for good."""
    answered = watch_replies(monkeypatch)
    prompt = await backend.tokenize("Answered")
    task = asyncio.create_task(backend.complete(prompt, 4, Sampling(max_tokens=4, temperature=1.0, seed=3)))
    await asyncio.sleep(0)  # the request is submitted
    assert answered.wait(60)  # the loop is blocked: the reply is queued on it, unread
    if read_first:
        await asyncio.sleep(0)  # the reply resolves the call's future before the cancellation lands
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await backend.release([1])  # one round trip through the engine thread: the orphans' release ran before it
    assert backend.stats().live_kv_tokens == 0
    backend.engine.tree.check()


def test_a_completion_answered_after_its_event_loop_closed_frees_its_kv(
        model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop closed with the call still pending (never cancelled): the engine's reply could not be posted to it
    and was dropped with its holds, which nobody could release any more."""
    answered = watch_replies(monkeypatch)
    backend = LocalBackend.from_pretrained(model_path, threads=1)
    try:
        prompt = backend.engine.tokenizer.encode("Left behind").ids
        gate = threading.Event()
        backend._scheduler.call(lambda _: gate.wait(60), lambda _: None)  # the engine thread waits for the loop
        loop = asyncio.new_event_loop()
        pending = loop.create_task(backend.complete(prompt, 3, Sampling(max_tokens=4, temperature=1.0, seed=0)))
        loop.run_until_complete(asyncio.sleep(0.01))  # the request is submitted
        loop.close()
        gate.set()
        assert answered.wait(60) and not pending.done()  # answered, and never read
        asyncio.run(backend.release([1]))  # one round trip through the engine thread: the orphans' release ran first
        assert backend.stats().live_kv_tokens == 0
        backend.engine.tree.check()
    finally:
        backend.close()


@pytest.mark.anyio
async def test_a_failing_step_fails_its_calls_and_the_engine_recovers(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = await backend.tokenize("Fail once")
    model = backend.engine.model
    real = model.hidden_states
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:  # prefill, first decode step, then a failure mid-generation
            raise RuntimeError("simulated device fault")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "hidden_states", flaky)
    with pytest.raises(BackendError, match="simulated device fault"):
        await backend.complete(prompt, 2, Sampling(max_tokens=20, temperature=1.0, seed=1))
    assert backend.stats().live_kv_tokens == 0
    assert backend.engine.tree.cached_tokens == 0  # half-written KV is never offered for reuse
    [ok] = await backend.complete(prompt, 1, Sampling(max_tokens=4, temperature=0.0))
    assert ok.finish_reason == "length" and ok.cached_prompt_tokens == 0


@pytest.mark.anyio
async def test_event_loop_stays_responsive_while_decoding(backend: LocalBackend) -> None:
    prompt = await backend.tokenize("Responsive")
    task = asyncio.create_task(backend.complete(prompt, 4, Sampling(max_tokens=200, temperature=1.0, seed=2)))
    ticks = 0
    while not task.done():
        await asyncio.sleep(0.005)
        ticks += 1
    await task
    assert ticks > 5


@pytest.mark.anyio
async def test_invalid_requests_raise_config_errors(backend: LocalBackend) -> None:
    with pytest.raises(ConfigError, match="at least one token"):
        await backend.complete([], 1, Sampling())
    with pytest.raises(ConfigError, match="n must be a positive int"):
        await backend.complete([5], 0, Sampling())
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        await backend.complete([10_000], 1, Sampling())
    with pytest.raises(ConfigError, match="top_k"):
        await backend.prompt_logprobs([5, 6], top_k=-1)
    with pytest.raises(ConfigError, match="no room"):
        await backend.complete([5] * 4096, 1, Sampling())
    with pytest.raises(ConfigError, match="token ids, not text"):
        await backend.complete("What is 2 + 2?", 1, Sampling())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"token id 2\.5 is not an int"):
        await backend.prompt_logprobs([5, 2.5])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="sequence of token ids"):
        await backend.release(None)  # type: ignore[arg-type]
    for huge in ({"temperature": 10**400}, {"top_p": 10**400}):  # past float range: the sampler overflowed
        with pytest.raises(ConfigError, match=next(iter(huge))):
            Sampling(**huge)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sampling must be a ttc.types.Sampling, got dict"):
        await backend.complete([5], 1, {"max_tokens": 5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tokenize takes text"):
        await backend.tokenize(None)  # type: ignore[arg-type]
    for ids in ([-1], [1, 10_000]):
        with pytest.raises(ConfigError, match="outside the model's vocabulary"):
            await backend.detokenize(ids)
    with pytest.raises(ConfigError, match="embed takes a list of token id sequences"):
        await backend.embed(None)  # type: ignore[arg-type]
    assert backend.stats().live_kv_tokens == 0


def test_loader_settings_of_the_wrong_type_are_config_errors(model_path: Path) -> None:
    for settings in ({"max_batch": "8"}, {"max_held": 1.5}, {"threads": "2"}, {"cache_tokens": True}):
        with pytest.raises(ConfigError, match="must be an int"):
            LocalBackend.from_pretrained(model_path, **settings)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_text_the_vocabulary_cannot_spell_is_refused_not_read_as_unknown_tokens() -> None:
    """The mini models' 64 characters have no 'C', 'D' or 'P': 'CAPS Dog' was read as '<unk>A<unk>S <unk>og'."""
    from ttc.models import mini_model_path

    async with LocalBackend.from_pretrained(mini_model_path("reasoner"), threads=1) as mini:
        with pytest.raises(ConfigError, match=r"has no token for 'C', 'D', 'P' in 'CAPS Dog'"):
            await mini.tokenize("CAPS Dog")
        assert await mini.detokenize(await mini.tokenize("Ann has 12 pens.")) == "Ann has 12 pens."


@pytest.mark.parametrize("temperature", [1e-45, 1e-40, 5e-5])
def test_a_temperature_too_small_to_scale_logits_by_is_refused(temperature: float) -> None:
    """At 1e-45 the scaled logits overflowed, the softmax gave NaN, and every sample was the pad token."""
    with pytest.raises(ConfigError, match="too small to scale logits by"):
        Sampling(temperature=temperature)
    assert Sampling(temperature=1e-4).temperature == 1e-4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stop": "\n\n"}, "tuple of non-empty strings"),
        ({"stop": None}, "tuple of non-empty strings"),
        ({"stop": ("",)}, "tuple of non-empty strings"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"max_tokens": True}, "max_tokens must be an int"),
        ({"max_tokens": 2.5}, "max_tokens must be an int"),
        ({"temperature": float("nan")}, "finite number"),
        ({"top_p": "0.9"}, "top_p must be in"),
    ],
)
def test_sampling_rejects_wrong_types_before_any_engine_sees_them(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Sampling(**settings)


@pytest.mark.anyio
async def test_a_completion_ends_within_the_context_and_can_be_scored_whole(model_path: Path) -> None:
    async with LocalBackend.from_pretrained(model_path, threads=1) as backend:
        positions = backend.engine.config.max_positions
        prompt = [5] * (positions - 3)
        [completion] = await backend.complete(prompt, 1, Sampling(max_tokens=50, temperature=0.0))
        assert completion.finish_reason == "length"
        whole = prompt + list(completion.token_ids)
        assert len(whole) == positions  # the context's every position, not one past it
        scored = await backend.prompt_logprobs(whole)
        assert len(scored.top) == positions
        with pytest.raises(ContextLengthError, match="no room") as refused:
            await backend.complete(whole, 1, Sampling())
        assert isinstance(refused.value, ConfigError)  # what it was before: one except serves both backends


@pytest.mark.anyio
async def test_a_stop_on_the_contexts_last_position_is_cut_by_its_length(model_path: Path) -> None:
    """It read "stop", so a step-by-step caller (lookahead, a tree search) asked for the next step and was refused
    with 'prompt of N tokens leaves no room' instead of ending a cut solution."""
    async with LocalBackend.from_pretrained(model_path, threads=1) as backend:
        positions = backend.engine.config.max_positions
        prompt = [5] * (positions - 3)
        [free] = await backend.complete(prompt, 1, Sampling(max_tokens=50, temperature=0.0))
        assert len(free.token_ids) == 3 and free.text
        [stopped] = await backend.complete(prompt, 1, Sampling(max_tokens=50, temperature=0.0, stop=(free.text,)))
        assert stopped.token_ids == free.token_ids and stopped.finish_reason == "length"


@pytest.mark.anyio
async def test_requests_scored_together_keep_their_own_top_k(model_path: Path) -> None:
    async with LocalBackend.from_pretrained(model_path, threads=1) as alone:
        wanted = await alone.prompt_logprobs([7, 8, 9, 10, 11], top_k=4)
    async with LocalBackend.from_pretrained(model_path, threads=1) as backend:
        wide, narrow = await asyncio.gather(backend.prompt_logprobs([7, 8, 9, 10, 11], top_k=4),
                                            backend.prompt_logprobs([7, 8, 9, 10, 11], top_k=0))
        assert wide.top[0] is None and wanted.top[0] is None
        for got, want in zip(wide.top[1:], wanted.top[1:], strict=True):  # batched rows round a little apart
            assert got == pytest.approx(want, abs=1e-5)
        assert [len(d) if d else 0 for d in narrow.top] == [0, 1, 1, 1, 1]


@pytest.mark.anyio
async def test_scoring_counts_and_single_token_prompts(backend: LocalBackend) -> None:
    scored = await backend.prompt_logprobs([7], top_k=3)
    assert scored.top == (None,)
    scored = await backend.prompt_logprobs([7, 8, 9], top_k=0)
    assert [len(d) if d else 0 for d in scored.top] == [0, 1, 1]
    assert backend.stats().scored_tokens == 2  # two distributions computed; a lone token has none
    await backend.prompt_logprobs([7, 8, 9], top_k=0)
    assert backend.stats().scored_tokens == 2  # all cached: nothing computed again
    await backend.prompt_logprobs([7, 8, 9, 10], top_k=0)
    assert backend.stats().scored_tokens == 3


@pytest.mark.anyio
async def test_cache_and_hold_caps_bound_memory(model_path: Path) -> None:
    async with LocalBackend.from_pretrained(model_path, threads=1, cache_tokens=50, max_held=2) as backend:
        for i in range(5):
            await backend.prompt_logprobs([10 + i] * 30, top_k=1)
            assert backend.engine.tree.cached_tokens <= 50
        outs = [await backend.complete([20 + i] * 10, 1, Sampling(max_tokens=5, temperature=0.0)) for i in range(3)]
        # Only the two most recent finished sequences are still held (10 prompt + 4 fed tokens each).
        assert backend.stats().live_kv_tokens == 2 * (10 + 4)
        assert all(len(o[0].token_ids) == 5 for o in outs)
        backend.engine.tree.check()
    async with LocalBackend.from_pretrained(model_path, threads=1, cache_tokens=30) as backend:
        for i in range(3):
            await backend.complete([30 + i] * 10, 1, Sampling(max_tokens=5, temperature=0.0))
            # Each hold pins 14 live tokens; a third would exceed the 30-token budget, so the oldest goes.
            assert backend.stats().live_kv_tokens == min(i + 1, 2) * 14


@pytest.mark.anyio
async def test_tree_search_workload_keeps_counts_exact_and_results_independent_of_the_cache(
    model_path: Path,
) -> None:
    """Grow, score and prune a random tree; every answer must equal a cache-free engine's, counts must add up."""
    rng = random.Random(0)
    async with LocalBackend.from_pretrained(model_path, threads=1, cache_tokens=200) as cached, \
            LocalBackend.from_pretrained(model_path, threads=1, share_prefix=False) as plain:
        frontier = [await cached.tokenize("Root question: ")]
        for round_ in range(6):
            parent = rng.choice(frontier)
            sampling = Sampling(max_tokens=rng.randint(1, 8), temperature=1.0, seed=round_, stop=("e",))
            outs, expected = await asyncio.gather(cached.complete(parent, 3, sampling),
                                                  plain.complete(parent, 3, sampling))
            assert _ids(outs) == _ids(expected)
            children = [parent + list(o.token_ids) for o in outs]
            scored, reference = await cached.prompt_logprobs(children[0], 2), await plain.prompt_logprobs(
                children[0], 2)
            for i in range(1, len(children[0])):
                assert scored.token_logprob(i) == pytest.approx(reference.token_logprob(i), abs=1e-4)
            pruned = rng.sample(children, 2)
            for child in pruned:
                await cached.release(child)
            frontier += [c for c in children if c not in pruned]
            cached.engine.tree.check()
            engine = cached.engine
            assert engine.stats().live_kv_tokens == engine.tree.live_tokens
            assert engine.tree.cached_tokens <= 200


@pytest.mark.anyio
async def test_closed_backend_refuses_work(model_path: Path) -> None:
    backend = LocalBackend.from_pretrained(model_path, threads=1)
    await backend.complete([5, 6], 1, Sampling(max_tokens=2))
    await backend.aclose()
    with pytest.raises(Exception, match="closed"):
        await backend.complete([5, 6], 1, Sampling(max_tokens=2))


def test_importing_the_backend_does_not_import_torch() -> None:
    code = "import sys, ttc.backends.local; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def mini_reference() -> object:
    """The bundled mini reasoner in plain transformers (fp32): what the local engine must reproduce."""
    if not (MINI_REASONER / "config.json").is_file():
        pytest.skip("the bundled mini reasoner is not built")
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MINI_REASONER, dtype=torch.float32).eval()


@pytest.mark.anyio
async def test_bundled_mini_reasoner_decodes_like_transformers(mini_reference: object) -> None:
    import torch

    from ttc.models import mini_prompt

    reference: Any = mini_reference
    async with LocalBackend.from_pretrained(MINI_REASONER, threads=1) as backend:
        question = "Ann has 3 pens. She buys 4 bags of 2 pens. How many pens does she have?"
        prompt = await backend.tokenize(mini_prompt(question), add_special_tokens=True)
        [ours] = await backend.complete(prompt, 1, Sampling(max_tokens=48, temperature=0.0))
        scored = await backend.prompt_logprobs(prompt + list(ours.token_ids))
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False,
                                 pad_token_id=backend.eos_token_id)
    expected = out[0, len(prompt):].tolist()
    if backend.eos_token_id in expected:
        expected = expected[: expected.index(backend.eos_token_id) + 1]
    assert list(ours.token_ids) == expected
    full = prompt + list(ours.token_ids)
    with torch.no_grad():
        ref = torch.log_softmax(reference(torch.tensor([full])).logits[0].float(), dim=-1)
    for i in range(1, len(full)):
        assert scored.token_logprob(i) == pytest.approx(ref[i - 1, full[i]].item(), abs=1e-4)


@pytest.mark.anyio
async def test_embed_is_the_last_tokens_final_hidden_state_cached_or_not(mini_reference: object) -> None:
    import torch

    from ttc.models import mini_prompt

    reference: Any = mini_reference
    async with LocalBackend.from_pretrained(MINI_REASONER, threads=1) as backend:
        prompt = await backend.tokenize(mini_prompt("Ann has 12 pens. She buys 7 more."), add_special_tokens=True)
        step_a = prompt + await backend.tokenize("12 + 7 = 19\n")
        step_b = prompt + await backend.tokenize("12 - 7 = 5\n")
        cold = await backend.embed([step_a, step_b])
        [held] = await backend.complete(step_a, 1, Sampling(max_tokens=4, temperature=0.0))
        warm = await backend.embed([step_a])  # now the whole of step_a is in the KV tree
        assert backend.stats().live_kv_tokens > 0
        await backend.release(step_a)
    with torch.no_grad():
        for ids, row in ((step_a, cold[0]), (step_b, cold[1]), (step_a, warm[0])):
            expected = reference.model(torch.tensor([ids])).last_hidden_state[0, -1]
            assert torch.tensor(row) == pytest.approx(expected, abs=1e-4)
    assert cold[0] != cold[1]
    assert held.token_ids


@pytest.mark.anyio
async def test_embed_runs_held_nodes_in_one_forward_and_prefills_the_rest(mini_reference: object) -> None:
    import torch

    from ttc.models import mini_prompt

    reference: Any = mini_reference
    async with LocalBackend.from_pretrained(MINI_REASONER, threads=1) as backend:
        prompt = await backend.tokenize(mini_prompt("Ann has 12 pens. She buys 7 more."), add_special_tokens=True)
        [done] = await backend.complete(prompt, 1, Sampling(max_tokens=12, temperature=0.0))
        node = prompt + list(done.token_ids)  # held: every token but the last, which was never fed back, is cached
        inner = node[:-4]  # wholly cached, inside the held path
        cold = prompt + await backend.tokenize("12 - 7 = 5\n")
        model = backend.engine.model
        forwards = []
        original = model.hidden_states

        def counted(*args: Any, **kwargs: Any) -> Any:
            forwards.append(args[0].shape)
            return original(*args, **kwargs)

        model.hidden_states = counted  # type: ignore[method-assign]
        rows = await backend.embed([node, inner, node])
        assert [tuple(shape) for shape in forwards] == [(2, 1)]  # the two distinct sequences, one forward
        forwards.clear()
        mixed = await backend.embed([cold, node, inner])
        assert [tuple(shape) for shape in forwards] == [(1, len(cold) - len(prompt)), (2, 1)]
        backend.engine.tree.check()
        await backend.release(node)
    assert rows[0] == rows[2]
    with torch.no_grad():
        for ids, row in ((node, rows[0]), (inner, rows[1]), (cold, mixed[0]), (node, mixed[1]), (inner, mixed[2])):
            expected = reference.model(torch.tensor([ids])).last_hidden_state[0, -1]
            assert torch.tensor(row) == pytest.approx(expected, abs=1e-4)


@pytest.mark.anyio
async def test_embed_rejects_bad_sequences(backend: LocalBackend) -> None:
    with pytest.raises(ConfigError, match="at least one token"):
        await backend.embed([[]])


@pytest.mark.anyio
async def test_a_worker_that_cannot_start_fails_its_requests_instead_of_leaving_them_waiting(
        model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine thread that died on its start-up (a thread count OpenMP refused) left every caller waiting."""
    import torch

    def refuse(threads: int) -> None:
        raise ValueError("Overflow when unpacking long")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    backend = LocalBackend.from_pretrained(model_path, threads=2)
    try:
        prompt = await backend.tokenize("Fail to start")
        with pytest.raises(BackendError, match="Overflow when unpacking long"):
            await asyncio.wait_for(backend.complete(prompt, 1, Sampling(max_tokens=2)), timeout=30)
    finally:
        monkeypatch.undo()
        await backend.aclose()


def test_a_thread_count_beyond_what_an_engine_can_use_is_refused(model_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"threads must be an int in \[1, 1024\]"):
        LocalBackend.from_pretrained(model_path, threads=4_294_967_296)
    monkeypatch.setenv("TTC_THREADS", "4294967296")
    from ttc.config import embedded_setup

    with pytest.raises(ConfigError, match=r"TTC_THREADS must be an integer in \[1, 1024\]"):
        embedded_setup()
