"""Groupings of a word problem's runs: drawn solutions are right and varied, and labels follow every grouping."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ttc.bench.groupings import MAX_GROUPED, commuted_solution, grouped_solution, label_grouped_steps
from ttc.bench.synthetic import (
    MAX_VALUE,
    Event,
    SyntheticProblem,
    Term,
    check_answer,
    generate,
    generate_stateful,
    label_steps,
    split_steps,
    varied_solution,
)


def _reference(start: Term, events: Sequence[Event]) -> tuple[list[str], int]:
    """The fixed solution's lines and answer, built from a start and events: each product right before the
    count it joins, as the generator writes it."""
    count, lines = start.value, []
    if start.per_bag is not None:
        lines.append(f"{start.count} * {start.per_bag} = {start.value}")
    for event in events:
        if event.amount.per_bag is not None:
            lines.append(f"{event.amount.count} * {event.amount.per_bag} = {event.amount.value}")
        value = event.apply(count)
        assert value is not None
        lines.append(f"{count} {event.op} {event.amount.value} = {value}")
        count = value
    return lines, count


def _pens(question: str, start: Term, *events: Event) -> SyntheticProblem:
    """A word problem built from its start and events the way the generator builds one (reference order)."""
    lines, count = _reference(start, events)
    return SyntheticProblem(f"{question} How many pens now?", str(count), (), len(lines),
                            "\n".join([*lines, f"The answer is {count}."]), start=start, events=events)


RUN_THEN_DOUBLE = _pens("Ann has 25 pens. Ann gives 4 to Ben. Ann buys 9 more. Ann gets 2 times as many. Ann loses 3.",
                        Term(25), Event("-", Term(4)), Event("+", Term(9)), Event("*", Term(2)), Event("-", Term(3)))


def _values(text: str) -> list[int]:
    return [int(line.rsplit(" ", 1)[1]) for line in split_steps(text)[:-1]]


def test_a_word_problem_s_events_rebuild_its_reference_solution() -> None:
    """``start`` and ``events`` are what other orders and their labels are drawn from, so in the reference order
    they must give back exactly the fixed solution."""
    for problem in generate(8, 400):
        assert problem.start is not None and len(problem.events) >= 1
        lines, answer = _reference(problem.start, problem.events)
        assert "\n".join([*lines, f"The answer is {answer}."]) == problem.solution


def test_commuted_orders_are_right_and_reach_the_answer_through_other_counts() -> None:
    other_counts = 0
    for problem in generate(8, 400):
        assert all(label_steps(problem, problem.solution)), problem.solution
        texts = [commuted_solution(problem, random.Random(seed)) for seed in range(6)]
        assert texts[0] == commuted_solution(problem, random.Random(0))
        for text in texts:
            assert all(label_steps(problem, text)), (problem.question, text)
            assert check_answer(problem, text)
            assert all(0 <= v <= MAX_VALUE for v in _values(text))
        other_counts += any(set(_values(text)) - {s.value for s in problem.steps} for text in texts)
    assert other_counts > 0.3 * 400
    # a context question has no events: it gets the step graph's orders
    context = generate_stateful(8, 1, 1)[0].problems[0]
    assert commuted_solution(context, random.Random(0)) == varied_solution(context, random.Random(0))


def test_drawn_groupings_are_right_deterministic_and_reach_other_values() -> None:
    totalled = other_values = 0
    for problem in generate(4, 400):
        texts = [grouped_solution(problem, random.Random(seed)) for seed in range(8)]
        assert texts[0] == grouped_solution(problem, random.Random(0))
        reference = set(_values(problem.solution))
        for text in texts:
            assert check_answer(problem, text)
            assert all(label_grouped_steps(problem, text)), (problem.question, text)
            assert all(0 <= v <= MAX_GROUPED for v in _values(text))
        other_values += any(set(_values(text)) - reference for text in texts)
        # a line that totals two amounts of the question, neither of them the running count
        totalled += any(line.split(" ")[0] not in {str(v) for v in [problem.start.value, *_values(text)]}
                        for text in texts for line in split_steps(text)[:-1]
                        if " + " in line and problem.start is not None)
    assert other_values > 0.4 * 400
    assert totalled > 0.1 * 400


def test_gains_or_losses_may_be_totalled_within_a_run_but_not_across_a_product() -> None:
    problem = RUN_THEN_DOUBLE
    assert problem.solution == "25 - 4 = 21\n21 + 9 = 30\n30 * 2 = 60\n60 - 3 = 57\nThe answer is 57."
    assert all(label_grouped_steps(problem, "25 + 9 = 34\n34 - 4 = 30\n2 * 30 = 60\n60 - 3 = 57\nThe answer is 57."))
    # 4 and 3 are both taken away, but the doubling comes between them: neither total nor order may cross it
    assert label_grouped_steps(problem, "4 + 3 = 7\n25 - 7 = 18") == [False, False]
    assert label_grouped_steps(problem, "25 - 3 = 22\n22 - 4 = 18\n18 + 9 = 27\n27 * 2 = 54") == [False] * 4
    # the doubling waits until the run before it is done
    assert label_grouped_steps(problem, "25 - 4 = 21\n21 * 2 = 42") == [True, False]
    # an amount applied twice, a wrong sign, an early answer
    assert label_grouped_steps(problem, "25 - 4 = 21\n21 - 4 = 17") == [True, False]
    assert label_grouped_steps(problem, "25 + 4 = 29") == [False]
    assert label_grouped_steps(problem, "25 - 4 = 21\nThe answer is 21.") == [True, False]
    assert label_grouped_steps(problem, f"{problem.solution}\n57 + 0 = 57") == [True] * 5 + [False]


def test_totals_of_gains_and_of_losses_are_right_steps() -> None:
    problem = _pens("Ann has 20 pens. Ann gives 4 to Ben. Ann buys 9 more. Ann loses 3. Ann gets 5 a day for 2 days.",
                    Term(20), Event("-", Term(4)), Event("+", Term(9)), Event("-", Term(3)), Event("+", Term(5, 2)))
    assert problem.answer == "32"
    text = "4 + 3 = 7\n5 * 2 = 10\n9 + 10 = 19\n20 + 19 = 39\n39 - 7 = 32\nThe answer is 32."
    assert all(label_grouped_steps(problem, text))
    # a gain and a loss are not totalled; a rate is not added before its product is computed
    assert label_grouped_steps(problem, "9 + 3 = 12") == [False]
    assert label_grouped_steps(problem, "20 + 10 = 30") == [False]
    # an amount used in a total is gone: it cannot also be applied
    assert label_grouped_steps(problem, "4 + 3 = 7\n20 - 4 = 16") == [True, False]


def test_products_of_the_question_may_come_in_any_order_before_their_values_are_used() -> None:
    problem = _pens("Ann has 3 bags of 4 pens. Ann keeps 1 of 2 equal parts. Ann buys 2 boxes of 5.",
                    Term(3, 4), Event("/", Term(2)), Event("+", Term(2, 5)))
    assert problem.solution == "3 * 4 = 12\n12 / 2 = 6\n2 * 5 = 10\n6 + 10 = 16\nThe answer is 16."
    assert all(label_grouped_steps(problem, "4 * 3 = 12\n5 * 2 = 10\n12 / 2 = 6\n6 + 10 = 16\nThe answer is 16."))
    assert all(label_grouped_steps(problem, "2 * 5 = 10\n3 * 4 = 12\n12 / 2 = 6\n6 + 10 = 16\nThe answer is 16."))
    # nothing is applied to the count before the starting bags are multiplied out, nor the boxes before theirs
    assert label_grouped_steps(problem, "2 * 5 = 10\n12 / 2 = 6") == [True, False]
    assert label_grouped_steps(problem, "3 * 4 = 12\n12 / 2 = 6\n6 + 10 = 16") == [True, True, False]


def test_what_a_line_computes_decides_before_its_value() -> None:
    """Taking 4 from 25 leaves 21, which is also the rate's product 7 * 3: each line is judged as what it
    computes, in either order, and a line whose value only matches a step is wrong."""
    problem = _pens("Ann has 25 pens. Ann gets 7 a day for 3 days. Ann gives 4 to Ben.", Term(25),
                    Event("+", Term(7, 3)), Event("-", Term(4)))
    assert problem.solution == "7 * 3 = 21\n25 + 21 = 46\n46 - 4 = 42\nThe answer is 42."
    assert all(label_steps(problem, problem.solution))
    assert all(label_steps(problem, "25 - 4 = 21\n7 * 3 = 21\n21 + 21 = 42\nThe answer is 42."))
    # the rate's count cannot be added before its product is computed
    assert label_steps(problem, "25 - 4 = 21\n21 + 21 = 42") == [True, False]
    # 42 / 2 is 21 too, but it is not the rate's product
    assert label_steps(problem, "25 - 4 = 21\n42 / 2 = 21") == [True, False]


def test_a_line_read_two_ways_is_followed_both_ways() -> None:
    """With a count of 9 and a gain of 9, ``9 + 6 = 15`` either adds the gain of 6 to the count or totals the two
    gains; what follows decides which, and each continuation is right."""
    problem = _pens("Ann has 9 pens. Ann buys 9 more. Ann finds 6 more. Ann gives 4 to Ben.",
                    Term(9), Event("+", Term(9)), Event("+", Term(6)), Event("-", Term(4)))
    assert problem.answer == "20"
    applied = "9 + 6 = 15\n15 - 4 = 11\n11 + 9 = 20\nThe answer is 20."
    totalled = "9 + 6 = 15\n9 - 4 = 5\n5 + 15 = 20\nThe answer is 20."
    assert all(label_grouped_steps(problem, applied))
    assert all(label_grouped_steps(problem, totalled))
    assert label_grouped_steps(problem, "9 + 6 = 15\n15 - 4 = 11\n11 + 15 = 26") == [True, True, False]


def test_values_out_of_range_are_wrong_and_draws_stay_in_range() -> None:
    problem = _pens("Ann has 45 pens. Ann buys 5 boxes of 9. Ann finds 13 more. Ann sells 50.",
                    Term(45), Event("+", Term(5, 9)), Event("+", Term(13)), Event("-", Term(50)))
    assert label_grouped_steps(problem, "5 * 9 = 45\n45 + 45 = 90\n90 + 13 = 103") == [True, True, False]
    for seed in range(30):
        assert all(0 <= v <= MAX_GROUPED for v in _values(grouped_solution(problem, random.Random(seed))))


def test_a_context_question_gets_the_step_graph_orders() -> None:
    context = generate_stateful(8, 1, 1)[0].problems[0]
    assert grouped_solution(context, random.Random(0)) == varied_solution(context, random.Random(0))
