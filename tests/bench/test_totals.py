"""Totals questions: determinism, exact values, any grouping labelled right, slips labelled wrong, the dataset."""

from __future__ import annotations

import random

import pytest

from ttc.bench.datasets import load_dataset
from ttc.bench.synthetic import (
    EVAL_SEEDS,
    Term,
    check_answer,
    label_steps,
    parse_step,
    split_steps,
    varied_solution,
)
from ttc.bench.totals import MAX_TOTAL, generate_totals, label_total_steps, random_chain
from ttc.errors import ConfigError
from ttc.models.mini.tokenizer import CHARACTERS


def test_same_seed_same_problems_and_a_prefix_is_the_same_problems() -> None:
    assert generate_totals(5, 40) == generate_totals(5, 40)
    assert generate_totals(5, 40) != generate_totals(6, 40)
    assert generate_totals(5, 40)[:9] == generate_totals(5, 9)
    random.seed(1)
    first = generate_totals(9, 16)
    random.seed(2)
    assert generate_totals(9, 16) == first


@pytest.mark.parametrize("level", range(1, 9))
def test_a_level_is_its_number_of_steps_and_the_answer_is_the_sum_of_the_terms(level: int) -> None:
    for problem in generate_totals(level, 30, levels=[level]):
        assert len(problem.steps) == level
        assert int(problem.answer) == sum(t.value for t in problem.terms) <= MAX_TOTAL
        assert 2 <= len(problem.terms) <= 5
        assert sum(t.per_bag is not None for t in problem.terms) + len(problem.terms) - 1 == level
        assert problem.steps[-1].value == int(problem.answer)
        assert set(problem.question + problem.solution) <= set(CHARACTERS) | {"\n"}
        for step in problem.steps:
            parsed = parse_step(step.line)
            assert parsed is not None and parsed[3] == step.value
            assert all(k < problem.steps.index(step) for k in step.inputs)


def test_every_grouping_is_labelled_right_and_reaches_the_answer() -> None:
    rng = random.Random(0)
    for problem in generate_totals(11, 80):
        assert label_steps(problem, problem.solution) == [True] * (problem.level + 1)
        chains = {varied_solution(problem, rng) for _ in range(12)}
        for chain in chains:
            assert label_steps(problem, chain) == [True] * (problem.level + 1)
            assert check_answer(problem, chain)
        if problem.level >= 4:
            assert len(chains) > 1  # groupings differ, and with them the intermediate values


def test_slips_are_wrong_from_the_first_one_on() -> None:
    problem = next(p for p in generate_totals(3, 400) if len(p.terms) == 3 and p.level == 3
                   and p.terms[0].count != p.terms[1].count != p.terms[2].count != p.terms[0].count)
    plain = [t.count for t in problem.terms if t.per_bag is None]
    bag = next(t for t in problem.terms if t.per_bag is not None)
    a, b = plain
    total = int(problem.answer)
    product = f"{bag.per_bag} * {bag.count} = {bag.value}"  # operands either way round
    assert label_steps(problem, f"{product}\n{a} + {b} = {a + b}\n{a + b} + {bag.value} = {total}\n"
                                f"The answer is {total}.") == [True] * 4
    # a value used twice, then the rest
    assert label_steps(problem, f"{a} + {a} = {2 * a}\n{product}\nThe answer is {total}.") == [False] * 3
    # a term left out: the answer comes early
    assert label_steps(problem, f"{a} + {b} = {a + b}\nThe answer is {a + b}.") == [True, False]
    # a wrong carry, and a product that is not one of the bags
    assert label_steps(problem, f"{a} + {b} = {a + b + 10}\n{product}") == [False, False]
    assert label_steps(problem, f"{bag.count} * {bag.per_bag + 1} = {bag.count * (bag.per_bag + 1)}") == [False]
    # malformed lines and other operators
    assert label_steps(problem, f"{a} plus {b}")[0] is False
    assert label_steps(problem, f"{a} - {b} = {a - b}")[0] is False
    # the right steps, then a wrong answer, then anything
    right = "\n".join(split_steps(problem.solution)[:-1])
    assert label_steps(problem, f"{right}\nThe answer is {total + 1}.\n{product}") == [True] * 3 + [False, False]


def test_a_repeated_count_may_be_added_as_often_as_it_occurs() -> None:
    problem = next(p for p in generate_totals(4, 3000, levels=[1]) if p.terms[0] == p.terms[1])
    n = problem.terms[0].count
    assert label_steps(problem, f"{n} + {n} = {2 * n}\nThe answer is {2 * n}.") == [True, True]


def test_random_chains_come_from_the_rng_alone() -> None:
    terms = (Term(12), Term(3, 4), Term(7), Term(2, 9))
    assert random_chain(terms, random.Random(1)) == random_chain(terms, random.Random(1))
    values = {tuple(s.value for s in random_chain(terms, random.Random(seed))) for seed in range(40)}
    assert len(values) > 5 and all(v[-1] == 12 + 12 + 7 + 18 for v in values)


def test_bad_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="levels must be"):
        generate_totals(1, 4, levels=[9])
    for n in (-1, 2.5, True, "3"):  # a raw TypeError for 2.5 and "3"; True made one problem
        with pytest.raises(ConfigError, match="n must be an int >= 0"):
            generate_totals(1, n)  # type: ignore[arg-type]
    from ttc.bench.synthetic import generate

    with pytest.raises(ConfigError, match="totals problem"):
        label_total_steps(generate(1, 1)[0], "1 + 2 = 3")


def test_the_dataset_draws_held_out_seeds_with_levels() -> None:
    rows = load_dataset("synthetic-totals", limit=16, seed=2, levels=[3, 4])
    expected = generate_totals(EVAL_SEEDS.start + 2, 16, [3, 4])
    assert [(r.question, r.gold) for r in rows] == [(p.question, p.answer) for p in expected]
    assert [r.meta["level"] for r in rows] == [3, 4] * 8
    assert load_dataset("synthetic-totals", limit=4, offset=2, seed=2) == \
        load_dataset("synthetic-totals", limit=6, seed=2)[2:]
