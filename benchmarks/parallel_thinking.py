"""Parallel thinking (eight paths, then a synthesis) against the vote over the same eight paths, greedy decoding,
and the synthesizer's own greedy solution, on the embedded default (ParaThinker reports +12.3 points at 1.5B and
+7.5 at 7B over one path, at 7.1% extra latency).

Held-out synthetic problems of the whole level mix. Every arm runs on ttc's strategies and local engine, one
problem at a time, with the same seed per problem, so the vote and parallel thinking see the same eight paths:

- greedy: the mini reasoner's greedy solution;
- majority of 8: the plain vote over eight sampled paths (``best_of_n``, ``select="vote"``);
- best of 8 by the checker: the mini checker's pick of the same paths (``select="score"``);
- parallel thinking: the same paths, then the mini synthesizer's solution (``parallel_thinking``);
- synthesizer alone: the synthesizer's greedy solution shown no path, which says what it knows by itself.

    python3 benchmarks/parallel_thinking.py                     # 192 problems
    python3 benchmarks/parallel_thinking.py --problems 48 --seed 1

The last line is ``name=value`` pairs: each arm's accuracy in %, ``gain_over_greedy`` and ``gain_over_vote``
(points), ``latency_over_vote`` (parallel thinking's mean wall time per question over the vote's, the cost of the
synthesis) and ``latency_over_greedy``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from arguments import run_script, synthetic_problems, synthetic_seed  # noqa: E402

from ttc.api import Session, solve_problem  # noqa: E402
from ttc.backends.local import LocalBackend  # noqa: E402
from ttc.bench.datasets import load_dataset  # noqa: E402
from ttc.bench.report import format_table  # noqa: E402
from ttc.config import BackendSetup, embedded_setup  # noqa: E402
from ttc.models import MINI_SYNTHESIS_TEMPLATE, mini_model_path  # noqa: E402
from ttc.types import Budget, Problem  # noqa: E402
from ttc.verifiers.answer import grade_result  # noqa: E402

SEED_BASE = 24_000
"""The held-out problems' synthetic seed is this plus ``--seed``."""
PATHS = 8
PATH_TOKENS = 288  # a mini solution is about 100 tokens; the reasoner's context is 512
BUDGET = Budget(tokens=PATHS * PATH_TOKENS + 256)
GREEDY = {"n": 1, "temperature": 0.0, "max_tokens": PATH_TOKENS}
ARMS: dict[str, tuple[str, Mapping[str, object]]] = {
    "greedy": ("best_of_n", GREEDY),
    "majority of 8": ("best_of_n", {"n": PATHS, "max_tokens": PATH_TOKENS, "select": "vote"}),
    "best of 8 by the checker": ("best_of_n", {"n": PATHS, "max_tokens": PATH_TOKENS, "select": "score"}),
    "parallel thinking": ("parallel_thinking", {"paths": PATHS, "max_tokens": PATH_TOKENS}),
}


@dataclass
class Arm:
    name: str
    correct: list[bool] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)

    def accuracy(self, levels: set[int] | None = None) -> float:
        picked = [c for c, lv in zip(self.correct, self.levels, strict=True) if levels is None or lv in levels]
        return 100 * sum(picked) / len(picked) if picked else float("nan")


def mean(values: list[int] | list[float]) -> float:
    return sum(values) / len(values)


async def run_arm(session: Session, problems: list[Problem], name: str, strategy: str,
                  options: Mapping[str, object], seed: int) -> Arm:
    arm = Arm(name)
    for problem in problems:
        started = time.perf_counter()
        result = await solve_problem(problem, BUDGET, session, strategy=strategy, seed=seed + (problem.index or 0),
                                     options=options)
        arm.wall_s.append(time.perf_counter() - started)
        arm.correct.append(grade_result(result, problem.gold or "").correct)
        arm.levels.append(int(str(problem.meta.get("level", 0))))
        arm.generated.append(result.usage.generated_tokens)
        arm.prompt.append(result.usage.prompt_tokens)
    print(f"  {name}: {arm.accuracy():.1f}% in {sum(arm.wall_s):.0f} s", flush=True)
    return arm


def synthesizer_alone() -> Session:
    """The synthesizer as a model of its own, asked with its synthesis prompt and no path."""
    model = LocalBackend.from_pretrained(mini_model_path("synthesizer"), threads=1)
    template = MINI_SYNTHESIS_TEMPLATE.replace("{paths}", "")
    return Session(setup=BackendSetup(backend=model, prompt_template=template), store=None)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=synthetic_problems, default=192,
                        help="held-out problems, levels 1-8 in equal shares")
    parser.add_argument("--seed", type=synthetic_seed(SEED_BASE), default=0,
                        help=f"the problems are drawn with synthetic seed {SEED_BASE} + this, and sampled with it")
    args = parser.parse_args(argv)
    problems = load_dataset("synthetic", limit=args.problems, seed=SEED_BASE + args.seed)
    arms: list[Arm] = []
    session = Session(setup=embedded_setup(threads=1), store=None)
    try:
        for name, (strategy, options) in ARMS.items():
            arms.append(await run_arm(session, problems, name, strategy, options, args.seed))
    finally:
        await session.aclose()
    alone = synthesizer_alone()
    try:
        arms.append(await run_arm(alone, problems, "synthesizer alone", "best_of_n", GREEDY, args.seed))
    finally:
        await alone.aclose()
    easy, hard = {1, 2, 3}, {4, 5, 6, 7, 8}
    print(f"{len(problems)} held-out problems of levels 1-8 (seed {SEED_BASE + args.seed}); {PATHS} paths at the "
          f"strategies' temperature and nucleus")
    print(format_table(["arm", "acc", "acc L1-3", "acc L4-8", "generated tokens", "prompt tokens",
                        "wall s per question"],
                       [[a.name, a.accuracy(), a.accuracy(easy), a.accuracy(hard), mean(a.generated), mean(a.prompt),
                         mean(a.wall_s)] for a in arms]))
    by = {a.name: a for a in arms}
    greedy, vote, thinking = by["greedy"], by["majority of 8"], by["parallel thinking"]
    keys = {"greedy": "greedy", "majority of 8": "majority8", "best of 8 by the checker": "best8_checker",
            "parallel thinking": "parallel_thinking", "synthesizer alone": "synthesizer_alone"}
    print(" ".join(f"{keys[a.name]}_acc={a.accuracy():.1f}" for a in arms)
          + f" gain_over_greedy={thinking.accuracy() - greedy.accuracy():.1f}"
          + f" gain_over_vote={thinking.accuracy() - vote.accuracy():.1f}"
          + f" latency_over_vote={mean(thinking.wall_s) / mean(vote.wall_s):.2f}"
          + f" latency_over_greedy={mean(thinking.wall_s) / mean(greedy.wall_s):.2f}")


if __name__ == "__main__":
    run_script(lambda: anyio.run(main))
