#!/usr/bin/env python3
"""One budget for a batch against the same budget split evenly, with the bundled mini reasoner on the local engine.

Every arm answers the same held-out synthetic problems (the level mix) and chooses among its samples the same way:
``--select checked`` (the default) by a checked vote, where samples that write a wrong result for an equation or
compute with a number nothing gave do not vote (the mini reasoner's gain from sampling lives there;
docs/mini_models.md), or ``--select auto`` by the embedded default's vote weighted by the mini checker. Arms:

- ``greedy``: one sample at temperature 0, for reference;
- ``uniform@16``: 16 samples for every question (best-of-N's even split), the baseline, and ``uniform@K`` for
  16 times each pooled fraction, so every pooled arm has an even split of about its tokens beside it;
- ``per-question SC``: self-consistency with a budget of 16 samples per question, stopping early where the vote
  is decided (by the rule the pooled arms use); what it saves is lost to the batch;
- ``pooled xF``: ``solve_batch(..., budget_scope="batch")`` with a token budget of F times what ``uniform@16``
  generated, shared by the controller: easy questions stop after a round, split ones draw up to 64 samples.

The arms are replayed the same samples (``ttc.bench.replay``): the i-th sample any arm draws for a problem is the
i-th the reasoner ever drew for it, and the checker scores each sample once. So ``uniform@16`` and the pooled arms'
first 16 samples of a problem are the same ones, and arms differ by how they spend samples, not by the luck of
their draws (independent draws moved an arm by two or three points over 240 problems; ``--fresh`` gives each arm
its own). Wall times are the replayed runs' and say little; tokens are counted as if every sample were drawn.

Prints uniform@16's problems grouped by their first four samples (how many pass both checks, and whether those
agree) with the checked vote's accuracy over the four and over all sixteen, to show where more samples pay; then
accuracy, generated tokens and wall time per arm, and ends with the headline figures: the pooled batch's
accuracy at the uniform@16 arm's tokens against that arm's (``pooled_acc``, ``pooled_gain``: only when 1.0 is among
the fractions, the one pooled arm given uniform@16's tokens), the mean gain of the pooled arms over the even splits
beside them, and the tokens uniform@16 spent for each token of the cheapest pooled arm that matches its accuracy
(left out when none does).

    python3 benchmarks/batch_budget.py --problems 240 --fractions 0.25,0.5,0.75,1.0
    python3 benchmarks/batch_budget.py --problems 240 --fractions 0.25,0.5,0.75,1.0 --select auto
    python3 benchmarks/batch_budget.py --problems 240 --select auto --stop-share 0.75 --min-samples 4
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import anyio
from arguments import at_least_one, positive_list, probability, run_script, synthetic_problems, synthetic_seed

from ttc.api import Session, solve_problem
from ttc.bench.datasets import load_dataset
from ttc.bench.replay import ReplayBackend, ScoreCache
from ttc.bench.report import format_table
from ttc.concurrency import bounded_gather
from ttc.config import embedded_setup
from ttc.controller import AUTO_MAX_SAMPLES, pooled_options
from ttc.pooled import solve_pooled
from ttc.strategies.sampling import Checks
from ttc.types import Budget, Candidate, Problem, Result
from ttc.verifiers.answer import grade_result, normalize_answer
from ttc.verifiers.vote import majority_vote

MAX_TOKENS = 160
SEED_BASE = 30_000
"""The held-out problems' synthetic seed is this plus ``--seed``."""
CHECKS = Checks(arithmetic=True, operands=True)
SELECTIONS: dict[str, Mapping[str, object]] = {
    "checked": {"select": "vote", "check_arithmetic": True, "check_operands": True, "max_tokens": MAX_TOKENS},
    "auto": {"max_tokens": MAX_TOKENS},
}


@dataclass(frozen=True)
class Arm:
    label: str
    correct: int
    problems: int
    tokens: int
    samples: int
    wall_s: float
    results: Sequence[Result] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems

    def line(self) -> str:
        return (f"  {self.label}: accuracy {self.correct}/{self.problems}, {self.tokens} tokens, "
                f"{self.samples} samples, {self.wall_s:.1f} s")


def tally(label: str, problems: Sequence[Problem], results: Sequence[Result], wall_s: float) -> Arm:
    correct = sum(grade_result(r, p.gold or "").correct for p, r in zip(problems, results, strict=True))
    return Arm(label, correct, len(problems), sum(r.usage.generated_tokens for r in results),
               sum(len(r.candidates) for r in results), wall_s, results)


def checked_vote_right(problem: Problem, candidates: Sequence[Candidate]) -> bool:
    """Whether the vote among the candidates that pass both checks (all of them when none does) is right."""
    passing = [c for c in candidates if not CHECKS.failed(problem.question, c.text)] or list(candidates)
    winner = majority_vote([c.answer for c in passing]).key
    return winner is not None and winner == normalize_answer(problem.gold or "")


