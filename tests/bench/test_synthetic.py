"""The synthetic benchmark: determinism, exact step values, step labels, answer checks, stateful contexts."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc.bench import synthetic
from ttc.bench.synthetic import (
    EVAL_SEEDS,
    TRAIN_SEEDS,
    SyntheticProblem,
    check_answer,
    evaluate,
    extract_answer,
    generate,
    generate_stateful,
    label_steps,
    renamed,
    split_steps,
    varied_solution,
)
from ttc.errors import ConfigError
from ttc.models.mini.tokenizer import BAD_TOKEN, CHARACTERS, GOOD_TOKEN, STEP_TAG

STEP = re.compile(r"^(\d+) ([-+*/]) (\d+)$")


def _value_of(expr: str) -> int | None:
    match = STEP.match(expr)
    assert match is not None, expr
    return evaluate(int(match[1]), match[2], int(match[3]))


def test_same_seed_same_problems_and_different_seeds_differ() -> None:
    assert generate(7, 40) == generate(7, 40)
    assert generate(7, 40) != generate(8, 40)
    assert generate(7, 40)[:10] == generate(7, 10)
    assert generate_stateful(3, 4, 3) == generate_stateful(3, 4, 3)
    assert generate_stateful(3, 4, 3) != generate_stateful(4, 4, 3)


def test_generation_ignores_the_global_random_state() -> None:
    import random

    random.seed(1)
    first = generate(11, 20)
    random.seed(2)
    assert generate(11, 20) == first


def test_train_and_eval_seeds_are_disjoint() -> None:
    assert set(TRAIN_SEEDS).isdisjoint(EVAL_SEEDS)


@pytest.mark.parametrize("level", range(1, 9))
def test_every_step_value_is_its_expression_and_the_solution_is_in_the_fixed_format(level: int) -> None:
    for problem in generate(level * 101, 30, levels=[level]):
        assert problem.level == level == len(problem.steps)
        for step in problem.steps:
            assert _value_of(step.expr) == step.value
            assert 0 <= step.value <= synthetic.MAX_VALUE
        lines = problem.solution.split("\n")
        assert lines[:-1] == [f"{s.expr} = {s.value}" for s in problem.steps]
        assert lines[-1] == f"The answer is {problem.answer}."
        assert problem.answer == str(problem.steps[-1].value)
        assert label_steps(problem, problem.solution) == [True] * (level + 1)


def test_levels_cycle_evenly_and_harder_levels_use_larger_operands() -> None:
    problems = generate(5, 800)
    counts = {level: sum(p.level == level for p in problems) for level in range(1, 9)}
    assert set(counts.values()) == {100}

    def biggest(level: int) -> int:
        return max(int(n) for p in problems if p.level == level for n in re.findall(r"\d+", p.question))
    assert biggest(1) < biggest(8)


def test_each_step_uses_numbers_from_the_question_or_earlier_steps() -> None:
    """Nothing in a solution is invented: every operand is stated in the question or computed before."""
    for problem in generate(21, 200):
        known = set(re.findall(r"\d+", problem.question))
        for step in problem.steps:
            a, _, b = step.expr.split(" ")
            assert a in known and b in known, (problem.question, step)
            known.add(str(step.value))


def test_reserved_tokens_never_occur_in_benchmark_text() -> None:
    texts = [p.question + p.solution for p in generate(3, 400)]
    texts += [p.question + p.solution for c in generate_stateful(3, 30, 3) for p in c.problems]
    allowed = set(CHARACTERS) - {STEP_TAG, GOOD_TOKEN, BAD_TOKEN}
    assert all(set(text) <= allowed for text in texts)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="levels"):
        generate(0, 3, levels=[0])
    with pytest.raises(ConfigError, match="levels"):
        generate(0, 3, levels=[])
    with pytest.raises(ConfigError, match="n must"):
        generate(0, -1)
    with pytest.raises(ConfigError, match="questions_per_context"):
        generate_stateful(0, 2, 0)
    # A float count ran as its ceiling (2.5 questions became 3) or failed in range() with a raw TypeError.
    with pytest.raises(ConfigError, match=r"n must be an int >= 0, got 2\.5"):
        generate(0, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="need ints n_contexts >= 0 and questions_per_context >= 1"):
        generate_stateful(0, 2, 2.5)  # type: ignore[arg-type]


def test_label_steps_on_hand_made_solutions() -> None:
    problem = SyntheticProblem(
        question="Ann has 12 pens. Ann buys 7 more. Ann gives 5 to Ben. How many pens does Ann have?",
        answer="14",
        steps=(synthetic.Step("12 + 7", 19), synthetic.Step("19 - 5", 14, inputs=(0,))),
        level=2,
        solution="12 + 7 = 19\n19 - 5 = 14\nThe answer is 14.",
    )
    assert label_steps(problem, problem.solution) == [True, True, True]
    # a wrong value makes that step and everything after it wrong, even a right-looking final answer
    assert label_steps(problem, "12 + 7 = 18\n18 - 4 = 14\nThe answer is 14.") == [False, False, False]
    # right value but arithmetic that does not hold is wrong
    assert label_steps(problem, "12 + 8 = 19\n19 - 5 = 14\nThe answer is 14.") == [False, False, False]
    # the first step right, the second wrong
    assert label_steps(problem, "12 + 7 = 19\n19 - 6 = 13\nThe answer is 13.") == [True, False, False]
    # steps right, final answer wrong or malformed
    assert label_steps(problem, "12 + 7 = 19\n19 - 5 = 14\nThe answer is 15.") == [True, True, False]
    assert label_steps(problem, "12 + 7 = 19\n19 - 5 = 14\nanswer: 14") == [True, True, False]
    # an extra step instead of the answer line, and garbage lines
    assert label_steps(problem, "12 + 7 = 19\n19 - 5 = 14\n14 + 0 = 14") == [True, True, False]
    assert label_steps(problem, "12 + 7 = 19\nnineteen minus five") == [True, False]
    # a truncated solution is labelled as far as it goes; blank lines do not count as steps
    assert label_steps(problem, "12 + 7 = 19\n\n") == [True]
    assert label_steps(problem, "") == []


def test_label_steps_on_corrupted_generated_solutions() -> None:
    for problem in generate(33, 60, levels=[2, 3, 4, 5]):
        lines = problem.solution.split("\n")
        for i, step in enumerate(problem.steps):
            corrupted = list(lines)
            corrupted[i] = f"{step.expr} = {step.value + 1}"
            labels = label_steps(problem, "\n".join(corrupted))
            assert labels == [True] * i + [False] * (len(lines) - i)


def test_check_answer_uses_the_last_answer_line() -> None:
    problem = generate(2, 1)[0]
    assert check_answer(problem, problem.solution)
    assert check_answer(problem, f"The answer is 1000.\nThe answer is {problem.answer}.")
    assert not check_answer(problem, f"The answer is {problem.answer}.\nThe answer is 1000.")
    assert not check_answer(problem, problem.answer)
    assert extract_answer("The answer is 007.") == "7"
    assert extract_answer("no answer") is None


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(range(1, 9)))
def test_any_seed_gives_consistent_problems(seed: int, level: int) -> None:
    (problem,) = generate(seed, 1, levels=[level])
    assert len(problem.steps) == level
    assert all(_value_of(s.expr) == s.value for s in problem.steps)
    assert check_answer(problem, problem.solution)


def test_stateful_contexts_share_a_paragraph_and_each_question_is_solvable_from_it() -> None:
    contexts = generate_stateful(9, 20, 3)
    assert len(contexts) == 20
    for context in contexts:
        assert len(context.queries) == len(context.problems) == 3
        for query, problem in zip(context.queries, context.problems, strict=True):
            assert problem.question == f"{context.context} {query}"
            assert 1 <= len(problem.steps) <= 7
            known = set(re.findall(r"\d+", context.context))
            for step in problem.steps:
                assert _value_of(step.expr) == step.value
                a, _, b = step.expr.split(" ")
                assert a in known and b in known
                known.add(str(step.value))
            assert label_steps(problem, problem.solution) == [True] * (len(problem.steps) + 1)


def test_stateful_notes_derive_every_count_and_the_noted_solutions_read_them_back() -> None:
    for context in generate_stateful(19, 30, 4):
        lines = context.notes.splitlines()
        assert context.notes.endswith("\n") and len(lines) == 1 + 4 * 3
        sentences = context.context.split(". ")
        counts = {lines[0].split(": ")[0]: int(lines[0].split(": ")[1])}
        assert sentences[0].startswith(f"{lines[0].split(': ')[0]} has {lines[0].split(': ')[1]} ")
        for k in range(3):
            sentence, base, line, fact = lines[1 + 4 * k: 5 + 4 * k]
            assert sentence.rstrip(".") == sentences[k + 1].rstrip(".")
            name, value = base.split(": ")
            assert sentence.endswith(f" {name}.") and counts[name] == int(value)
            expr, _, result = line.partition(" = ")
            assert expr.startswith(f"{value} ") and _value_of(expr) == int(result)
            assert fact == f"{sentence.split(' ')[0]}: {result}"
            counts[sentence.split(" ")[0]] = int(result)
        for query, problem, noted in zip(context.queries, context.problems, context.noted_solutions, strict=True):
            asked = re.findall(r"\b([A-Z][a-z]+)\b", query.split(" many ")[1])
            read = [f"{name}: {counts[name]}" for name in asked]
            assert noted.splitlines()[:len(read)] == read
            assert check_answer(problem, noted)
            assert set(noted) <= set(CHARACTERS) and set(context.notes) <= set(CHARACTERS)


def test_split_steps_strips_lines_and_drops_blank_ones() -> None:
    assert split_steps(" 1 + 2 = 3 \n\nThe answer is 3.\n") == ["1 + 2 = 3", "The answer is 3."]


def _all_problems() -> list[SyntheticProblem]:
    return [*generate(8, 240), *(p for c in generate_stateful(8, 40, 3) for p in c.problems)]


def test_step_inputs_are_earlier_steps_whose_values_are_operands() -> None:
    """The step graph is what varied orders and labels rely on: each input comes earlier and is an operand, and
    every step but the last feeds a later one (nothing computed is left unused)."""
    for problem in _all_problems():
        used: set[int] = set()
        for i, step in enumerate(problem.steps):
            a, _, b = step.expr.split(" ")
            operands = [int(a), int(b)]
            for k in step.inputs:
                assert k < i, (problem.question, step)
                operands.remove(problem.steps[k].value)  # raises when the input is not an operand
            used.update(step.inputs)
        assert used == set(range(len(problem.steps) - 1)), problem.question


def test_the_step_graph_leaves_the_generated_problems_unchanged() -> None:
    """Same questions and the same fixed-order solutions as before the graph existed: the bundled models were
    trained on these, and seeds must keep naming the same problems."""
    problems = generate(1_000_000, 3)
    assert [p.solution for p in problems] == [
        "2 + 4 = 6\nThe answer is 6.",
        "4 - 1 = 3\n3 + 5 = 8\nThe answer is 8.",
        "11 - 8 = 3\n3 * 3 = 9\n9 + 7 = 16\nThe answer is 16.",
    ]


def test_varied_solutions_are_valid_deterministic_and_several() -> None:
    distinct = 0
    for problem in _all_problems():
        texts = [varied_solution(problem, random.Random(seed)) for seed in range(6)]
        assert texts[0] == varied_solution(problem, random.Random(0))
        for text in texts:
            assert all(label_steps(problem, text)), (problem.question, text)
            assert check_answer(problem, text)
            lines = split_steps(text)[:-1]
            assert sorted(int(line.rsplit(" ", 1)[1]) for line in lines) == sorted(s.value for s in problem.steps)
        distinct += len(set(texts)) > 1
    assert distinct > 0.8 * len(_all_problems())


def test_a_product_from_the_question_may_come_before_the_count_it_joins() -> None:
    problem = next(
        p for p in generate(4, 200, levels=[3])
        if any(not s.inputs for s in p.steps[1:]) and p.steps[0].value != p.steps[1].value
    )
    i = next(i for i, s in enumerate(problem.steps) if i > 0 and not s.inputs)  # the boxes (or rate) product
    lines = problem.solution.split("\n")
    hoisted = [lines[i], *lines[:i], *lines[i + 1 :]]
    assert label_steps(problem, "\n".join(hoisted)) == [True] * len(lines)
    # the step that adds the product cannot come before it
    joined = [*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]]
    assert label_steps(problem, "\n".join(joined))[i] is False


def test_two_chains_of_a_together_question_may_come_in_either_order() -> None:
    problem = next(
        p for c in generate_stateful(2, 40, 3) for p in c.problems
        if "together" in p.question and len(p.steps[-1].inputs) == 2 and 0 not in p.steps[-1].inputs
        and all(not s.inputs or s.inputs == (k - 1,) for k, s in enumerate(p.steps[:-1]))
        and p.steps[-1].inputs[1] == len(p.steps) - 2 and p.steps[len(p.steps) - 2].inputs == ()
    )
    lines = problem.solution.split("\n")
    b_first = [lines[-3], *lines[:-3], *lines[-2:]]
    assert label_steps(problem, "\n".join(b_first)) == [True] * len(lines)


def test_nothing_after_the_answer_line_is_right() -> None:
    problem = generate(5, 1, levels=[2])[0]
    text = f"{problem.solution}\n{problem.solution.split(chr(10))[-1]}"
    assert label_steps(problem, text) == [True, True, True, False]
    early = f"{problem.solution.split(chr(10))[0]}\nThe answer is {problem.answer}."
    assert label_steps(problem, early) == [True, False]


def test_labels_read_the_answer_as_check_answer_does_and_survive_huge_numbers() -> None:
    """'The answer is 07.' graded right and labelled wrong; a 5000-digit number crashed int() in the labeller."""
    problem = generate(5, 1, levels=[1])[0]
    padded = problem.solution.replace(f"The answer is {problem.answer}.", f"The answer is 0{problem.answer}.")
    assert label_steps(problem, padded) == [True, True] and check_answer(problem, padded)
    assert label_steps(problem, "9" * 5000 + " + 1 = 1") == [False]
    assert not check_answer(problem, "The answer is " + "7" * 4301 + ".")
    decimal = problem.solution.replace(f"The answer is {problem.answer}.", f"The answer is {problem.answer}.5.")
    assert not check_answer(problem, decimal)  # it read the whole part and graded "N.5" right


def test_a_negative_seed_is_refused_since_it_replays_its_positive_twin() -> None:
    from ttc.bench.totals import generate_totals

    for make in (lambda: generate(-1_000_000, 2), lambda: generate_totals(-5, 2),
                 lambda: generate_stateful(-5, 1, 1)):
        with pytest.raises(ConfigError, match="seed must be an int >= 0"):
            make()


def test_context_question_lines_are_judged_by_what_they_compute() -> None:
    """Two ready steps with one value (7 * 2 and 7 + 7 are both 14) are told apart by their operands, in whichever
    order a solution takes them; a line that only lands on a step's value is wrong."""
    contexts = generate_stateful(1_000_579, 2, 3)
    problem = next(p for c in contexts for p in c.problems
                   if p.question.startswith("Sam has 7 apples") and "Sue and Ben" in p.question)
    assert [s.line for s in problem.steps] == ["7 * 2 = 14", "7 + 7 = 14", "14 - 3 = 11", "14 + 11 = 25"]
    other_order = "7 + 7 = 14\n14 - 3 = 11\n2 * 7 = 14\n14 + 11 = 25\nThe answer is 25."
    assert label_steps(problem, other_order) == [True] * 5
    for seed in range(20):
        assert all(label_steps(problem, varied_solution(problem, random.Random(seed))))
    made_up = "\n".join(f"{s.value - 1} + 1 = {s.value}" for s in problem.steps) + "\nThe answer is 25."
    assert label_steps(problem, made_up) == [False] * 5


