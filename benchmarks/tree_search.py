"""Tree search against best-of-N on the synthetic benchmark, with the bundled mini reasoner and mini checker.

For each token budget, every strategy answers the same held-out problems (levels 4 to 8) on the local engine:
accuracy, generated tokens, peak live KV tokens (exact, from the engine's block tree), the live KV tokens held at a
decode step, averaged over the search (ETS's "average KV cache size during the search") and wall time. Problems run
one at a time so each KV figure belongs to one search. Prints a table, with ``--plot PNG`` draws accuracy against
generated tokens, and ends with headline ratios: ETS against REBASE at the same width, and the best search
against best-of-N on levels 6 to 8.

    python benchmarks/tree_search.py --problems 60 --budgets 1024,2048,4096 --ets-lambda-kv 1,2
    python benchmarks/tree_search.py --problems 40 --budgets 2048 --distinct   # children without replacement
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from arguments import (
    at_least_one,
    count_list,
    run_script,
    synthetic_problems,
    synthetic_seed,
    weight_list,
    writable_path,
)

from ttc.api import Session, solve_problem
from ttc.bench.datasets import load_dataset
from ttc.bench.report import format_table, median
from ttc.config import embedded_setup
from ttc.types import Budget, Problem
from ttc.verifiers.answer import grade_result

SEED_BASE = 20_000
"""The held-out problems' synthetic seed is this plus ``--seed``."""
HARD = {6, 7, 8}
"""The levels of the headline's comparison with best-of-N."""


@dataclass
class Cell:
    strategy: str
    budget: int
    correct: list[bool] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    peak_kv: list[int] = field(default_factory=list)
    mean_kv: list[float] = field(default_factory=list)
    """Per problem, the live KV tokens held at a decode step, averaged over the search's steps (ETS's measure)."""
    wall_s: float = 0.0

    def accuracy(self, levels: set[int] | None = None) -> float:
        """Share solved, over ``levels`` only when given; nan where the run drew none of them (not 0.0, which
        would read as a measured figure)."""
        picked = [c for c, lv in zip(self.correct, self.levels, strict=True) if levels is None or lv in levels]
        return sum(picked) / len(picked) if picked else math.nan


