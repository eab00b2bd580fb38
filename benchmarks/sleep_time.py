"""Sleep-time compute against test-time compute alone, on the mini stateful reasoner.

Held-out contexts of the ``synthetic-stateful`` family (four people whose counts depend on one another), several
questions about each. Every arm runs through ``ttc.asleep`` / ``ttc.asolve_batch`` on the local engine:

- ``test time, k``: each question asked with the context alone: greedy for k = 1, else the vote of k samples;
- ``sleep s, then k``: notes written about each context before its questions (greedy for s = 1, else the
  consensus of s drafts), then each question asked with the context and the notes, greedy or the vote of k.

Figures per arm: accuracy, test-time tokens per question, sleep tokens per context, and the total per question
when a context's sleep tokens are shared out over its Q questions. Generated tokens are the cost unit (ttc's one
budget unit), as in the sleep-time compute paper. A diagnostic line first: every person of every context asked
about alone with the reference notes, and how often the model reads back their count (every answer ends so).

    python3 benchmarks/sleep_time.py                          # 60 contexts x 5 questions
    python3 benchmarks/sleep_time.py --contexts 24 --questions 3
    python3 benchmarks/sleep_time.py --model runs/stateful/stateful   # a candidate from a training run

The last line is ``name=value`` pairs for the best sleep arm (highest accuracy, then fewest test-time tokens):
``accuracy`` and ``test_time_accuracy`` (the best test-time-only arm's), ``test_time_ratio`` (tokens per question
test-time compute alone needs for that accuracy, over the sleep arm's test-time tokens; a ``>`` lower bound when
no test-time arm reaches it), and ``cost_ratio`` (the same with the sleep tokens shared over the questions).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from arguments import at_least_one, count_list, model_folder, run_script  # noqa: E402

from ttc.api import asolve_batch  # noqa: E402
from ttc.backends.local import LocalBackend  # noqa: E402
from ttc.bench.synthetic import EVAL_SEEDS, StatefulContext, generate_stateful  # noqa: E402
from ttc.concurrency import bounded_gather  # noqa: E402
from ttc.models import MINI_CONTEXT_TEMPLATE, MINI_SLEEP_TEMPLATE, mini_model_path  # noqa: E402
from ttc.sleeptime import asleep  # noqa: E402
from ttc.types import Notes, Usage  # noqa: E402

SEED = EVAL_SEEDS.start + 600_000  # held out, apart from the other benchmarks' problems
ANSWER_TOKENS = 288  # from the context alone the model writes the whole derivation first: up to ~250 characters
NOTE_TOKENS = 288  # the notes are that derivation


@dataclass(frozen=True)
class ArmSpec:
    sleep_drafts: int  # 0: no sleep
    samples: int

    @property
    def name(self) -> str:
        ask = "greedy" if self.samples == 1 else f"vote of {self.samples}"
        if not self.sleep_drafts:
            return f"test time, {ask}"
        notes = "greedy notes" if self.sleep_drafts == 1 else f"consensus of {self.sleep_drafts}"
        return f"sleep ({notes}), {ask}"


@dataclass
class Arm:
    spec: ArmSpec
    right: list[bool] = field(default_factory=list)
    test_tokens: list[int] = field(default_factory=list)
    sleep_tokens: list[int] = field(default_factory=list)
    notes_exact: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return 100 * sum(self.right) / len(self.right)

    @property
    def per_question(self) -> float:
        return statistics.mean(self.test_tokens)

    def total_per_question(self, questions: int) -> float:
        return self.per_question + (statistics.mean(self.sleep_tokens) / questions if self.sleep_tokens else 0.0)


async def run_context(context: StatefulContext, index: int, spec: ArmSpec, backend: LocalBackend, arm: Arm) -> None:
    notes: Notes | None = None
    if spec.sleep_drafts:
        notes = await asleep(context.context, spec.sleep_drafts * NOTE_TOKENS, backend=backend, store=False,
                             seed=1000 + index, sleep_template=MINI_SLEEP_TEMPLATE, n=spec.sleep_drafts,
                             max_tokens=NOTE_TOKENS)
        arm.sleep_tokens.append(notes.usage.generated_tokens)
        arm.notes_exact.append(notes.text == context.notes.strip())
    results = await asolve_batch(
        list(context.queries), spec.samples * ANSWER_TOKENS, backend=backend, store=False, seed=10 * index,
        prompt_template=MINI_CONTEXT_TEMPLATE, context=None if notes else context.context, notes=notes,
        strategy="best_of_n", n=spec.samples, max_tokens=ANSWER_TOKENS,
        temperature=0.0 if spec.samples == 1 else 0.8, concurrency=len(context.queries))
    for problem, result in zip(context.problems, results, strict=True):
        arm.right.append(result.answer == problem.answer)
        arm.test_tokens.append(result.usage.generated_tokens)


async def run_arm(contexts: list[StatefulContext], spec: ArmSpec, backend: LocalBackend) -> Arm:
    arm = Arm(spec)
    started = time.perf_counter()
    await bounded_gather([partial(run_context, c, i, spec, backend, arm) for i, c in enumerate(contexts)], 8)
    arm.seconds = time.perf_counter() - started
    return arm


async def read_back(contexts: list[StatefulContext], backend: LocalBackend) -> Counter[str]:
    """Every person of every context asked about alone, with the reference notes: whether the model names the
    person and reads back their count, another person's count, or a number no one has."""
    tally: Counter[str] = Counter()

    async def one(context: StatefulContext) -> None:
        people = context.each_person()
        counts = {count for _, _, count in people}
        notes = Notes(context.context, context.notes, Usage(), None, backend.name)
        results = await asolve_batch([question for _, question, _ in people], ANSWER_TOKENS, backend=backend,
                                     store=False, seed=0, prompt_template=MINI_CONTEXT_TEMPLATE, notes=notes,
                                     strategy="best_of_n", n=1, max_tokens=ANSWER_TOKENS, temperature=0.0,
                                     concurrency=len(people))
        for (name, _, count), result in zip(people, results, strict=True):
            said, _, value = (result.text.splitlines() or [""])[0].partition(": ")
            tally["named"] += said == name
            tally["right" if value == count else "other" if value in counts else "none"] += 1

    await bounded_gather([partial(one, c) for c in contexts], 8)
    return tally