def test_each_person_of_a_context_is_asked_about_alone_with_their_count() -> None:
    for context in generate_stateful(11, 20, 3):
        people = context.each_person()
        assert len(people) == 4 and len({name for name, _, _ in people}) == 4
        assert all(name in context.context and f"{name}: {count}\n" in context.notes for name, _, count in people)
        things = context.queries[0].split(" ")[2]
        assert [q for _, q, _ in people] == [f"How many {things} does {n} have?" for n, _, _ in people]
        # a question the context itself asks about one person has that person's count as its answer
        for query, problem in zip(context.queries, context.problems, strict=True):
            for _, question, count in people:
                if query == question:
                    assert problem.answer == count


def test_a_renamed_problem_tells_the_same_numbers_about_other_people_and_things() -> None:
    from ttc.bench.totals import generate_totals

    words = re.compile(r"[A-Za-z]+")
    for problem in [*generate(EVAL_SEEDS.start, 40), *generate_totals(EVAL_SEEDS.start, 16)]:
        other = renamed(problem, random.Random(3))
        assert other == renamed(problem, random.Random(3))
        assert (other.answer, other.steps, other.solution, other.terms) == (
            problem.answer, problem.steps, problem.solution, problem.terms)
        assert re.findall(r"\d+", other.question) == re.findall(r"\d+", problem.question)
        before, after = words.findall(problem.question), words.findall(other.question)
        assert len(before) == len(after)
        swap: dict[str, str] = {}
        for old, new in zip(before, after, strict=True):
            if old in synthetic.NAMES or old in synthetic.OBJECTS:
                assert swap.setdefault(old, new) == new  # the same person or thing is renamed the same way
                assert (new in synthetic.NAMES) == (old in synthetic.NAMES)
            else:
                assert old == new
        assert len(set(swap.values())) == len(swap)  # different people stay different
    changed = sum(renamed(p, random.Random(i)).question != p.question for i, p in enumerate(generate(5, 40)))
    assert changed >= 38