def width_for(budget: int, width: int | None) -> int:
    """The search width a budget buys: ``budget / 128`` (a mini solution is about 100 tokens), so that a larger
    budget widens every search instead of leaving tokens unspent once ``width`` answers are complete."""
    return width if width is not None else max(4, budget // 128)


def arms(width: int, step_tokens: int, ets_lambda_kv: Sequence[float],
         distinct: bool = False) -> dict[str, Mapping[str, object]]:
    """Every strategy at ``width``; ``distinct`` draws the samples and each node's children without replacement."""
    tree = {"max_step_tokens": step_tokens, "max_depth": 12, "select": "weighted_vote", "distinct": distinct}
    found: dict[str, Mapping[str, object]] = {
        "best_of_n": {"n": width, "max_tokens": step_tokens * 12, "select": "weighted_vote", "distinct": distinct},
        "beam": {**tree, "beam_width": max(1, width // 4), "expand": 4},
        "dvts": {**tree, "subtrees": max(1, width // 4), "expand": 4},
        "rebase": {**tree, "width": width},
    }
    for weight in ets_lambda_kv:
        found["ets" if weight == ets_lambda_kv[0] else f"ets_kv{weight:g}"] = {**tree, "width": width,
                                                                               "lambda_kv": weight}
    return found


async def run_cell(session: Session, problems: list[Problem], name: str, options: Mapping[str, object],
                   budget: int, seed: int) -> Cell:
    cell = Cell(name, budget)
    strategy = "ets" if name.startswith("ets") else name
    start = time.perf_counter()
    backend = session.setup.backend
    for problem in problems:
        before = backend.stats()  # problems run one at a time, so the engine's counters are this search's
        result = await solve_problem(problem, Budget(tokens=budget), session, strategy=strategy,
                                     seed=seed + (problem.index or 0), options=options)
        after = backend.stats()
        steps = after.decode_steps - before.decode_steps
        cell.mean_kv.append((after.kv_token_steps - before.kv_token_steps) / steps if steps else 0.0)
        cell.correct.append(grade_result(result, problem.gold or "").correct)
        cell.levels.append(int(str(problem.meta.get("level", 0))))
        cell.tokens.append(result.usage.generated_tokens)
        cell.peak_kv.append(result.usage.peak_kv_tokens)
    cell.wall_s = time.perf_counter() - start
    return cell


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(c.strategy for c in cells):
        mine = sorted((c for c in cells if c.strategy == name), key=lambda c: c.budget)
        ax.plot([sum(c.tokens) / len(c.tokens) for c in mine], [c.accuracy() for c in mine], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem (mean)")
    ax.set_ylabel("accuracy")
    ax.set_title("synthetic levels 4-8, mini reasoner + mini checker")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


async def main(args: argparse.Namespace) -> None:
    problems = load_dataset("synthetic", limit=args.problems, seed=SEED_BASE + args.seed, levels=range(4, 9))
    session = Session(setup=embedded_setup(threads=args.threads), store=None)
    cells: list[Cell] = []
    try:
        for budget in args.budgets:
            width = width_for(budget, args.width)
            for name, options in arms(width, args.step_tokens, args.ets_lambda_kv, args.distinct).items():
                cells.append(await run_cell(session, problems, name, options, budget, args.seed))
                c = cells[-1]
                print(f"  {name} @ {budget} (width {width}): acc={c.accuracy():.3f} tokens={median(c.tokens):.0f} "
                      f"kv={median(c.peak_kv):.0f} wall={c.wall_s:.1f}s", flush=True)
    finally:
        await session.aclose()
    print(format_table(["strategy", "budget", "acc", "acc L6-8", "mean tokens", "median peak KV",
                        "median mean KV", "wall s"],
                       [[c.strategy, c.budget, c.accuracy(), c.accuracy(HARD), sum(c.tokens) / len(c.tokens),
                         median(c.peak_kv), median(c.mean_kv), c.wall_s] for c in cells]))
    try:
        if args.plot is not None:
            plot(cells, args.plot)
            print(f"plot: {args.plot}")
    finally:  # the run's figures, the last line whatever becomes of the plot
        print(headline(cells, max(args.budgets)), flush=True)


def headline(cells: list[Cell], top: int) -> str:
    """A line per ETS arm comparing it with REBASE at the ``top`` budget, and last the headline figures. A run that
    drew no problem of levels 6-8 (fewer than three problems) leaves out ``search_minus_bon_l68``, which it cannot
    define, rather than print nan, and picks the best search by its accuracy over every level; one whose budget
    decoded nothing leaves out the mean KV ratio (0 over 0)."""
    by = {c.strategy: c for c in cells if c.budget == top}
    ets, rebase, bon = by["ets"], by["rebase"], by["best_of_n"]
    searches = [c for name, c in by.items() if name != "best_of_n"]
    hard_drawn = not math.isnan(bon.accuracy(HARD))
    best = max(searches, key=lambda c: c.accuracy(HARD) if hard_drawn else c.accuracy())
    # A budget too small for a decode step holds no KV on average in either arm: that ratio is left out, not 0.
    decoded = median(rebase.mean_kv) > 0 or median(ets.mean_kv) > 0
    lines = [f"{name} vs rebase @ {top}: peak KV {median(rebase.peak_kv) / max(1.0, median(c.peak_kv)):.2f}x "
             "smaller, " + (f"mean KV {median(rebase.mean_kv) / max(1.0, median(c.mean_kv)):.2f}x smaller, "
                            if decoded else "")
             + f"{rebase.wall_s / max(1e-9, c.wall_s):.2f}x faster, "
             f"accuracy {100 * (c.accuracy() - rebase.accuracy()):+.1f} points"
             for name, c in by.items() if name.startswith("ets")]
    figures = [f"ets_kv_reduction={median(rebase.peak_kv) / max(1.0, median(ets.peak_kv)):.2f}",
               *([f"ets_mean_kv_reduction={median(rebase.mean_kv) / max(1.0, median(ets.mean_kv)):.2f}"]
                 if decoded else []),
               f"ets_speedup={rebase.wall_s / max(1e-9, ets.wall_s):.2f}",
               f"ets_acc_delta={100 * (ets.accuracy() - rebase.accuracy()):.1f}",
               f"best_search_acc={100 * (best.accuracy(HARD) if hard_drawn else best.accuracy()):.1f}"]
    # The headline holds numbers only, so the best search's name goes on a line of its own.
    lines.append(f"best search @ {top}: {best.strategy}" + (" (by levels 6-8)" if hard_drawn else ""))
    if hard_drawn:
        figures.append(f"search_minus_bon_l68={100 * (best.accuracy(HARD) - bon.accuracy(HARD)):.1f}")
    return "\n".join([*lines, " ".join(figures)])


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=synthetic_problems, default=60)
    p.add_argument("--budgets", type=count_list, default=[1024, 4096])
    p.add_argument("--width", type=at_least_one, default=None, help="fixed search width (default: budget / 128)")
    p.add_argument("--ets-lambda-kv", type=weight_list, default=[1.0],
                   help="ETS's KV weight; several values add one ETS arm each (the first is the headline)")
    p.add_argument("--step-tokens", type=at_least_one, default=24)
    p.add_argument("--distinct", action="store_true", help="samples and children drawn without replacement")
    p.add_argument("--threads", type=at_least_one, default=1)
    p.add_argument("--seed", type=synthetic_seed(SEED_BASE), default=0,
                   help=f"the problems are drawn with synthetic seed {SEED_BASE} + this, and sampled with it")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG",
                   help="also draw accuracy against tokens into this PNG (needs the plot extra: matplotlib); the "
                        "committed one is benchmarks/results/tree_search.png")
    p.add_argument("--no-plot", action="store_true", help="draw no PNG even with --plot (the default draws none)")
    args = p.parse_args()
    if args.no_plot:
        args.plot = None
    # Checked before the run, which takes many minutes, rather than when the figure is drawn at its end.
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        p.error("the plot needs matplotlib: pip install -e '.[plot]', or pass --no-plot")
    if args.plot is not None and args.plot.suffix.lower().lstrip(".") not in plot_formats():
        p.error(f"argument --plot: must end in a format matplotlib writes ({', '.join(sorted(plot_formats()))}), "
                f"got {str(args.plot)!r}")
    if args.plot is not None and (problem := writable_path(args.plot)) is not None:
        p.error(f"argument --plot: {problem}")
    return args


def plot_formats() -> set[str]:
    """The file suffixes matplotlib's canvas writes, so that a name it cannot save (or one with no suffix, which
    it would save under another name) is refused before the run, not after the table, losing the headline."""
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


if __name__ == "__main__":
    run_script(lambda: anyio.run(main, parse()))
