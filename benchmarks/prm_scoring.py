"""Incremental PRM scoring against rescoring every prefix from scratch, on recorded beam-search trees.

A beam search (width 8, depth 8) with the bundled mini reasoner and mini PRM is recorded on hard synthetic
problems; then every node of each tree is scored twice with a fresh mini PRM on the local engine:

- incremental: the step-score cache plus the engine's KV tree (a node costs only its new step);
- from scratch: no cache and no prefix sharing (each node's whole path is read again).

Prints scored tokens and wall time for both and their ratios (targets: >= 3x fewer tokens, >= 2x less time).

    python benchmarks/prm_scoring.py --problems 4
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import anyio
from arguments import at_least_one, run_script, synthetic_problems, synthetic_seed

from ttc.backends.local import LocalBackend
from ttc.bench.datasets import load_dataset
from ttc.bench.report import format_table
from ttc.budget import Meter
from ttc.config import embedded_setup
from ttc.models import mini_model_path
from ttc.strategies.base import Context, make_strategy
from ttc.trace import TraceRecorder
from ttc.types import Budget, Node
from ttc.verifiers.prm import TokenPRM
from ttc.verifiers.prm_presets import get_preset

SEED_BASE = 30_000
"""The held-out problems' synthetic seed is this plus ``--seed``."""


@dataclass
class Tally:
    engine_tokens: int = 0
    wall_s: float = 0.0
    nodes: int = 0


def step_paths(nodes: list[Node]) -> list[list[str]]:
    """Each non-root node's path of step texts (root excluded: it is the prompt)."""
    by_id = {n.id: n for n in nodes}
    paths = []
    for node in sorted(nodes, key=lambda n: n.id):
        if node.parent is None:
            continue
        steps, cur = [], node
        while cur.parent is not None:
            steps.append(cur.text.strip())
            cur = by_id[cur.parent]
        paths.append([s for s in reversed(steps) if s])
    return [p for p in paths if p]


async def record_trees(problems: int, seed: int, threads: int) -> list[tuple[str, list[list[str]]]]:
    setup = embedded_setup(threads=threads)
    data = load_dataset("synthetic", limit=problems, seed=SEED_BASE + seed, levels=[8])
    trees = []
    try:
        for problem in data:
            ctx = Context(backend=setup.backend, recorder=TraceRecorder(), rng=random.Random(seed),
                          verifier=setup.verifier, prm=setup.prm, prompt_template=setup.prompt_template)
            strategy = make_strategy("beam", {"beam_width": 8, "expand": 4, "max_depth": 8, "max_step_tokens": 24})
            await strategy.run(problem, Meter(Budget(tokens=20_000)), ctx)
            trees.append((problem.question, step_paths(ctx.recorder.nodes())))
    finally:
        await setup.aclose()
    return trees


async def score_all(trees: list[tuple[str, list[list[str]]]], *, incremental: bool, threads: int) -> Tally:
    backend = LocalBackend.from_pretrained(mini_model_path("prm"), threads=threads, share_prefix=incremental)
    tally = Tally()
    try:
        for question, paths in trees:
            prm = TokenPRM(backend, get_preset("mini"), incremental=incremental)
            start = time.perf_counter()
            for steps in paths:
                await prm.score_steps(question, steps)
            tally.wall_s += time.perf_counter() - start
            tally.nodes += len(paths)
        tally.engine_tokens = backend.stats().scored_tokens
    finally:
        await backend.aclose()
    return tally


async def main(args: argparse.Namespace) -> None:
    trees = await record_trees(args.problems, args.seed, args.threads)
    print(f"recorded {len(trees)} trees, {sum(len(p) for _, p in trees)} nodes")
    scratch = await score_all(trees, incremental=False, threads=args.threads)
    incremental = await score_all(trees, incremental=True, threads=args.threads)
    print(format_table(["mode", "nodes", "scored tokens", "wall s"],
                       [["from scratch", scratch.nodes, scratch.engine_tokens, scratch.wall_s],
                        ["incremental", incremental.nodes, incremental.engine_tokens, incremental.wall_s]]))
    print(f"token_ratio={scratch.engine_tokens / max(1, incremental.engine_tokens):.2f} "
          f"wall_ratio={scratch.wall_s / max(1e-9, incremental.wall_s):.2f} nodes={incremental.nodes}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=synthetic_problems, default=4)
    p.add_argument("--threads", type=at_least_one, default=1)
    p.add_argument("--seed", type=synthetic_seed(SEED_BASE), default=0,
                   help=f"the problems are drawn with synthetic seed {SEED_BASE} + this")
    return p.parse_args()


if __name__ == "__main__":
    run_script(lambda: anyio.run(main, parse()))