def cheapest_reaching(arms: list[Arm], accuracy: float) -> Arm | None:
    reaching = [a for a in arms if a.accuracy >= accuracy]
    return min(reaching, key=lambda a: a.per_question) if reaching else None


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=at_least_one, default=60)
    parser.add_argument("--questions", type=at_least_one, default=5, help="questions per context")
    parser.add_argument("--samples", type=count_list, default=[1, 2, 4, 8, 16],
                        help="test-time-only arms: samples per question")
    parser.add_argument("--sleep", type=sleep_arms, default=sleep_arms("1:1,4:1,8:1,8:4"),
                        help="sleep arms: DRAFTS:SAMPLES, each >= 1")
    parser.add_argument("--model", type=model_folder, default=None, metavar="DIR",
                        help="a stateful reasoner to measure instead of the shipped one (a training run's output)")
    args = parser.parse_args(argv)
    contexts = generate_stateful(SEED, args.contexts, args.questions)
    specs = [ArmSpec(0, k) for k in args.samples] + [ArmSpec(drafts, k) for drafts, k in args.sleep]
    backend = LocalBackend.from_pretrained(args.model or mini_model_path("stateful"), threads=1)
    try:
        arms = [await run_arm(contexts, spec, backend) for spec in specs]
        tally = await read_back(contexts, backend)
    finally:
        await backend.aclose()
    asked = tally["right"] + tally["other"] + tally["none"]
    share = {k: 100 * tally[k] / asked for k in ("named", "right", "other", "none")}
    print(f"reading a count back by name, every person asked about alone with the reference notes ({asked} "
          f"questions): the name copied {share['named']:.1f}%, the count right {share['right']:.1f}%, another "
          f"person's {share['other']:.1f}%, no one's {share['none']:.1f}%")
    report(arms, len(contexts), args.questions)


def sleep_arms(text: str) -> list[tuple[int, int]]:
    """``DRAFTS:SAMPLES`` pairs separated by commas, each count >= 1: a sleep arm drafts notes at least once (an
    arm of no drafts is a test-time arm, which ``--samples`` gives)."""
    try:
        arms = [(int(d), int(k)) for d, sep, k in (part.partition(":") for part in text.split(",")) if sep]
    except ValueError:
        arms = []
    if len(arms) != len(text.split(",")) or any(min(arm) < 1 for arm in arms):
        raise argparse.ArgumentTypeError(f"must be DRAFTS:SAMPLES pairs of ints >= 1 such as 1:1,8:4; got {text!r}")
    return arms


def report(arms: list[Arm], n_contexts: int, questions: int) -> None:
    print(f"{n_contexts} held-out contexts x {questions} questions (mini stateful reasoner, local engine)")
    print(f"{'arm':<36}{'accuracy':>9}{'test tok/q':>11}{'sleep tok/ctx':>14}{'total tok/q':>12}"
          f"{'notes exact':>12}{'s':>7}")
    for arm in arms:
        sleep = f"{statistics.mean(arm.sleep_tokens):.1f}" if arm.sleep_tokens else "-"
        exact = f"{100 * sum(arm.notes_exact) / len(arm.notes_exact):.1f}%" if arm.notes_exact else "-"
        print(f"{arm.spec.name:<36}{arm.accuracy:>8.1f}%{arm.per_question:>11.1f}{sleep:>14}"
              f"{arm.total_per_question(questions):>12.1f}{exact:>12}{arm.seconds:>7.1f}")
    plain = [a for a in arms if not a.spec.sleep_drafts]
    slept = [a for a in arms if a.spec.sleep_drafts]
    best_plain = max(plain, key=lambda a: (a.accuracy, -a.per_question))
    best = max(slept, key=lambda a: (a.accuracy, -a.per_question))
    print()
    print("tokens per question test-time compute alone needs for each sleep arm's accuracy:")
    for arm in slept:
        match = cheapest_reaching(plain, arm.accuracy)
        if match is None:
            print(f"  {arm.spec.name}: no test-time arm reaches {arm.accuracy:.1f}% (best {best_plain.accuracy:.1f}% "
                  f"at {best_plain.per_question:.1f} tokens)")
        else:
            print(f"  {arm.spec.name}: {match.spec.name} ({match.per_question:.1f} tokens): "
                  f"{match.per_question / arm.per_question:.1f}x the test-time tokens, "
                  f"{match.per_question / arm.total_per_question(questions):.1f}x the total at {questions} "
                  "questions per context")
    match = cheapest_reaching(plain, best.accuracy)
    reference, bound = (match, "") if match else (best_plain, ">")
    print(f"accuracy={best.accuracy:.1f} test_time_accuracy={best_plain.accuracy:.1f} "
          f"test_time_ratio={bound}{reference.per_question / best.per_question:.2f} "
          f"cost_ratio={bound}{reference.per_question / best.total_per_question(questions):.2f}")


if __name__ == "__main__":
    run_script(lambda: asyncio.run(main()))
