"""Step-level beam search against best-of-N, both ranked by the mini checker, across budgets: which spends tokens
better, and by how much (Snell et al. 2024 report a compute-optimal strategy over 4x as efficient as best-of-N).

Held-out synthetic problems of the whole level mix, the same problems and seeds for every cell. Best-of-N draws
``budget / 128`` samples (a mini solution is about 100 tokens) and takes the verifier-weighted vote; beam search
keeps ``budget / 512`` nodes (at least 1), each with 4 children per step, and takes the weighted vote of its
complete solutions. Greedy decoding is the floor.

    python3 benchmarks/search_vs_sampling.py                       # 96 problems, budgets 256-4096
    python3 benchmarks/search_vs_sampling.py --problems 48 --budgets 512,2048
    python3 benchmarks/search_vs_sampling.py --distinct   # best-of-N's samples drawn without replacement
    python3 benchmarks/search_vs_sampling.py --arms beam --distinct-beam   # beam search alone, distinct children
    python3 benchmarks/search_vs_sampling.py --arms dvts,rebase,ets --distinct-beam --budgets 1024,2048

The other searches are sized alike: DVTS keeps ``budget / 512`` subtrees of 4 children, REBASE and ETS
``budget / 128`` solutions in flight; ``--distinct-beam`` draws every search's children without replacement.

The last line is ``name=value`` pairs: ``token_ratio_at_<budget>`` (the tokens best-of-N spends to reach beam
search's accuracy at that budget, over the tokens beam search spent; ``>`` marks a lower bound, where best-of-N
never reaches it within the budgets run) and ``gain_at_<budget>`` (beam search's accuracy minus best-of-N's, in
points); other searches' figures are named alike after their arm (``rebase_token_ratio_at_<budget>``); without
best-of-N or a search, ``<arm>_acc_at_<budget>`` for every cell run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from arguments import count_list, run_script, synthetic_problems, synthetic_seed  # noqa: E402
from tree_search import Cell, run_cell  # noqa: E402

from ttc.api import Session  # noqa: E402
from ttc.bench.datasets import load_dataset  # noqa: E402
from ttc.bench.report import format_table  # noqa: E402
from ttc.config import embedded_setup  # noqa: E402

SEED_BASE = 22_000
"""The held-out problems' synthetic seed is this plus ``--seed``."""
STEP = {"max_step_tokens": 24, "max_depth": 12, "select": "weighted_vote"}


