"""The batch controller's allocation rules, on their own: who gets the next round, and what is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ttc.controller import Pool, Standing, check_affordable, first_wave, next_wave, pooled_options
from ttc.controller.batch import Grant, SearchStanding, UnaffordableBatch, check_affordable_search, search_wave
from ttc.errors import ConfigError
from ttc.types import Budget


def standing(index: int, *, drawn: int = 4, cap: int = 16, open: bool = True, margin: float = 0.5) -> Standing:
    return Standing(index=index, drawn=drawn, cap=cap, open=open, margin=margin)


def test_a_budget_that_cannot_give_each_question_one_sample_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cannot give each of 10 questions one sample of up to max_tokens=100"):
        check_affordable(Budget(tokens=999), 10, 100)
    with pytest.raises(ConfigError, match=r"raise budget\.calls to at least the number of questions"):
        check_affordable(Budget(calls=9), 10, 100)
    check_affordable(Budget(tokens=1000, calls=10), 10, 100)


def test_only_strategies_that_grow_a_vote_or_search_can_share_a_batch_budget() -> None:
    with pytest.raises(ConfigError, match=r"use strategy='auto', 'self_consistency' or a tree search.*not 'best_of_n'"):
        pooled_options("best_of_n", {}, has_verifier=False)
    assert pooled_options("auto", {}, has_verifier=False) == {"max_samples": 64}
    assert pooled_options("auto", {"max_samples": 8}, has_verifier=False) == {"max_samples": 8}
    assert pooled_options("self_consistency", {}, has_verifier=True) == {}


def test_a_weighted_vote_stops_only_on_agreement() -> None:
    """A weighted lead misleads early, so under auto a verifier's vote stops only when 8 samples agree."""
    unanimous = {"max_samples": 64, "stop_share": 1.0, "min_samples": 8}
    assert pooled_options("auto", {}, has_verifier=True) == unanimous
    assert pooled_options("auto", {"select": "weighted_vote"}, has_verifier=False) == {"select": "weighted_vote",
                                                                                     **unanimous}
    assert pooled_options("auto", {"select": "vote"}, has_verifier=True) == {"select": "vote", "max_samples": 64}
    assert pooled_options("auto", {"stop_share": 0.9}, has_verifier=True)["stop_share"] == 0.9


def test_the_first_wave_is_a_full_round_each_when_the_pool_affords_it() -> None:
    assert first_wave(Pool(Budget(tokens=10 * 4 * 100)), 10, round_size=4, cap=64, max_tokens=100) == 4
    assert first_wave(Pool(Budget(tokens=10 * 2 * 100 + 99)), 10, round_size=4, cap=64, max_tokens=100) == 2
    assert first_wave(Pool(Budget(calls=10)), 10, round_size=4, cap=3, max_tokens=100) == 3


def test_closed_and_capped_questions_get_no_round() -> None:
    pool = Pool(Budget(tokens=10_000))
    grants = next_wave([standing(0, open=False), standing(1, drawn=16), standing(2, drawn=14), standing(3)], pool,
                       round_size=4, max_tokens=100)
    assert grants == {2: 2, 3: 4}


def test_a_short_pool_goes_to_the_least_settled_questions_first() -> None:
    pool = Pool(Budget(tokens=1000))
    pool.tokens_spent = 100  # 900 left: two rounds of 4 x 100 and one sample
    grants = next_wave([standing(0, margin=0.6), standing(1, margin=0.1), standing(2, margin=0.3),
                        standing(3, margin=0.9)], pool, round_size=4, max_tokens=100)
    assert grants == {1: 4, 2: 4, 0: 1}
    assert sum(grants.values()) * 100 <= 900


def test_first_rounds_a_short_pool_cut_down_are_completed_first() -> None:
    pool = Pool(Budget(tokens=1000))  # ten samples' worth
    grants = next_wave([standing(0, drawn=1, margin=1.0), standing(1, drawn=8, margin=0.0),
                        standing(2, drawn=2, margin=0.0), standing(3, drawn=1, margin=0.5)], pool,
                       round_size=4, max_tokens=100)
    assert grants == {2: 2, 3: 3, 0: 3, 1: 2}


