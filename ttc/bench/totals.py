"""Totals questions: several people's counts added up, where any grouping of the sum is a right solution.

The word problems of :mod:`ttc.bench.synthetic` are one chain of events on one count, so the right answer has one
chain of computations to it and a misread sentence is misread in every sample: majority voting cannot beat greedy
decoding there. Here the answer is a sum of terms (``Ann has 12 pens. Ben has 3 bags of 4 pens. ...``) and every
grouping of the sum is valid, so a right answer is reached by many chains whose intermediate values differ, and a
slip (a number added twice, one left out, a wrong carry) lands on a different wrong total in different chains.
That is the structure self-consistency feeds on with real models, where many derivations agree on the right
answer and wrong ones scatter.

Solutions keep the benchmark's one format (``a op b = c`` per line, then ``The answer is N.``); a level is the
number of steps: one product per bag term, then one addition fewer than there are terms.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from ttc.bench.synthetic import (
    LEVELS,
    NAMES,
    OBJECTS,
    Step,
    SyntheticProblem,
    Term,
    check_levels,
    check_seed,
    evaluate,
    label_lines,
    parse_step,
    solution_text,
)
from ttc.errors import ConfigError
from ttc.types import is_int

MAX_TOTAL = 99  # two-digit sums: carries are the arithmetic to get right
MAX_COUNT = 30
PEOPLE = range(2, 6)


def _people_for(level: int) -> list[int]:
    """How many terms a level allows: ``people - 1`` additions plus at most one product per person."""
    return [n for n in PEOPLE if n - 1 <= level <= 2 * n - 1]


def random_chain(terms: Sequence[Term], rng: random.Random) -> list[Step]:
    """One valid solution drawn at random: products and additions of any two available values, in any order.

    Each step's ``inputs`` name the earlier steps whose values it adds (values read from the question have none).
    """
    pending = [t for t in terms if t.per_bag is not None]
    available: list[tuple[int, int | None]] = [(t.count, None) for t in terms if t.per_bag is None]
    steps: list[Step] = []
    while pending or len(available) > 1:
        options = (["product"] if pending else []) + (["sum"] if len(available) >= 2 else [])
        if rng.choice(options) == "product":
            term = pending.pop(rng.randrange(len(pending)))
            assert term.per_bag is not None
            a, b = (term.count, term.per_bag) if rng.random() < 0.5 else (term.per_bag, term.count)
            steps.append(Step(f"{a} * {b}", term.value))
        else:
            x, x_step = available.pop(rng.randrange(len(available)))
            y, y_step = available.pop(rng.randrange(len(available)))
            inputs = tuple(k for k in (x_step, y_step) if k is not None)
            steps.append(Step(f"{x} + {y}", x + y, inputs))
        available.append((steps[-1].value, len(steps) - 1))
    return steps


def _one_problem(rng: random.Random, level: int) -> SyntheticProblem:
    people = _people_for(level)
    while True:
        n = rng.choice(people)
        names = rng.sample(NAMES, n)
        things = rng.choice(OBJECTS)
        bagged = set(rng.sample(range(n), level - (n - 1)))
        terms: list[Term] = []
        sentences: list[str] = []
        for i, name in enumerate(names):
            if i in bagged:
                term = Term(rng.randint(2, 5), rng.randint(2, 9))
                sentences.append(f"{name} has {term.count} bags of {term.per_bag} {things}.")
            else:
                term = Term(rng.randint(2, MAX_COUNT))
                sentences.append(f"{name} has {term.count} {things}.")
            terms.append(term)
        total = sum(t.value for t in terms)
        if total <= MAX_TOTAL:
            break
    steps = random_chain(terms, rng)
    sentences.append(f"How many {things} do they have together?")
    return SyntheticProblem(" ".join(sentences), str(total), tuple(steps), level, solution_text(steps, total),
                            tuple(terms))


def generate_totals(seed: int, n: int, levels: Sequence[int] = LEVELS) -> list[SyntheticProblem]:
    """``n`` totals problems, levels cycling through ``levels``; a pure function of ``(seed, n, levels)``, and
    the first ``k`` problems of a larger ``n`` are the same ``k``. Each reference solution is one grouping drawn
    from the same seed (:func:`random_chain`)."""
    if not is_int(n) or n < 0:  # 2.5 raised a raw TypeError and True made one problem, as in generate
        raise ConfigError(f"n must be an int >= 0, got {n!r}")
    chosen = check_levels(levels)
    rng = check_seed(seed)
    return [_one_problem(rng, chosen[i % len(chosen)]) for i in range(n)]


def label_total_steps(problem: SyntheticProblem, solution_text: str) -> list[bool]:
    """One label per line (:func:`ttc.bench.synthetic.split_steps`), for a totals problem.

    A step is right when every earlier step was, its arithmetic is right, and it either multiplies out a bag term
    not yet multiplied (operands either way round) or adds two values that are available: terms from the
    question and results of earlier steps, each used once. Once one value is left the next line must be the
    answer line. Anything else (a value used twice, a term left out, an early or wrong answer) is wrong, and so
    is every line after it.
    """
    if not problem.terms:
        raise ConfigError("label_total_steps needs a totals problem (one with terms)")
    bags = Counter((t.count, t.per_bag) for t in problem.terms if t.per_bag is not None)
    available = Counter(t.count for t in problem.terms if t.per_bag is None)
    return label_lines(solution_text, problem.answer, lambda: bool(bags) or available.total() > 1,
                       lambda line: _apply(parse_step(line), bags, available))


def _apply(parsed: tuple[int, str, int, int] | None, bags: Counter[tuple[int, int]],
           available: Counter[int]) -> bool:
    """Do the step on the state (the bags left, the values available) when it is a valid one."""
    if parsed is None:
        return False
    a, op, b, claimed = parsed
    if evaluate(a, op, b) != claimed:
        return False
    if op == "*":
        bag = next((key for key in ((a, b), (b, a)) if bags[key] > 0), None)
        if bag is None:
            return False
        bags[bag] -= 1
        if not bags[bag]:
            del bags[bag]  # an empty Counter is falsy: no bag left to multiply out
    elif op == "+":
        need = Counter([a, b])
        if any(available[v] < k for v, k in need.items()):
            return False
        available.subtract(need)
    else:
        return False
    available[claimed] += 1
    return True


__all__ = ["MAX_TOTAL", "generate_totals", "label_total_steps", "random_chain"]