def breakdown(problems: Sequence[Problem], results: Sequence[Result], first: int) -> list[list[object]]:
    """Problems grouped by their first ``first`` samples (how many pass both checks; whether those agree), with the
    checked vote's accuracy over those samples and over all of them: where more samples pay, and where they do not."""
    groups: dict[tuple[int, str], list[tuple[bool, bool]]] = {}
    for problem, result in zip(problems, results, strict=True):
        head = result.candidates[:first]
        passing = [c for c in head if not CHECKS.failed(problem.question, c.text)]
        answers = {normalize_answer(c.answer) for c in (passing or head) if c.answer is not None}
        key = (len(passing), "agree" if len(answers) == 1 else "split")
        groups.setdefault(key, []).append((checked_vote_right(problem, head),
                                           checked_vote_right(problem, result.candidates)))
    return [[f"{n} pass, {agree}", len(rows), sum(a for a, _ in rows) / len(rows), sum(b for _, b in rows) / len(rows)]
            for (n, agree), rows in sorted(groups.items())]


async def per_question(session: Session, problems: Sequence[Problem], label: str, strategy: str,
                       options: Mapping[str, object], budget: int, seed: int, concurrency: int) -> Arm:
    start = time.perf_counter()
    jobs = [partial(solve_problem, p, Budget(tokens=budget), session, strategy=strategy,
                    seed=seed + (p.index or 0), options=options) for p in problems]
    results = await bounded_gather(jobs, concurrency)
    return tally(label, problems, results, time.perf_counter() - start)


