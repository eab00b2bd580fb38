"""One budget for a batch of tree searches against the same budget split evenly, on the bundled mini models.

For each budget per question, the same held-out problems of the level mix are answered by ``auto`` twice: one
question at a time with that budget each (REBASE with different children, ``budget / 128`` solutions in flight),
and as one batch sharing the budget times their number (``budget_scope="batch"``, ``ttc.pooled_search``: a first
search the size of the even split for every question, then searches twice as wide for the questions whose
solutions disagree, while the pool affords them). The even split also runs at the larger budgets, so the table says
what budget per question an even split needs for the batch's accuracy. Below 1024 tokens ``auto`` keeps twice
``budget / 128`` solutions in flight, up to 8; the arm ``even split, budget / 128`` is the narrower search it ran
before, for comparison.

    python3 benchmarks/batch_search.py                                  # 192 problems, budgets 256-1024
    python3 benchmarks/batch_search.py --problems 96 --budgets 512 --even-budgets 512,1024
    python3 benchmarks/batch_search.py --problems 96 --problem-seed 22000 --budgets 256,512 --even-budgets 256,512
    python3 benchmarks/batch_search.py --budgets '' --even-budgets 1024 --widths 16,32   # wider even splits

The last line is ``name=value`` pairs: ``gain_at_<budget>`` (the batch's accuracy minus the even split's at that
budget, in points), ``tokens_at_<budget>`` (the batch's generated tokens per question over the even split's) and
``budget_ratio_at_<budget>`` (the smallest budget per question run whose even split is at least as accurate as the
batch, over the batch's; ``>`` marks a lower bound, where no even split run reaches it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from arguments import at_least_one, optional_count_list, run_script, sampling_seed, synthetic_problems, synthetic_seed

from ttc.api import Session, solve_problem
from ttc.bench.datasets import load_dataset
from ttc.bench.report import format_table
from ttc.config import embedded_setup
from ttc.controller.per_question import AUTO_FULL_WIDTH
from ttc.pooled import solve_pooled
from ttc.storage import TraceStore
from ttc.types import Budget, Problem, Result
from ttc.verifiers.answer import grade_result

NARROW = "even split, budget / 128"


@dataclass
class Arm:
    name: str
    budget: int
    correct: list[bool] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    searches: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    def accuracy(self) -> float:
        return 100 * sum(self.correct) / len(self.correct)

    def mean_tokens(self) -> float:
        return sum(self.tokens) / len(self.tokens)


def record(arm: Arm, problems: list[Problem], results: list[Result], searches: list[int]) -> Arm:
    for problem, result, count in zip(problems, results, searches, strict=True):
        arm.correct.append(grade_result(result, problem.gold or "").correct)
        arm.tokens.append(result.usage.generated_tokens)
        arm.searches.append(count)
    return arm


async def even(session: Session, problems: list[Problem], budget: int, seed: int, *, narrow: bool = False,
               width: int | None = None) -> Arm:
    """The even split; ``narrow`` keeps ``budget / 128`` solutions in flight where ``auto`` keeps twice that, and
    ``width`` that many."""
    start = time.perf_counter()
    options = {"width": max(1, budget // 128)} if narrow else {} if width is None else {"width": width}
    name = NARROW if narrow else "even split" if width is None else f"even split, width {width}"
    results = [await solve_problem(p, Budget(tokens=budget), session, strategy="auto", seed=seed + (p.index or 0),
                                   options=options) for p in problems]
    arm = record(Arm(name, budget), problems, results, [1] * len(problems))
    arm.wall_s = time.perf_counter() - start
    return arm


async def pooled(session: Session, problems: list[Problem], budget: int, seed: int, concurrency: int) -> Arm:
    """The batch arm; its traces go to a scratch store, read back for the searches each question was granted."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        store = TraceStore(str(Path(scratch) / "traces.db"))
        batch = Session(setup=session.setup, store=store)
        try:
            results = await solve_pooled(problems, Budget(tokens=budget * len(problems)), batch, strategy="auto",
                                         seeds=[seed + (p.index or 0) for p in problems], options={},
                                         concurrency=concurrency)
            searches = [sum(e.kind == "grant" for e in store.get_trace(r.trace_id or "").events) for r in results]
        finally:
            store.close()
    arm = record(Arm("one batch budget", budget), problems, results, searches)
    arm.wall_s = time.perf_counter() - start
    return arm