def test_calls_and_time_limit_the_wave() -> None:
    pool = Pool(Budget(calls=12))
    pool.calls_spent = 10
    assert next_wave([standing(i) for i in range(5)], pool, round_size=4, max_tokens=100) == {0: 4, 1: 4}
    now = [0.0]
    timed = Pool(Budget(wall_s=5.0), clock=lambda: now[0])
    assert next_wave([standing(0)], timed, round_size=4, max_tokens=100) == {0: 4}
    now[0] = 5.0
    assert next_wave([standing(0)], timed, round_size=4, max_tokens=100) == {}


def searcher(index: int, *, searches: int = 1, cap: int = 4, open: bool = True, margin: float = 0.5,
             next_tokens: int | None = 1000) -> SearchStanding:
    return SearchStanding(index=index, searches=searches, cap=cap, open=open, margin=margin, next_tokens=next_tokens)


def test_a_search_wave_gives_whole_searches_to_the_least_settled_first() -> None:
    pool = Pool(Budget(tokens=10_000))
    pool.tokens_spent = 7_500  # 2500 left
    grants = search_wave([searcher(0, margin=0.6), searcher(1, margin=0.1, next_tokens=2000),
                          searcher(2, margin=0.3), searcher(3, open=False, margin=1.0),
                          searcher(4, searches=4, margin=0.0), searcher(5, margin=0.7, next_tokens=500)], pool)
    # The least settled takes 2000; the next needs 1000 and waits; a smaller grant behind it still fits.
    assert grants == {1: Grant(tokens=2000, calls=None), 5: Grant(tokens=500, calls=None)}


def test_a_search_wave_shares_calls_and_stops_at_the_time_limit() -> None:
    pool = Pool(Budget(tokens=100_000, calls=40))
    pool.calls_spent = 10
    grants = search_wave([searcher(i, searches=0, margin=0.0) for i in range(4)], pool)
    assert grants == {i: Grant(tokens=1000, calls=7) for i in range(4)}
    short = Pool(Budget(calls=3))
    assert len(search_wave([searcher(i, next_tokens=None) for i in range(5)], short)) == 3
    now = [0.0]
    timed = Pool(Budget(wall_s=5.0), clock=lambda: now[0])
    assert search_wave([searcher(0, next_tokens=None)], timed) == {0: Grant(tokens=None, calls=None)}
    now[0] = 5.0
    assert search_wave([searcher(0, next_tokens=None)], timed) == {}


def test_a_batch_budget_must_give_each_search_one_step() -> None:
    with pytest.raises(ConfigError, match=r"cannot give each of 10 questions' searches one step of up to "
                                          r"max_step_tokens=24"):
        check_affordable_search(Budget(tokens=239), 10, 24)
    check_affordable_search(Budget(tokens=240), 10, 24)


def test_a_refused_batch_budget_can_be_worded_as_the_budget_each_question_was_given() -> None:
    """``ttc eval --budget-scope batch`` sets the budget a question: its refusal spoke of "each of 1 questions"."""
    with pytest.raises(UnaffordableBatch) as sampled:
        check_affordable(Budget(tokens=1200), 4, 512)
    assert sampled.value.per_question("--budget", option_flag="-o") == (
        "--budget 300 tokens a question cannot give each question one sample of up to max_tokens=512: raise --budget "
        "to at least 512 or lower max_tokens (-o max_tokens=N)")
    with pytest.raises(UnaffordableBatch) as searched:
        check_affordable_search(Budget(tokens=10), 1, 24)
    assert searched.value.per_question("budget") == (
        "budget 10 tokens a question cannot give each question's search one step of up to max_step_tokens=24: raise "
        "budget to at least 24 or lower max_step_tokens")


def test_a_grant_the_pool_cannot_afford_whole_shrinks_to_what_is_left_down_to_an_even_share() -> None:
    """Each further grant doubles: after a first wave of two questions had been granted the whole pool, a second
    search needed the whole pool again, so a batch of two never searched twice however little it had spent."""
    pool = Pool(Budget(tokens=2048))
    pool.tokens_spent = 839  # 1209 left
    standings = [SearchStanding(index=i, searches=1, cap=4, open=True, margin=0.5, next_tokens=2048,
                                least_tokens=1024) for i in range(2)]
    assert search_wave(standings, pool) == {0: Grant(tokens=1209, calls=None)}  # the other's 1024 no longer fits
    pool.tokens_spent = 1100  # 948 left: less than an even share, so no search
    assert search_wave(standings, pool) == {}
    whole = [replace(s, least_tokens=None) for s in standings]  # a named search keeps its grant, or waits
    pool.tokens_spent = 0
    assert search_wave(whole, pool) == {0: Grant(tokens=2048, calls=None)}