async def pooled(session: Session, problems: Sequence[Problem], label: str, tokens: int, options: Mapping[str, object],
                 seed: int, concurrency: int) -> Arm:
    start = time.perf_counter()
    results = await solve_pooled(problems, Budget(tokens=tokens), session, strategy="auto", options=options,
                                 seeds=[seed + (p.index or 0) for p in problems], concurrency=concurrency)
    return tally(label, problems, results, time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    problems = load_dataset("synthetic", limit=args.problems, seed=SEED_BASE + args.seed)
    setup = embedded_setup(threads=args.threads)
    replay = None
    if not args.fresh:
        replay = setup.backend = ReplayBackend(setup.backend)
        setup.verifier = ScoreCache(setup.verifier) if setup.verifier is not None else None
    session = Session(setup=setup, store=None)

    async def run(label: str, strategy: str, options: Mapping[str, object], budget: int) -> Arm:
        if replay is not None:
            replay.rewind()
        return await per_question(session, problems, label, strategy, options, budget, args.seed, args.concurrency)

    chosen = SELECTIONS[args.select]
    stop_rule = {name: value for name, value in (("stop_share", args.stop_share), ("min_samples", args.min_samples))
                 if value is not None}
    chosen = {**chosen, **stop_rule}
    early_stop = pooled_options("auto", {**chosen, "max_samples": args.samples}, has_verifier=True)
    arms: list[Arm] = []
    try:
        arms.append(await run("greedy", "best_of_n", {"n": 1, "temperature": 0.0, "max_tokens": MAX_TOKENS},
                              MAX_TOKENS))
        print(arms[-1].line(), flush=True)
        uniform = await run(f"uniform@{args.samples}", "best_of_n", {"n": args.samples, **SELECTIONS[args.select]},
                            args.samples * MAX_TOKENS)
        arms.append(uniform)
        print(arms[-1].line(), flush=True)
        arms.append(await run("per-question SC", "self_consistency", early_stop, args.samples * MAX_TOKENS))
        print(arms[-1].line(), flush=True)
        # Fractions whose even splits draw the same samples a question (0.25 and 0.5 of 2) share one arm: it ran
        # and was listed once for each.
        by_samples: dict[int, Arm] = {args.samples: uniform}
        for k in even_splits(args.fractions, args.samples):
            by_samples[k] = await run(f"uniform@{k}", "best_of_n", {"n": k, **SELECTIONS[args.select]},
                                      k * MAX_TOKENS)
            arms.append(by_samples[k])
            print(arms[-1].line(), flush=True)
        evens = {fraction: by_samples[even_samples(fraction, args.samples)] for fraction in args.fractions}
        pools: list[Arm] = []
        by_tokens: dict[int, Arm] = {}  # fractions raised to one floor share its arm, as even splits do
        at_uniform: Arm | None = None
        for fraction in args.fractions:
            # A pooled batch affords at least one whole sample per problem, whatever the fraction asks.
            tokens = max(len(problems) * MAX_TOKENS, round(fraction * uniform.tokens))
            if tokens not in by_tokens:
                if replay is not None:
                    replay.rewind()
                label = f"pooled x{fraction:g}" if tokens == round(fraction * uniform.tokens) else \
                    f"pooled x{tokens / uniform.tokens:.2f} (floor)"
                by_tokens[tokens] = await pooled(session, problems, label, tokens, chosen, args.seed,
                                                 args.concurrency)
                arms.append(by_tokens[tokens])
                print(arms[-1].line(), flush=True)
            pools.append(by_tokens[tokens])
            if tokens == uniform.tokens:
                at_uniform = pools[-1]
    finally:
        await session.aclose()
    first = min(4, args.samples)
    print(f"uniform@{args.samples}'s problems by their first {first} samples, with the checked vote over those and "
          f"over all {args.samples}:")
    print(format_table(["first samples", "problems", f"vote@{first}", f"vote@{args.samples}"],
                       breakdown(problems, uniform.results, first)))
    print(format_table(["arm", "accuracy", "generated tokens", "tokens / uniform", "samples", "wall s"],
                       [[a.label, a.accuracy, a.tokens, a.tokens / uniform.tokens, a.samples, a.wall_s]
                        for a in arms]))
    gains = [100 * (pool.accuracy - evens[f].accuracy) for f, pool in zip(args.fractions, pools, strict=True)]
    print(headline(arms[0], uniform, at_uniform, pools, gains))


def even_samples(fraction: float, samples: int) -> int:
    """The samples a question of the even split at ``fraction`` of the uniform arm's budget draws."""
    return max(1, round(fraction * samples))


def even_splits(fractions: Sequence[float], samples: int) -> list[int]:
    """The even-split arms to run besides the uniform one: each number of samples a question once, in order."""
    return [k for k in dict.fromkeys(even_samples(f, samples) for f in fractions) if k != samples]


def headline(greedy: Arm, uniform: Arm, at_uniform: Arm | None, pools: Sequence[Arm], gains: Sequence[float]) -> str:
    """The last line's figures. ``pooled_acc`` and ``pooled_gain`` compare the pooled arm given exactly the tokens
    uniform generated (fraction 1.0, not raised to the floor) with uniform, and are left out when no such arm ran;
    ``token_ratio_at_uniform_acc`` is left out when no pooled arm matches uniform's accuracy. An undefined figure
    is missing from the line rather than nan."""
    figures = {"uniform_acc": f"{100 * uniform.accuracy:.1f}"}
    if at_uniform is not None:
        figures["pooled_acc"] = f"{100 * at_uniform.accuracy:.1f}"
        figures["pooled_gain"] = f"{100 * (at_uniform.accuracy - uniform.accuracy):.1f}"
    figures["mean_gain_over_even"] = f"{sum(gains) / len(gains):.1f}"
    figures["greedy_acc"] = f"{100 * greedy.accuracy:.1f}"
    matching = [a.tokens for a in pools if a.correct >= uniform.correct]
    if matching:
        figures["token_ratio_at_uniform_acc"] = f"{uniform.tokens / min(matching):.2f}"
    return " ".join(f"{name}={value}" for name, value in figures.items())


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=synthetic_problems, default=120)
    p.add_argument("--samples", type=at_least_one, default=16, help="samples per question of the uniform arm")
    p.add_argument("--fractions", type=positive_list, default=[0.25, 0.5, 1.0],
                   help="pooled budgets, as fractions of the tokens the uniform arm generated (at least "
                        f"{MAX_TOKENS} tokens per problem, one whole sample each: a smaller fraction is raised to it "
                        "and its arm labelled '(floor)'); the headline's pooled_acc and pooled_gain need 1.0")
    p.add_argument("--select", choices=sorted(SELECTIONS), default="checked",
                   help="how every arm chooses among its samples: a checked vote, or the checker-weighted vote")
    p.add_argument("--stop-share", type=probability, default=None,
                   help="the early-stopping arms' stop_share (default: the controller's rule for the selection)")
    p.add_argument("--min-samples", type=at_least_one, default=None, help="the early-stopping arms' min_samples")
    p.add_argument("--fresh", action="store_true", help="draw every arm's samples anew instead of replaying one pool")
    p.add_argument("--concurrency", type=at_least_one, default=16)
    p.add_argument("--threads", type=at_least_one, default=1)
    p.add_argument("--seed", type=synthetic_seed(SEED_BASE), default=0,
                   help=f"the problems are drawn with synthetic seed {SEED_BASE} + this, and sampled with it")
    args = p.parse_args()
    if max(args.fractions) * args.samples > AUTO_MAX_SAMPLES:
        # A pooled arm draws at most AUTO_MAX_SAMPLES a question, and the even split of such a fraction would draw
        # as many samples for every question as the fraction asks, without bound.
        p.error(f"argument --fractions: each must be at most {AUTO_MAX_SAMPLES} / --samples "
                f"({AUTO_MAX_SAMPLES / args.samples:g}), the samples a pooled arm may draw for a question; "
                f"got {max(args.fractions):g}")
    if args.min_samples is not None and args.min_samples > args.samples:
        p.error(f"argument --min-samples: must be at most --samples ({args.samples}), or the early-stopping arm could "
                f"never stop early; got {args.min_samples}")
    return args


if __name__ == "__main__":
    run_script(lambda: anyio.run(main, parse()))
