"""The ``auto`` rule: which strategy a question gets, and its size, from the budget and what verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.controller import plan_strategy
from ttc.types import Budget


def test_a_process_verifier_gets_beam_search_sized_by_the_budget() -> None:
    name, opts = plan_strategy("auto", Budget(tokens=2048), has_verifier=True, has_prm=True, options={},
                               solution_tokens=128, step_tokens=24)
    # 2048 tokens buy 16 solutions of 128: 4 beam nodes with 4 children each.
    assert name == "beam"
    assert opts == {"beam_width": 4, "expand": 4, "max_step_tokens": 24, "select": "weighted_vote"}
    _, small = plan_strategy("auto", Budget(tokens=300), has_verifier=True, has_prm=True, options={},
                             solution_tokens=128, step_tokens=24)
    assert small["beam_width"] == 1
    _, unknown = plan_strategy("auto", Budget(tokens=8192), has_verifier=True, has_prm=True, options={})
    # Nothing known of the model: a 512-token solution, and the search's own step limit.
    assert unknown["beam_width"] == 4 and "max_step_tokens" not in unknown
    _, endless = plan_strategy("auto", Budget(wall_s=5.0), has_verifier=True, has_prm=True, options={})
    assert endless["beam_width"] == 16


def test_a_setup_that_draws_distinct_children_gets_rebase_with_different_children() -> None:
    plan = {"has_verifier": True, "has_prm": True, "solution_tokens": 128, "step_tokens": 24}
    name, opts = plan_strategy("auto", Budget(tokens=1024), options={}, distinct_children=True, **plan)
    # 1024 tokens buy 8 solutions of 128: 8 in flight, each round's children different next steps.
    assert name == "rebase"
    assert opts == {"width": 8, "select": "weighted_vote", "distinct": True, "narrow_to_finish": True,
                    "max_step_tokens": 24}
    # Below 8 in flight, two per solution's worth: a narrow search of different children spends about half.
    for budget, width in ((Budget(tokens=100), 1), (Budget(tokens=256), 4), (Budget(tokens=512), 8),
                          (Budget(tokens=700), 8), (Budget(tokens=2048), 16), (Budget(tokens=100_000), 64),
                          (Budget(wall_s=5.0), 64)):
        assert plan_strategy("auto", budget, options={}, distinct_children=True, **plan)[1]["width"] == width
    name, mine = plan_strategy("auto", Budget(tokens=1024), options={"distinct": False, "width": 3},
                               distinct_children=True, **plan)
    assert name == "rebase" and (mine["distinct"], mine["width"]) == (False, 3)


def test_beam_options_keep_beam_search_with_different_children_in_narrow_beams() -> None:
    plan = {"has_verifier": True, "has_prm": True, "solution_tokens": 128, "step_tokens": 24}
    name, narrowed = plan_strategy("auto", Budget(tokens=2048), options={"beam_width": 1}, distinct_children=True,
                                   **plan)
    assert name == "beam" and narrowed["distinct"] is True
    name, wide = plan_strategy("auto", Budget(tokens=2048), options={"beam_width": 4}, distinct_children=True,
                               **plan)
    assert name == "beam" and "distinct" not in wide
    name, other = plan_strategy("auto", Budget(tokens=1024), options={}, **plan)
    assert name == "beam" and "distinct" not in other  # a setup that cannot draw them gets beam search, as before


def test_the_callers_search_options_win() -> None:
    _, opts = plan_strategy("auto", Budget(tokens=2048), has_verifier=True, has_prm=True,
                            options={"beam_width": 2, "max_depth": 10}, solution_tokens=128, step_tokens=24)
    assert opts["beam_width"] == 2 and opts["max_depth"] == 10 and opts["expand"] == 4


@pytest.mark.parametrize("options", [{"n": 8}, {"max_tokens": 200}, {"check_arithmetic": True}])
def test_sampling_options_keep_auto_on_best_of_n(options: dict[str, object]) -> None:
    name, opts = plan_strategy("auto", Budget(tokens=2048), has_verifier=True, has_prm=True, options=options)
    assert name == "best_of_n" and set(options) <= set(opts)


def test_an_outcome_verifier_alone_keeps_best_of_n() -> None:
    name, opts = plan_strategy("auto", Budget(tokens=2048), has_verifier=True, has_prm=False, options={})
    assert name == "best_of_n" and opts == {"n": 4}


def test_auto_searches_on_the_embedded_default(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ttc import solve
    from ttc.bench.datasets import load_dataset
    from ttc.storage import TraceStore

    problem = load_dataset("synthetic", limit=1, seed=42_000)[0]
    store = TraceStore(str(tmp_path / "t.db"))
    result = solve(problem.question, 1024, store=store, seed=5)
    assert result.strategy == "rebase" and result.usage.generated_tokens <= 1024
    record = store.get_trace(result.trace_id or "")
    [plan] = [e.payload for e in record.events if e.kind == "plan"]
    assert plan["options"] == {"width": 8, "select": "weighted_vote", "distinct": True, "narrow_to_finish": True,
                               "max_step_tokens": 24}
    assert any(e.kind == "round" for e in record.events) and record.status == "done"
    store.close()


def test_auto_at_a_small_budget_narrows_to_paths_it_can_finish(tmp_path: Path) -> None:
    """Level-7 and 8 problems at 256 tokens: the full width of 4 cuts every path short, so no answer at all."""
    pytest.importorskip("torch")
    from ttc import solve
    from ttc.bench.datasets import load_dataset
    from ttc.storage import TraceStore

    problems = [p for p in load_dataset("synthetic", limit=96, seed=24_000) if p.meta["level"] >= 7][:6]
    store = TraceStore(str(tmp_path / "t.db"))
    narrowed = [solve(p.question, 256, store=store, seed=i) for i, p in enumerate(problems)]
    full = [solve(p.question, 256, store=False, seed=i, narrow_to_finish=False) for i, p in enumerate(problems)]
    answered = sum(r.answer is not None for r in narrowed)
    assert answered > sum(r.answer is not None for r in full) and answered >= 2
    assert all(r.usage.generated_tokens <= 256 for r in narrowed)
    rounds = [e.payload for r in narrowed for e in store.get_trace(r.trace_id or "").events if e.kind == "round"]
    assert any("narrowed_from" in payload for payload in rounds)
    store.close()


def test_vote_round_options_take_auto_to_self_consistency_with_a_verifier_too() -> None:
    """With a verifier they went to best-of-N, which refused them as unknown options of a strategy the caller
    never named, though the same call with budget_scope='batch' ran self-consistency."""
    for options in ({"max_samples": 8}, {"round_size": 2, "max_tokens": 64}, {"stop_share": 0.9}):
        name, opts = plan_strategy("auto", Budget(tokens=1024), has_verifier=True, options=options)
        assert name == "self_consistency" and opts.items() >= options.items()
    name, opts = plan_strategy("auto", Budget(tokens=1024), has_verifier=True, options={"max_tokens": 64})
    assert name == "best_of_n" and opts["n"] == 16  # options both take keep the verifier's best-of-N


def test_n_keeps_auto_on_best_of_n_without_a_verifier_too() -> None:
    """It went to self-consistency, which refused 'n' as an unknown option of a strategy the caller never named."""
    from ttc import solve
    from ttc.testing import ScriptedBackend

    name, opts = plan_strategy("auto", Budget(tokens=1024), has_verifier=False, options={"n": 3})
    assert (name, opts) == ("best_of_n", {"n": 3})
    name, _ = plan_strategy("auto", Budget(tokens=1024), has_verifier=False, options={"max_tokens": 100})
    assert name == "self_consistency"  # an option both take stays with the no-verifier default
    result = solve("What is 2 + 3?", 1024, backend=ScriptedBackend(["2 + 3 = 5\nThe answer is 5."]), store=False,
                   n=3)
    assert (result.strategy, result.answer, len(result.candidates)) == ("best_of_n", "5", 3)


@pytest.mark.parametrize("distinct_children", [False, True])
def test_select_keeps_auto_on_the_family_whose_value_it_is(distinct_children: bool) -> None:
    """``select`` is an option of both families: "vote" (a plain count) and "auto" went to a tree search with a
    process verifier, which refused both values as not its own."""
    search = "rebase" if distinct_children else "beam"
    plan = {select: plan_strategy("auto", Budget(tokens=1024), has_verifier=True, has_prm=True,
                                  options={"select": select}, distinct_children=distinct_children)
            for select in ("auto", "vote", "score", "weighted_vote")}
    assert plan["vote"] == ("best_of_n", {"select": "vote", "n": 2})
    assert plan["auto"][0] == search and plan["auto"][1]["select"] == "weighted_vote"
    assert plan["score"][0] == search and plan["score"][1]["select"] == "score"
    assert plan["weighted_vote"][0] == search
