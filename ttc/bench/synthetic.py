"""Seeded synthetic arithmetic word problems whose every intermediate step can be checked exactly.

Real benchmarks (GSM8K, MATH) only say whether the final answer is right. Process reward models, step-level
search and draft models need to know which *step* went wrong, so this generator keeps the exact value of every
step. The solution format is fixed so that a line of model output can be parsed back into a step::

    12 + 7 = 19
    19 * 3 = 57
    The answer is 57.

One computation per line (``a op b = c`` with ``op`` in ``+ - * /``, division always exact), then the answer
line. Texts are compact on purpose: the bundled mini models read them one character per token.

Seeds: training uses ``TRAIN_SEEDS``; every held-out measurement uses ``EVAL_SEEDS``. The two ranges are
disjoint, and each call to :func:`generate` draws from its own ``random.Random(seed)``, so a problem set is a
pure function of ``(seed, n, levels)``. Disjoint seeds are not disjoint problems where the problems are few: some
level-1 and level-2 questions come out of both ranges.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from ttc.errors import ConfigError
from ttc.types import is_int

TRAIN_SEEDS = range(0, 1_000_000)
"""Seeds the mini models were trained on (and the only ones training may use)."""

EVAL_SEEDS = range(1_000_000, 2_000_000)
"""Held-out seeds: benchmarks and tests measure on these, never train on them."""

LEVELS = range(1, 9)
"""A level is the number of computation steps; operand sizes also grow with it."""

MAX_VALUE = 50
"""No intermediate value exceeds this: small two-digit arithmetic is what a model of a few million parameters
learns on a CPU in well under an hour, so the difficulty comes from the number of steps."""

ANSWER_PREFIX = "The answer is "

NAMES = ("Ann", "Ben", "Eve", "Kim", "Max", "Sam", "Tom", "Amy", "Bob", "Eli", "Meg", "Sue", "Ted", "Kai")
OBJECTS = ("pens", "cards", "coins", "books", "eggs", "apples", "shells", "stamps", "beads", "cups")

# Numbers of at most 18 digits: every value of the family is far smaller, and int() refuses a string past 4300
# digits (a sample that loops on one digit), which would crash the labelling instead of marking the line wrong.
_STEP_LINE = re.compile(r"^(\d{1,18}) ([-+*/]) (\d{1,18}) = (-?\d{1,18})$")
_COUNT_LINE = re.compile(r"^([A-Z][a-z]+): (\d+)$", flags=re.M)  # a person's count in the notes
_ANSWER_LINE = re.compile(r"^The answer is (-?\d{1,18})\.$")
_ANSWER_ANYWHERE = re.compile(r"The answer is (-?\d{1,18})\.(?!\d)")  # "6.5." states no whole number
_NAME_OR_OBJECT = re.compile(r"\b(" + "|".join(NAMES + OBJECTS) + r")\b")


@dataclass(frozen=True)
class Step:
    """One computation: ``expr`` such as ``"12 + 7"`` and its exact integer ``value``.

    ``inputs`` are the indices (in the problem's ``steps``) of the earlier steps whose values this one consumes,
    in operand order; the other operands come from the question. They make the solution a graph rather than a
    list, so any order that computes a step after its inputs is a valid solution (:func:`varied_solution`).
    """

    expr: str
    value: int
    inputs: tuple[int, ...] = ()

    @property
    def line(self) -> str:
        return f"{self.expr} = {self.value}"


@dataclass(frozen=True)
class Term:
    """One person's count in a totals question (:mod:`ttc.bench.totals`): ``count`` things, or ``count`` bags
    of ``per_bag`` when ``per_bag`` is set (a product to compute before it can be added)."""

    count: int
    per_bag: int | None = None

    @property
    def value(self) -> int:
        return self.count if self.per_bag is None else self.count * self.per_bag


@dataclass(frozen=True)
class Event:
    """What one sentence of a word problem does to the running count: ``op`` (``+ - * /``) by ``amount``, a
    number of the question or, with ``per_bag`` set, a product of two (``buys 3 boxes of 4``)."""

    op: str
    amount: Term

    def apply(self, count: int) -> int | None:
        return evaluate(count, self.op, self.amount.value)

    @property
    def additive(self) -> bool:
        """Additions and subtractions of the running count commute: ``(c + a) - b == (c - b) + a``."""
        return self.op in "+-"


@dataclass(frozen=True)
class SyntheticProblem:
    """A question, its exact answer, and the exact value of each step of the reference solution.

    ``start`` and ``events`` are set for the word problems of this module: the count a question starts from and
    what each sentence does to it, from which :mod:`ttc.bench.groupings` draws other orders and groupings of the
    solution and :func:`label_steps` judges them. ``terms`` is empty for the word problems of this module. A
    totals problem (:mod:`ttc.bench.totals`) sets it: its answer is the sum of the terms, any grouping of the sum
    is a valid solution, and :func:`label_steps` and :func:`varied_solution` judge and draw solutions by the terms
    rather than by ``steps``.
    """

    question: str
    answer: str
    steps: tuple[Step, ...]
    level: int
    solution: str
    terms: tuple[Term, ...] = ()
    start: Term | None = None
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class StatefulContext:
    """A paragraph of quantities and relations, and several questions answerable from it.

    ``problems[i].question`` is ``f"{context} {queries[i]}"``, so each problem is self-contained; the split into
    ``context`` and ``queries`` is what sleep-time compute needs (think about the context before the queries).
    """

    context: str
    queries: tuple[str, ...]
    problems: tuple[SyntheticProblem, ...]
    notes: str = ""
    """What thinking about the context alone derives, one line each ending in a newline: the first person's count
    (``Meg: 13``), then for each later person in the context's order their sentence, the count of the person it
    refers to, the computation and their count (``Ted has 9 more cups than Meg.``, ``Meg: 13``, ``13 + 9 = 22``,
    ``Ted: 22``). Each line needs one lookup in what is right above it, which a small model can learn. The
    reference for what a model writes at sleep time."""
    noted_solutions: tuple[str, ...] = ()
    """``noted_solutions[i]`` answers ``queries[i]`` from the context and its ``notes``: the asked counts read back
    (``Sam: 27``), their sum when two are asked, and the answer line."""

    def each_person(self) -> list[tuple[str, str, str]]:
        """``(name, question, count)`` for every person of the context, asked about alone, in the notes' order:
        the check of reading a count back by name, which every answer about a context ends with."""
        counts = dict(_COUNT_LINE.findall(self.notes))
        things = self.queries[0].split(" ")[2]  # every query is "How many {things} ..."
        return [(name, f"How many {things} does {name} have?", count) for name, count in counts.items()]


def evaluate(a: int, op: str, b: int) -> int | None:
    """The exact value of ``a op b``, or None when it is not an integer (inexact division, division by 0)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b != 0 and a % b == 0 else None
    raise ConfigError(f"unknown operator {op!r}; expected one of + - * /")


def solution_text(steps: Sequence[Step], answer: int) -> str:
    """The one fixed solution format: a line per step, then the answer line (no trailing newline)."""
    return "\n".join([*(step.line for step in steps), f"{ANSWER_PREFIX}{answer}."])


def _problem(question: str, steps: list[Step], level: int) -> SyntheticProblem:
    answer = steps[-1].value
    return SyntheticProblem(question, str(answer), tuple(steps), level, solution_text(steps, answer))


def _step(steps: list[Step], a: int, op: str, b: int) -> int:
    value = evaluate(a, op, b)
    if value is None or not 0 <= value <= MAX_VALUE:
        raise AssertionError(f"generator produced an invalid step {a} {op} {b}")  # a bug, never user input
    steps.append(Step(f"{a} {op} {b}", value))
    return value


def _max_operand(level: int) -> int:
    """The largest number an event adds or removes: single digits at level 1, up to 13 at level 8."""
    return 5 + level


# An event turns the current count into a new one and says so in one sentence. It returns None when it does
# not fit the current count (e.g. nothing divides it) and the caller picks another event.
_Event = Callable[[random.Random, str, int, int, list[Step]], "tuple[str, int] | None"]


def _buy(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    b = rng.randint(2, top)
    if cur + b > MAX_VALUE:
        return None
    verb = rng.choice(("buys", "finds", "gets", "wins"))
    return f"{who} {verb} {b} more.", _step(steps, cur, "+", b)


def _receive(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    b = rng.randint(2, top)
    if cur + b > MAX_VALUE:
        return None
    giver = rng.choice([name for name in NAMES if name != who])
    return f"{giver} gives {who} {b}.", _step(steps, cur, "+", b)


def _give(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    if cur < 3:
        return None
    b = rng.randint(1, min(top, cur - 1))
    taker = rng.choice([name for name in NAMES if name != who])
    return f"{who} gives {b} to {taker}.", _step(steps, cur, "-", b)


def _lose(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    if cur < 3:
        return None
    b = rng.randint(1, min(top, cur - 1))
    verb = rng.choice(("loses", "sells", "uses"))
    return f"{who} {verb} {b}.", _step(steps, cur, "-", b)


def _times(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    factors = [k for k in (2, 3) if cur * k <= MAX_VALUE]
    if not factors:
        return None
    k = rng.choice(factors)
    return f"{who} gets {k} times as many.", _step(steps, cur, "*", k)


def _share(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    parts = [k for k in (2, 3) if cur % k == 0 and cur // k >= 2]
    if not parts:
        return None
    k = rng.choice(parts)
    return f"{who} keeps 1 of {k} equal parts.", _step(steps, cur, "/", k)


def _boxes(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    k, m = rng.randint(2, 5), rng.randint(2, 9)
    if cur + k * m > MAX_VALUE:
        return None
    extra = _step(steps, k, "*", m)
    return f"{who} buys {k} boxes of {m}.", _step(steps, cur, "+", extra)


def _rate(rng: random.Random, who: str, cur: int, top: int, steps: list[Step]) -> tuple[str, int] | None:
    r, d = rng.randint(2, 9), rng.randint(2, 5)
    if cur + r * d > MAX_VALUE:
        return None
    extra = _step(steps, r, "*", d)
    return f"{who} gets {r} a day for {d} days.", _step(steps, cur, "+", extra)


_ONE_STEP: tuple[_Event, ...] = (_buy, _receive, _give, _lose, _times, _share)
_TWO_STEP: tuple[_Event, ...] = (_boxes, _rate)


def _one_problem(rng: random.Random, level: int) -> SyntheticProblem:
    who, things = rng.choice(NAMES), rng.choice(OBJECTS)
    top = _max_operand(level)
    steps: list[Step] = []
    if level >= 2 and rng.random() < 0.3:
        k, m = rng.randint(2, 5), rng.randint(2, 9)
        cur = _step(steps, k, "*", m)
        sentences = [f"{who} has {k} bags of {m} {things}."]
        start = Term(k, m)
    else:
        cur = rng.randint(2, 10 + 3 * level)
        sentences = [f"{who} has {cur} {things}."]
        start = Term(cur)
    events: list[Event] = []
    cur_step: int | None = 0 if steps else None  # the step whose value is the running count
    while len(steps) < level:
        pool = _ONE_STEP + _TWO_STEP if level - len(steps) >= 2 else _ONE_STEP
        mark = len(steps)
        made = rng.choice(pool)(rng, who, cur, top, steps)
        if made is None:
            del steps[mark:]
            continue
        sentence, cur = made
        sentences.append(sentence)
        # An event's last step updates the running count; any step before it in the same event multiplies two
        # numbers of the sentence (boxes, a rate) and so depends on nothing.
        last = len(steps) - 1
        running = () if cur_step is None else (cur_step,)
        steps[last] = replace(steps[last], inputs=(*running, *range(mark, last)))
        cur_step = last
        events.append(_event_of(steps[mark:]))
    sentences.append(f"How many {things} now?")
    return replace(_problem(" ".join(sentences), steps, level), start=start, events=tuple(events))


def _event_of(made: Sequence[Step]) -> Event:
    """The event whose steps are ``made``: ``count op b``, or a product ``k * m`` and then ``count + product``."""
    *product, update = made
    _, op, b = update.expr.split(" ")
    if product:
        k, _, m = product[0].expr.split(" ")
        return Event(op, Term(int(k), int(m)))
    return Event(op, Term(int(b)))


def check_levels(levels: Sequence[int]) -> list[int]:
    """``levels`` as a list, or a ConfigError naming the allowed range: also for one level given alone
    (``levels=5``, which ``list`` refused with a raw TypeError) and for a text, whose characters are no levels."""
    if isinstance(levels, str | bytes) or not isinstance(levels, Iterable):
        raise ConfigError(f"levels must be a non-empty selection of 1..8, a list such as [1, 2] ([5] for level 5 "
                          f"alone), got {levels!r}")
    chosen = list(levels)
    if not chosen or any(not is_int(level) or level not in LEVELS for level in chosen):
        raise ConfigError(f"levels must be a non-empty selection of 1..8, got {chosen!r}")
    return chosen


def check_seed(seed: int) -> random.Random:
    """The generator for ``seed``; a negative seed is refused, since ``random.Random(-s)`` draws what ``s`` does and
    a negative training seed would replay a held-out one."""
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0 (training seeds in [{TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop}), "
                          f"held-out ones in [{EVAL_SEEDS.start}, {EVAL_SEEDS.stop})), got {seed!r}")
    return random.Random(seed)


def generate(seed: int, n: int, levels: Sequence[int] = LEVELS) -> list[SyntheticProblem]:
    """``n`` problems, levels cycling through ``levels`` so every level is equally represented.

    Deterministic: the same ``(seed, n, levels)`` always gives the same list, and the first ``k`` problems of
    a larger ``n`` are the same ``k`` problems.
    """
    if not is_int(n) or n < 0:
        raise ConfigError(f"n must be an int >= 0, got {n!r}")
    chosen = check_levels(levels)
    rng = check_seed(seed)
    return [_one_problem(rng, chosen[i % len(chosen)]) for i in range(n)]


def _relation(rng: random.Random, name: str, base: str, base_value: int, things: str,
              steps: list[Step]) -> tuple[str, int]:
    """One sentence relating ``name``'s count to ``base``'s; appends the step that computes it."""
    while True:
        kind = rng.randrange(3)
        if kind == 0 and base_value + 9 <= MAX_VALUE:
            b = rng.randint(2, 9)
            return f"{name} has {b} more {things} than {base}.", _step(steps, base_value, "+", b)
        if kind == 1 and base_value > 3:
            b = rng.randint(1, min(9, base_value - 2))
            return f"{name} has {b} fewer {things} than {base}.", _step(steps, base_value, "-", b)
        if kind == 2 and base_value * 3 <= MAX_VALUE:
            k = rng.randint(2, 3)
            return f"{name} has {k} times as many {things} as {base}.", _step(steps, base_value, "*", k)


def _merge(first: list[Step], second: Sequence[Step]) -> tuple[list[Step], int]:
    """``first`` followed by the steps of ``second`` it lacks (two derivations share their common ancestors),
    with ``second``'s inputs renumbered; also the merged index of ``second``'s last step (-1 when empty)."""
    merged = list(first)
    where: list[int] = []
    for step in second:
        step = replace(step, inputs=tuple(where[k] for k in step.inputs))
        if step in merged:
            where.append(merged.index(step))
        else:
            where.append(len(merged))
            merged.append(step)
    return merged, where[-1] if where else -1


def _stateful_context(rng: random.Random, questions: int) -> StatefulContext:
    """A chain of people whose counts depend on earlier ones; questions ask about one or two of them."""
    people = rng.sample(NAMES, 4)
    things = rng.choice(OBJECTS)
    first = rng.randint(5, 20)
    sentences = [f"{people[0]} has {first} {things}."]
    value = {people[0]: first}
    derivation: dict[str, list[Step]] = {people[0]: []}
    notes = f"{people[0]}: {first}\n"
    for i in range(1, len(people)):
        base = rng.choice(people[:i])
        steps = list(derivation[base])
        sentence, value[people[i]] = _relation(rng, people[i], base, value[base], things, steps)
        if len(steps) > 1:
            steps[-1] = replace(steps[-1], inputs=(len(steps) - 2,))
        sentences.append(sentence)
        derivation[people[i]] = steps
        notes += f"{sentence}\n{base}: {value[base]}\n{steps[-1].line}\n{people[i]}: {value[people[i]]}\n"
    context = " ".join(sentences)
    queries: list[str] = []
    problems: list[SyntheticProblem] = []
    noted: list[str] = []
    while len(problems) < questions:
        a, b = rng.sample(people[1:], 2) if rng.random() < 0.5 else (rng.choice(people[1:]), None)
        steps = list(derivation[a])
        if b is None:
            query = f"How many {things} does {a} have?"
        else:
            if value[a] + value[b] > MAX_VALUE:
                continue
            steps, b_last = _merge(steps, derivation[b])
            query = f"How many {things} do {a} and {b} have together?"
            _step(steps, value[a], "+", value[b])
            a_last = len(derivation[a]) - 1
            steps[-1] = replace(steps[-1], inputs=tuple(k for k in (a_last, b_last) if k >= 0))
        queries.append(query)
        problems.append(_problem(f"{context} {query}", steps, len(steps)))
        answer = steps[-1].value
        read = "".join(f"{name}: {value[name]}\n" for name in (a, b) if name is not None)
        noted.append(read + solution_text([] if b is None else [Step(f"{value[a]} + {value[b]}", answer)], answer))
    return StatefulContext(context, tuple(queries), tuple(problems), notes, tuple(noted))


def generate_stateful(seed: int, n_contexts: int, questions_per_context: int) -> list[StatefulContext]:
    """``n_contexts`` contexts of four related quantities, each with ``questions_per_context`` questions."""
    if not (is_int(n_contexts) and is_int(questions_per_context)) or n_contexts < 0 or questions_per_context < 1:
        # A float count ran (2.5 questions became 3) or failed in range() with a raw TypeError.
        raise ConfigError(f"need ints n_contexts >= 0 and questions_per_context >= 1, got {n_contexts!r} and "
                          f"{questions_per_context!r}")
    rng = check_seed(seed)
    return [_stateful_context(rng, questions_per_context) for _ in range(n_contexts)]


def _ready(steps: Sequence[Step], done: set[int]) -> list[int]:
    """The steps not yet done whose inputs all are: what a valid solution may compute next."""
    return [i for i in range(len(steps)) if i not in done and all(k in done for k in steps[i].inputs)]


def varied_solution(problem: SyntheticProblem, rng: random.Random) -> str:
    """Another valid solution of ``problem``: its steps in a random order that computes each after its inputs
    (a product from the question can come before the count it is added to), with the operands of ``+`` and
    ``*`` in a random order; every value, and so every label, is unchanged.

    One problem then has several right chains, as a real problem has several ways to be solved; the fixed
    order of :attr:`SyntheticProblem.solution` gives the answer exactly one. A totals problem gets a new grouping
    of its sum (:func:`ttc.bench.totals.random_chain`), so its intermediate values change too.
    """
    if problem.terms:
        from ttc.bench.totals import random_chain  # totals builds on this module's types

        return solution_text(random_chain(problem.terms, rng), int(problem.answer))
    steps = problem.steps
    done: set[int] = set()
    order: list[int] = []
    while len(order) < len(steps):
        ready = _ready(steps, done)
        if not ready:
            raise AssertionError("a step depends on a later one")  # a generator bug, never user input
        pick = rng.choice(ready)
        done.add(pick)
        order.append(pick)
    lines = []
    for i in order:
        a, op, b = steps[i].expr.split(" ")
        if op in "+*" and rng.random() < 0.5:
            a, b = b, a
        lines.append(f"{a} {op} {b} = {steps[i].value}")
    return "\n".join([*lines, f"{ANSWER_PREFIX}{problem.answer}."])


def renamed(problem: SyntheticProblem, rng: random.Random) -> SyntheticProblem:
    """The same problem told about other people and other things: every name and object word of the question
    replaced by a random permutation of :data:`NAMES` and of :data:`OBJECTS`, so distinct people stay distinct.

    Numbers, sentences, steps and answer are unchanged, so a model that reads the question rightly writes the
    same solution for every renaming; where its mistakes differ between renamings, they depend on the words it
    read around the numbers rather than on the problem (``benchmarks/renamed_vote.py``).
    """
    people = list(NAMES)
    rng.shuffle(people)
    things = list(OBJECTS)
    rng.shuffle(things)
    swap = dict(zip(NAMES, people, strict=True)) | dict(zip(OBJECTS, things, strict=True))
    return replace(problem, question=_NAME_OR_OBJECT.sub(lambda m: swap[m[0]], problem.question))


def split_steps(solution_text: str) -> list[str]:
    """The non-empty lines of a solution, stripped: the unit that step labels and step scores refer to."""
    return [line.strip() for line in solution_text.split("\n") if line.strip()]


def parse_step(line: str) -> tuple[int, str, int, int] | None:
    """``(a, op, b, claimed)`` of a well-formed step line ``a op b = claimed``, else None."""
    match = _STEP_LINE.match(line)
    if match is None:
        return None
    return int(match[1]), match[2], int(match[3]), int(match[4])


def label_lines(solution_text: str, answer: str, steps_left: Callable[[], bool],
                do_step: Callable[[str], bool]) -> list[bool]:
    """The labelling every family shares, one label per line (see :func:`split_steps`): while ``steps_left()``,
    a line is right when ``do_step(line)`` (which judges it and, when right, does it); then the line must be
    ``The answer is <answer>.``. After the first wrong line, or after the answer, every line is wrong."""
    labels: list[bool] = []
    ok, answered = True, False
    for line in split_steps(solution_text):
        if not ok or answered:
            ok = False
        elif steps_left():
            ok = do_step(line)
        else:
            match = _ANSWER_LINE.match(line)
            # Read as a number, as check_answer reads it: "07" states 7, and labels and grades must agree.
            ok = answered = match is not None and str(int(match[1])) == answer
        labels.append(ok)
    return labels


def label_steps(problem: SyntheticProblem, solution_text: str) -> list[bool]:
    """One label per line of ``solution_text`` (see :func:`split_steps`).

    A word problem is judged by what each line computes, in any order and grouping of its runs of gains and
    losses (:func:`ttc.bench.groupings.label_grouped_steps`); a totals problem by
    :func:`ttc.bench.totals.label_total_steps`. Any other problem (a context question) by its step graph: a line
    is correct when every earlier line was and either it computes a step not yet done all of whose inputs are
    done (its operands, either way round for ``+`` and ``*``, and its value; so any order of
    :func:`varied_solution` labels right), or every step is done and it is ``The answer is <answer>.``. Anything
    else (an extra step, a step repeated, other arithmetic landing on a step's value, a malformed line, an early
    answer) is wrong, and so is every line after it. Where a line could be either of two ready steps, both
    readings are followed.
    """
    if problem.terms:
        from ttc.bench.totals import label_total_steps  # totals builds on this module's types

        return label_total_steps(problem, solution_text)
    if problem.start is not None:
        from ttc.bench.groupings import label_grouped_steps  # groupings builds on this module's types

        return label_grouped_steps(problem, solution_text)
    steps = problem.steps
    # Every reading of the lines so far: a line can compute either of two ready steps with the same expression,
    # and only a later line tells which, so each choice is followed.
    readings: set[frozenset[int]] = {frozenset()}

    def do_step(line: str) -> bool:
        parsed = parse_step(line)
        following = {reading | {i} for reading in readings for i in _ready(steps, set(reading))
                     if parsed is not None and _computes(parsed, steps[i])}
        if following:
            readings.clear()
            readings.update(following)
        return bool(following)

    return label_lines(solution_text, problem.answer, lambda: len(next(iter(readings))) < len(steps), do_step)


def _computes(line: tuple[int, str, int, int], step: Step) -> bool:
    """Whether a parsed line is ``step``'s computation: its operator and operands (either way round for ``+`` and
    ``*``) and its value; a line that only lands on the value by other arithmetic is not."""
    wanted = parse_step(step.line)
    assert wanted is not None, step.line
    a, op, b, claimed = line
    step_a, step_op, step_b, value = wanted
    if op != step_op or claimed != value:
        return False
    return (a, b) == (step_a, step_b) or (op in "+*" and (a, b) == (step_b, step_a))


def extract_answer(text: str) -> str | None:
    """The number in the last ``The answer is N.`` of ``text``, or None when there is none."""
    found = _ANSWER_ANYWHERE.findall(text)
    return str(int(found[-1])) if found else None


def check_answer(problem: SyntheticProblem, text: str) -> bool:
    """Whether ``text`` ends in (contains, last) the answer line with the right number."""
    return extract_answer(text) == problem.answer


__all__ = [
    "EVAL_SEEDS",
    "LEVELS",
    "TRAIN_SEEDS",
    "Event",
    "StatefulContext",
    "Step",
    "SyntheticProblem",
    "Term",
    "check_answer",
    "check_levels",
    "check_seed",
    "evaluate",
    "extract_answer",
    "generate",
    "generate_stateful",
    "label_lines",
    "label_steps",
    "parse_step",
    "renamed",
    "solution_text",
    "split_steps",
    "varied_solution",
]