def best_of_n(budget: int, distinct: bool = False) -> dict[str, object]:
    return {"n": max(1, budget // 128), "max_tokens": 288, "select": "weighted_vote", "distinct": distinct}


def beam(budget: int, distinct: bool = False) -> dict[str, object]:
    return {**STEP, "beam_width": max(1, budget // 512), "expand": 4, "distinct": distinct}


def search(name: str, budget: int, distinct: bool) -> dict[str, object]:
    """A search's options at ``budget``: as many children per step as beam search's, ``budget / 128``."""
    if name == "beam":
        return beam(budget, distinct)
    if name == "dvts":
        return {**STEP, "subtrees": max(1, budget // 512), "expand": 4, "distinct": distinct}
    return {**STEP, "width": max(1, budget // 128), "distinct": distinct}  # rebase, ets


SEARCHES = ("beam", "dvts", "rebase", "ets")


def mean(values: list[int]) -> float:
    return sum(values) / len(values)


def tokens_to_reach(curve: list[Cell], accuracy: float) -> tuple[float, bool]:
    """The tokens best-of-N needs for ``accuracy``, read off its curve (accuracy made non-decreasing in tokens,
    interpolated linearly in log tokens); (its largest tokens, True) when it never gets there."""
    points = sorted((mean(c.tokens), c.accuracy()) for c in curve)
    best = 0.0
    envelope = []
    for tokens, acc in points:
        best = max(best, acc)
        envelope.append((tokens, best))
    if envelope[0][1] >= accuracy:
        return envelope[0][0], False
    for (t0, a0), (t1, a1) in itertools.pairwise(envelope):
        if a1 >= accuracy > a0:
            share = (accuracy - a0) / (a1 - a0)
            return math.exp(math.log(t0) + share * (math.log(t1) - math.log(t0))), False
    return envelope[-1][0], True


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=synthetic_problems, default=96,
                        help="held-out problems, levels 1-8 in equal shares")
    parser.add_argument("--budgets", type=count_list, default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--seed", type=synthetic_seed(SEED_BASE), default=0,
                        help=f"the problems are drawn with synthetic seed {SEED_BASE} + this, and sampled with it")
    parser.add_argument("--distinct", action="store_true", help="best-of-N draws its samples without replacement")
    parser.add_argument("--distinct-beam", action="store_true", help="the searches draw each node's children "
                        "without replacement")
    parser.add_argument("--arms", type=lambda s: s.split(","), default=["best_of_n", "beam"],
                        help="which of best_of_n,beam,dvts,rebase,ets to run (the comparison needs best_of_n and "
                             "beam)")
    args = parser.parse_args(argv)
    if not args.arms or set(args.arms) - {"best_of_n", *SEARCHES}:
        parser.error(f"--arms takes best_of_n, beam, dvts, rebase or ets, comma-separated; got {','.join(args.arms)}")
    problems = load_dataset("synthetic", limit=args.problems, seed=SEED_BASE + args.seed)
    session = Session(setup=embedded_setup(threads=1), store=None)
    cells: list[Cell] = []
    try:
        greedy = await run_cell(session, problems, "best_of_n", {"n": 1, "temperature": 0.0, "max_tokens": 288},
                                288, args.seed)
        greedy.strategy = "greedy"
        cells.append(greedy)
        for budget in args.budgets:
            for name, options in (("best_of_n", best_of_n(budget, args.distinct)),
                                  *((arm, search(arm, budget, args.distinct_beam)) for arm in SEARCHES)):
                if name not in args.arms:
                    continue
                cells.append(await run_cell(session, problems, name, options, budget, args.seed))
                c = cells[-1]
                print(f"  {name} @ {budget}: acc={c.accuracy():.3f} tokens={mean(c.tokens):.0f} wall={c.wall_s:.1f}s",
                      flush=True)
    finally:
        await session.aclose()
    easy, hard = {1, 2, 3}, {4, 5, 6, 7, 8}
    print(f"{len(problems)} held-out problems of levels 1-8; verifier: the mini checker"
          + ("; best-of-N's samples drawn without replacement" if args.distinct else "")
          + ("; the searches' children drawn without replacement" if args.distinct_beam else ""))
    print(format_table(["strategy", "budget", "acc", "acc L1-3", "acc L4-8", "mean tokens", "wall s"],
                       [[c.strategy, c.budget, c.accuracy(), c.accuracy(easy), c.accuracy(hard), mean(c.tokens),
                         c.wall_s] for c in cells]))
    bon = [c for c in cells if c.strategy == "best_of_n"]
    searches = [c for c in cells if c.strategy in SEARCHES]
    if not bon or not searches:
        print(" ".join(f"{c.strategy}_acc_at_{c.budget}={100 * c.accuracy():.1f}" for c in cells[1:]))
        return
    headline = []
    for c in searches:
        need, bound = tokens_to_reach(bon, c.accuracy())
        print(f"{c.strategy} @ {c.budget}: {100 * c.accuracy():.1f}% with {mean(c.tokens):.0f} tokens; best-of-N "
              f"needs {'more than ' if bound else ''}{need:.0f} tokens for it ({need / mean(c.tokens):.1f}x)")
        prefix = "" if c.strategy == "beam" else f"{c.strategy}_"  # beam search's names as they always were
        same = next(b for b in bon if b.budget == c.budget)
        headline.append((f"{prefix}token_ratio_at_{c.budget}={'>' if bound else ''}{need / mean(c.tokens):.2f}",
                         f"{prefix}gain_at_{c.budget}={100 * (c.accuracy() - same.accuracy()):.1f}"))
    print(" ".join([ratio for ratio, _ in headline] + [gain for _, gain in headline]))


if __name__ == "__main__":
    run_script(lambda: asyncio.run(main()))
