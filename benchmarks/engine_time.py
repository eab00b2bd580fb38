"""Where a tree search's time goes in the local engine: prefills, decode steps, scoring, embedding.

Runs one strategy over held-out synthetic problems (levels 4-8) with the embedded default, and times each kind of
engine call on the engine thread. To compare two versions of the engine, run it on each, one after the other on
the same machine (the counts of steps and score calls show whether both ran the same search). ``import ttc``
finds the installed package wherever the script is started, so put the other checkout first on the path; the
first line names the package that was timed:

    python3 benchmarks/engine_time.py --strategy ets --budget 2048 --problems 10
    git worktree add /tmp/before REV && PYTHONPATH=/tmp/before python3 benchmarks/engine_time.py ...

The last line is ``name=value`` pairs: wall seconds and each call kind's seconds and count.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import at_least_one, run_script, synthetic_problems
from tree_search import arms, width_for

import ttc
from ttc.api import Session, solve_problem
from ttc.bench.datasets import load_dataset
from ttc.config import embedded_setup
from ttc.engine.engine import Engine
from ttc.types import Budget

# start_all and start, score_all and score: whichever the engine has
CALLS = ("start", "start_all", "step", "score", "score_all", "embed")

seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
counts: collections.Counter[str] = collections.Counter()


def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Engine, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - started
            counts[name] += 1

    return run


async def main(args: argparse.Namespace) -> None:
    for name in CALLS:
        if hasattr(Engine, name):
            setattr(Engine, name, timed(name, getattr(Engine, name)))
    problems = load_dataset("synthetic", limit=args.problems, seed=20_000, levels=range(4, 9))
    session = Session(setup=embedded_setup(threads=args.threads), store=None)
    options = arms(width_for(args.budget, None), 24, [1.0])[args.strategy]
    started = time.perf_counter()
    try:
        for problem in problems:
            await solve_problem(problem, Budget(tokens=args.budget), session,
                                strategy="ets" if args.strategy.startswith("ets") else args.strategy,
                                seed=problem.index or 0, options=options)
    finally:
        await session.aclose()
    wall = time.perf_counter() - started
    # start calls start_all (score, score_all) on engines that have both: count the inner, batched call only.
    for single, batched in (("start", "start_all"), ("score", "score_all")):
        if counts[batched] and counts[single]:
            del seconds[single], counts[single]
    print(f"{args.strategy} at {args.budget} tokens, {len(problems)} problems: {wall:.1f} s "
          f"(ttc from {Path(ttc.__file__).parent})")
    for name in (n for n in CALLS if counts[n]):
        print(f"  {name:<9} {seconds[name]:7.2f} s  {counts[name]:6d} calls")
    print(" ".join([f"wall_s={wall:.2f}"] + [f"{n}_s={seconds[n]:.2f} {n}_calls={counts[n]}"
                                            for n in CALLS if counts[n]]))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", default="ets", choices=["best_of_n", "beam", "dvts", "rebase", "ets"])
    p.add_argument("--budget", type=at_least_one, default=2048)
    p.add_argument("--problems", type=synthetic_problems, default=10)
    p.add_argument("--threads", type=at_least_one, default=1)
    return p.parse_args()


if __name__ == "__main__":
    run_script(lambda: anyio.run(main, parse()))