def spread(searches: list[int]) -> str:
    counts = Counter(searches)
    return "/".join(str(counts[k]) for k in range(1, max(4, *searches) + 1))


async def main(args: argparse.Namespace) -> None:
    problems = load_dataset("synthetic", limit=args.problems, seed=args.problem_seed)
    session = Session(setup=embedded_setup(threads=args.threads), store=None)
    arms: list[Arm] = []
    try:
        for budget in sorted(set(args.even_budgets) | set(args.budgets)):
            arms.append(await even(session, problems, budget, args.seed))
            if budget < AUTO_FULL_WIDTH * 128:
                arms.append(await even(session, problems, budget, args.seed, narrow=True))
            for width in args.widths:
                arms.append(await even(session, problems, budget, args.seed, width=width))
        for arm in arms:
            print(f"  {arm.name} @ {arm.budget}: {arm.accuracy():.1f}% {arm.mean_tokens():.0f} tokens "
                  f"{arm.wall_s:.0f}s", flush=True)
        for budget in args.budgets:
            arms.append(await pooled(session, problems, budget, args.seed, args.concurrency))
            print(f"  one batch budget @ {budget}: {arms[-1].accuracy():.1f}% {arms[-1].mean_tokens():.0f} tokens "
                  f"{arms[-1].wall_s:.0f}s", flush=True)
    finally:
        await session.aclose()
    print(format_table(["arm", "budget per question", "accuracy %", "generated tokens per question",
                        "questions by searches (1/2/3/4)", "wall s"],
                       [[a.name, a.budget, a.accuracy(), a.mean_tokens(), spread(a.searches), a.wall_s]
                        for a in arms]))
    evens = {a.budget: a for a in arms if a.name == "even split"}
    figures = []
    for a in (a for a in arms if a.name == "one batch budget"):
        base = evens[a.budget]
        reached = [b for b, e in sorted(evens.items()) if e.accuracy() >= a.accuracy()]
        ratio = f"{reached[0] / a.budget:.2f}" if reached else f">{max(evens) / a.budget:.2f}"
        figures += [f"gain_at_{a.budget}={a.accuracy() - base.accuracy():.1f}",
                    f"tokens_at_{a.budget}={a.mean_tokens() / base.mean_tokens():.2f}",
                    f"budget_ratio_at_{a.budget}={ratio}"]
    if not figures:  # no batch arm: every even split's accuracy
        keys = {NARROW: "narrow", "even split": "even"}
        figures = [f"{keys.get(a.name, a.name.replace('even split, width ', 'width'))}_acc_at_{a.budget}="
                   f"{a.accuracy():.1f}" for a in arms]
    print(" ".join(figures))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=synthetic_problems, default=192)
    p.add_argument("--budgets", type=optional_count_list, default=[256, 512, 1024],
                   help="budgets per question of the batch arm ('' for none)")
    p.add_argument("--widths", type=optional_count_list, default=[],
                   help="also the even split with this many solutions in flight")
    p.add_argument("--even-budgets", type=optional_count_list, default=[256, 512, 1024, 2048, 4096],
                   help="budgets per question of the even split (the batch arm's budgets are always run)")
    p.add_argument("--concurrency", type=at_least_one, default=8)
    p.add_argument("--threads", type=at_least_one, default=2)
    p.add_argument("--seed", type=sampling_seed, default=0, help="sampling seed: problem i is searched with seed + i")
    p.add_argument("--problem-seed", type=synthetic_seed(), default=24_000,
                   help="the held-out problems' synthetic seed (a draw)")
    args = p.parse_args()
    if not args.budgets and not args.even_budgets:
        p.error("--budgets and --even-budgets are both empty: there would be no arm to measure")
    return args


if __name__ == "__main__":
    run_script(lambda: anyio.run(main, parse()))
