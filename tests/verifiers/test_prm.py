"""Process reward model adapters on a real (tiny, seeded) checkpoint run by the local engine.

Scores are checked against transformers' own logits for the same token ids, so the adapters' prompt layout,
tag positions and judgement arithmetic are verified end to end, and incremental scoring is proven by counting
what the engine actually computed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ttc.backends.local import LocalBackend  # noqa: E402
from ttc.engine.synthetic import build_checkpoint  # noqa: E402
from ttc.errors import ConfigError, VerifierError  # noqa: E402
from ttc.testing import ScriptedBackend  # noqa: E402
from ttc.verifiers.base import aggregate, split_steps  # noqa: E402
from ttc.verifiers.prm import GenerativeJudge, StepScoreCache, TokenPRM, judge, judgement, load_prm  # noqa: E402
from ttc.verifiers.prm_presets import PRMPreset, get_preset  # noqa: E402

pytestmark = pytest.mark.anyio

PRESET = PRMPreset(name="tiny", family="token", tag="@", good="Y", bad="N", prefix="Q: {question}\n",
                   step_template="{step}", separator="\n", top_k=100)
QUESTION = "Tom has 3 apples and buys 4 more. How many?"
STEPS = ["3 + 4 = 7", "7 * 1 = 7", "The answer is 7."]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("prm"), family="llama", seed=5)


@pytest.fixture
async def backend(tiny_model: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend.from_pretrained(tiny_model, threads=1)
    try:
        yield local
    finally:
        await local.aclose()


def reference_scores(model_dir: Path, ids: list[int], tag_id: int, good: int, bad: int) -> list[float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    out = []
    for pos, tok in enumerate(ids):
        if tok == tag_id:
            lp = torch.log_softmax(logits[pos].double(), dim=-1)
            pg, pb = math.exp(lp[good]), math.exp(lp[bad])
            out.append(pg / (pg + pb))
    return out


async def test_token_prm_matches_transformers(backend: LocalBackend, tiny_model: Path) -> None:
    prm = TokenPRM(backend, PRESET)
    scores = await prm.score_steps(QUESTION, STEPS)
    assert len(scores) == 3 and all(0.0 < s < 1.0 for s in scores)
    tag, good, bad = [await backend.tokenize(t) for t in ("@", "Y", "N")]
    ids = await backend.tokenize(f"Q: {QUESTION}\n", add_special_tokens=True)
    for i, step in enumerate(STEPS):
        ids += await backend.tokenize(step) + tag + (await backend.tokenize("\n") if i < 2 else good)
    expected = reference_scores(tiny_model, ids, tag[0], good[0], bad[0])
    assert scores == pytest.approx(expected, abs=1e-4)


async def test_incremental_scoring_scores_only_the_new_step(backend: LocalBackend) -> None:
    prm = TokenPRM(backend, PRESET)
    first = await prm.score_steps_detailed(QUESTION, STEPS[:2])
    engine_before = backend.stats().scored_tokens
    second = await prm.score_steps_detailed(QUESTION, STEPS)
    engine_cost = backend.stats().scored_tokens - engine_before
    assert second.cached_steps == 2
    assert second.scores[:2] == pytest.approx(first.scores, abs=1e-6)
    # the separator after the old last tag (it was followed by a filler before), the step, its tag, a filler
    new_step_tokens = 1 + len(await backend.tokenize(STEPS[2])) + 2
    assert second.scored_tokens == new_step_tokens
    assert first.scored_tokens > 3 * second.scored_tokens
    assert engine_cost <= new_step_tokens + 2, "the engine re-read only the new step"
    again = await prm.score_steps_detailed(QUESTION, STEPS)
    assert again.scored_tokens == 0 and again.cached_steps == 3
    assert prm.calls == 2


async def test_batched_scoring_equals_one_by_one(backend: LocalBackend) -> None:
    candidates = [STEPS, ["3 + 4 = 8", "The answer is 8."], ["3 * 4 = 12"]]
    together = await TokenPRM(backend, PRESET).score_many(QUESTION, candidates)
    alone = [await TokenPRM(backend, PRESET).score_steps(QUESTION, c) for c in candidates]
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


async def test_generative_judge_reads_yes_against_no(backend: LocalBackend, tiny_model: Path) -> None:
    verdicts = judge(backend, yes="Y", no="N", top_k=128)
    assert isinstance(verdicts, GenerativeJudge)
    scores = await verdicts.score_steps(QUESTION, STEPS[:2])
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)
    text = GenerativeJudge.TEMPLATE.format(question=QUESTION, previous="(none)", step=STEPS[0])
    ids = await backend.tokenize(text, add_special_tokens=True)
    good, bad = [await backend.tokenize(t) for t in ("Y", "N")]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
    expected = math.exp(lp[good[0]]) / (math.exp(lp[good[0]]) + math.exp(lp[bad[0]]))
    assert scores[0] == pytest.approx(expected, abs=1e-4)


async def test_a_judge_counts_one_call_per_step_it_asks_about(backend: LocalBackend) -> None:
    """It asks about each new step in a request of its own, and was counted as one call for all of them."""
    verdicts = judge(backend, yes="Y", no="N", top_k=128)
    first = await verdicts.score_steps_detailed(QUESTION, STEPS[:1])
    more = await verdicts.score_steps_detailed(QUESTION, STEPS[:3])  # the first step comes from the cache
    assert (first.calls, more.calls, verdicts.calls) == (1, 2, 3)
    again = await verdicts.score_steps_detailed(QUESTION, STEPS[:3])
    assert again.calls == 0 and verdicts.calls == 3
    token = TokenPRM(backend, PRESET)
    assert (await token.score_steps_detailed(QUESTION, STEPS[:3])).calls == 1  # the whole prefix at once


async def test_multi_token_judgement_is_a_clear_error(backend: LocalBackend) -> None:
    bad_preset = PRMPreset(name="bad", family="token", tag="@@", good="Y", bad="N")
    with pytest.raises(VerifierError, match="must be one token"):
        await TokenPRM(backend, bad_preset).score_steps(QUESTION, STEPS)


def test_presets_are_data() -> None:
    shepherd = get_preset("math-shepherd")
    assert (shepherd.family, shepherd.tag, shepherd.good, shepherd.bad) == ("token", "ки", "+", "-")
    assert get_preset("qwen2.5-math-prm").family == "pooling"
    assert get_preset("rlhflow").family == "chat"
    with pytest.raises(ConfigError, match="unknown PRM preset"):
        get_preset("no-such-prm")
    with pytest.raises(ConfigError, match="needs a step tag"):
        PRMPreset(name="x", family="token")


def test_preset_from_json(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text('{"family": "token", "tag": "#", "good": "G", "bad": "B"}', encoding="utf-8")
    preset = get_preset(str(path))
    assert preset.name == "mine" and preset.tag == "#"
    path.write_text('{"family": "token", "tag": "#", "colour": "red"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown keys"):
        get_preset(str(path))


def test_a_preset_file_loads_from_a_path_as_from_its_string(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text('{"family": "likelihood"}', encoding="utf-8")
    assert get_preset(path) == get_preset(str(path))
    prm = load_prm(ScriptedBackend(["x"]), path)  # AttributeError: 'PosixPath' object has no attribute 'family'
    assert type(prm).__name__ == "LikelihoodPRM" and prm.preset.name == "mine"


@pytest.mark.parametrize("preset", [5, None, b"mine.json", ["mini"]])
def test_a_preset_that_is_neither_a_name_a_path_nor_a_preset_is_a_config_error(preset: object) -> None:
    with pytest.raises(ConfigError, match=r"a PRM preset is a name or a \.json file's path"):
        get_preset(preset)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"a PRM preset is a name or a \.json file's path"):
        load_prm(ScriptedBackend(["x"]), preset)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "message"), [
    ('{"tag": "#"}', "no 'family'"),
    ('{"family": "token", "tag": "#", "top_k": "20"}', r"top_k must be an int >= 0, got '20'"),
    ('{"family": "token", "tag": "#", "good": 5}', "good must be a string, got 5"),
    ('{"family": "token", "tag": "#", "top_k": 1}', "top_k must be >= 2"),
    ('{"family": "token", "tag": "#", "prefix": "Solve:\\n"}',
      r"prefix must contain the placeholder\(s\) \{question\}"),
    ('{"family": "token", "tag": "#", "prefix": "{q}\\n"}', r"prefix must contain the placeholder"),
    ('{"family": "likelihood", "prefix": "{question} \\boxed{}"}', r"prefix has unknown placeholder\(s\) \{\}"),
    ('{"family": "pooling", "tag": "#", "prefix": "{question}\\n{steps}"}', r"unknown placeholder\(s\) \{steps\}"),
    ('{"family": "chat", "first_turn": "{question}"}', r"first_turn must contain the placeholder\(s\) \{step\}"),
])
def test_a_preset_that_could_not_score_is_refused_when_loaded(tmp_path: Path, text: str, message: str) -> None:
    """Each of these loaded and then failed at the first scoring with a raw KeyError, IndexError or TypeError,
    or (no question in the prefix) scored the steps without the question."""
    path = tmp_path / "mine.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        get_preset(str(path))


def test_a_judgement_token_outside_the_top_k_is_bounded_by_the_top_k_alone() -> None:
    """A prompt position also returns the prompt's own token; outside the top-k, its logprob bounds nothing.
    With the good token after the last tag and top_k 3, the bad token's bound was the good token's own logprob."""
    good, bad, other = 1, 2, 3
    top_three = {10: -0.1, 11: -2.0, 12: -3.0}
    score = judgement({**top_three, good: -4.0}, good, bad, "step 1", actual=good, top_k=3)
    assert score == pytest.approx(math.exp(-4.0) / (math.exp(-4.0) + math.exp(-3.0)))
    # Among the top-k, the prompt's own token is one of them, and the least of them is the bound.
    score = judgement({10: -0.1, good: -2.0, other: -3.0}, good, bad, "step 1", actual=good, top_k=3)
    assert score == pytest.approx(math.exp(-2.0) / (math.exp(-2.0) + math.exp(-3.0)))


async def test_steps_must_be_a_list_of_strings(backend: LocalBackend) -> None:
    prm = load_prm(backend, PRESET)
    for steps in ("15 + 4 = 19", [None], [5]):
        with pytest.raises(ConfigError, match="a list of step strings"):
            await prm.score_steps(QUESTION, steps)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="given as a string"):
        await prm.score_steps(None, STEPS)  # type: ignore[arg-type]


def test_step_cache_keys_do_not_collide_across_splits_of_the_same_text() -> None:
    keys = StepScoreCache.keys
    assert len({keys("Q", ["A", "B"])[-1], keys("Q\x1eA", ["B"])[-1], keys("Q", ["A\x1eB"])[-1]}) == 3
    assert len(keys("Q", ["A", "B"])) == 2 and keys("a", ["a"]) != []


async def test_load_prm_picks_family(backend: LocalBackend) -> None:
    assert isinstance(load_prm(backend, PRESET), TokenPRM)


def test_aggregation_and_splitting_edge_cases() -> None:
    assert aggregate([0.9, 0.2, 0.8], "min") == pytest.approx(0.2)
    assert aggregate([0.9, 0.2, 0.8], "last") == pytest.approx(0.8)
    assert aggregate([0.5, 0.5], "prod") == pytest.approx(0.25)
    assert aggregate([0.5, 1.0], "mean") == pytest.approx(0.75)
    with pytest.raises(ConfigError):
        aggregate([], "min")
    with pytest.raises(ConfigError):
        aggregate([0.5], "median")  # type: ignore[arg-type]
    assert split_steps("a\n\n  \nb  \n", "\n") == ["a", "b"]
    assert split_steps("step one\n\nstep two\n\n", "\n\n") == ["step one", "step two"]
    assert split_steps("   \n\n", "\n") == []


LIKELIHOOD = PRMPreset(name="tiny-likelihood", family="likelihood", prefix="Q: {question}\n", separator="\n")


async def test_likelihood_prm_is_the_least_token_probability_of_each_step(backend: LocalBackend,
                                                                           tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    from ttc.verifiers.prm import LikelihoodPRM

    prm = load_prm(backend, LIKELIHOOD)
    assert isinstance(prm, LikelihoodPRM) and prm.preferred_aggregate == "min"
    scores = await prm.score_steps(QUESTION, STEPS)
    prefix = await backend.tokenize(f"Q: {QUESTION}\n", add_special_tokens=True)
    ids, spans = list(prefix), []
    for n, step in enumerate(STEPS):
        if n:
            ids += await backend.tokenize("\n")
        start = len(ids)
        ids += await backend.tokenize(step)
        spans.append((start, len(ids)))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    expected = [math.exp(min(lp[i - 1, ids[i]].item() for i in range(a, b))) for a, b in spans]
    assert scores == pytest.approx(expected, rel=1e-3)
    assert all(0.0 < s <= 1.0 for s in scores)
    before = backend.stats().scored_tokens
    longer = await prm.score_steps(QUESTION, [*STEPS, "Done."])
    assert longer[:3] == scores  # the cached steps keep their scores: a step's score depends on steps up to it
    assert backend.stats().scored_tokens - before == len(await backend.tokenize("\nDone."))


def test_likelihood_preset_from_the_checker_folder() -> None:
    preset = get_preset("mini-checker")
    assert preset.family == "likelihood"
    assert preset.prefix.format(question="Q?") == "Q?\n"
    with pytest.raises(ConfigError, match="mini-checker"):
        get_preset("no-such-preset")


async def test_a_solution_longer_than_the_prms_context_is_the_verifiers_failure_named_as_such(
        backend: LocalBackend) -> None:
    """The engine's refusal read "shorten it", of a prompt the user never wrote: the PRM's own, step tags and all."""
    long_steps = [f"{i} + 1 = {i + 1}" for i in range(400)]
    with pytest.raises(VerifierError, match=r"PRM preset 'tiny' on .* cannot score this solution \(\d+ tokens"):
        await load_prm(backend, PRESET).score_steps(QUESTION, long_steps)
