"""Lookahead reasoning against plain greedy decoding of the target, on the mini reasoner (target) and mini draft.

Each held-out synthetic problem is solved one at a time (latency, not throughput), by the target's greedy decoding
in one call and by the ``lookahead`` strategy at each ``gamma``, arms interleaved problem by problem so that
machine noise falls on all of them alike. Both engines' prefix caches are emptied before every arm, so no arm
finds the prompt, or the steps, that an arm before it computed: each meets the question as it would arrive.
With greedy decoding lookahead must write the target's own solution, so the table checks that (``same text``)
besides timing it. Two figures say where the time goes:

- ``target passes``: the target's sequential decode steps (the tokens of the longest step in each wave), against
  the tokens greedy decoding generates one after another. This is what lookahead saves wherever the target's
  decode step dominates, and it does not depend on the machine.
- ``draft/target cost per token``: both models' greedy tokens per second, measured in the same run. Lookahead pays
  off only where a draft token costs much less than a target token.

    python3 benchmarks/lookahead_reasoning.py                  # 96 problems, gamma 1-4
    python3 benchmarks/lookahead_reasoning.py --problems 48 --gammas 2,3

The last line is ``name=value`` pairs: ``speedup`` (the best gamma's wall-clock speed-up over greedy, a ratio of
medians), ``target_pass_ratio`` (that gamma's target passes over greedy's), ``same_text`` and ``acceptance``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from arguments import count_list, model_folder, run_script, synthetic_problems, synthetic_seed  # noqa: E402

from ttc.backends.local import LocalBackend  # noqa: E402
from ttc.bench.datasets import load_dataset  # noqa: E402
from ttc.budget import Meter  # noqa: E402
from ttc.models import mini_model_path, mini_prompt  # noqa: E402
from ttc.strategies.base import Context, make_strategy  # noqa: E402
from ttc.strategies.lookahead import LookaheadOptions  # noqa: E402
from ttc.trace import TraceRecorder  # noqa: E402
from ttc.types import Budget, Problem, Sampling  # noqa: E402

BUDGET = 4000
MAX_GAMMA = next(m.le for m in LookaheadOptions.model_fields["gamma"].metadata if hasattr(m, "le"))
"""The largest gamma the lookahead strategy takes, read from its options so the check follows the strategy."""


def gamma_list(text: str) -> list[int]:
    """Distinct gammas in [1, MAX_GAMMA]: the strategy refuses a larger one only when its arm first runs, after
    both models have loaded and the greedy arm has timed the first problem."""
    gammas = count_list(text)
    if max(gammas) > MAX_GAMMA:
        raise argparse.ArgumentTypeError(f"must be gammas in [1, {MAX_GAMMA}] (the lookahead strategy's range), "
                                         f"got {text!r}")
    return gammas


@dataclass
class Arm:
    """One way of decoding, over all problems."""

    name: str
    seconds: list[float] = field(default_factory=list)
    target_passes: list[int] = field(default_factory=list)
    draft_tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    right: list[bool] = field(default_factory=list)
    proposed: int = 0
    accepted: int = 0


async def timed(problem: Problem, arm: Arm, name: str, options: dict[str, object], target: LocalBackend,
                draft: LocalBackend) -> tuple[Meter, TraceRecorder]:
    """Run one strategy on one problem (the strategy alone: no trace store, whose writes are not decoding)."""
    ctx = Context(backend=target, recorder=TraceRecorder(), rng=random.Random(0),
                  prompt_template=mini_prompt("{question}"), draft=draft)
    meter = Meter(Budget(tokens=BUDGET))
    for backend in (target, draft):  # nothing is in flight between arms: the engines' threads are idle
        backend.engine.tree.clear_cache()
    started = time.perf_counter()
    found = await make_strategy(name, options).run(problem, meter, ctx)
    arm.seconds.append(time.perf_counter() - started)
    arm.texts.append(found.text)
    arm.right.append(found.answer == problem.gold)
    return meter, ctx.recorder


async def tokens_per_second(backend: LocalBackend, problems: list[Problem]) -> float:
    generated, started = 0, time.perf_counter()
    for problem in problems:
        prompt = await backend.tokenize(mini_prompt(problem.question), add_special_tokens=True)
        [out] = await backend.complete(prompt, 1, Sampling(max_tokens=400, temperature=0.0))
        generated += len(out.token_ids)
        await backend.release([*prompt, *out.token_ids])
    return generated / (time.perf_counter() - started)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=synthetic_problems, default=96)
    parser.add_argument("--seed", type=synthetic_seed(), default=300, help="synthetic dataset seed (held-out problems)")
    parser.add_argument("--gammas", type=gamma_list, default=[1, 2, 3, 4],
                        help="draft steps per round, comma-separated")
    parser.add_argument("--draft", type=model_folder, default=None,
                        help="a candidate draft folder instead of the shipped one")
    args = parser.parse_args(argv)
    gammas = args.gammas
    problems = load_dataset("synthetic", limit=args.problems, seed=args.seed)
    target = LocalBackend.from_pretrained(mini_model_path("reasoner"), threads=1)
    draft = LocalBackend.from_pretrained(args.draft or mini_model_path("draft"), threads=1)
    greedy = Arm("greedy")
    arms = {g: Arm(f"lookahead gamma={g}") for g in gammas}
    try:
        await tokens_per_second(target, problems[:4])  # warm both engines up
        await tokens_per_second(draft, problems[:4])
        target_rate = await tokens_per_second(target, problems[:24])
        draft_rate = await tokens_per_second(draft, problems[:24])
        for problem in problems:
            meter, _ = await timed(problem, greedy, "best_of_n", {"n": 1, "temperature": 0.0, "max_tokens": 400},
                                   target, draft)
            greedy.target_passes.append(meter.usage().generated_tokens)
            greedy.draft_tokens.append(0)
            for gamma, arm in arms.items():
                _, recorder = await timed(problem, arm, "lookahead", {"gamma": gamma}, target, draft)
                [counts] = [cast(dict[str, int], e.payload) for e in recorder.events()
                            if e.kind == "lookahead_summary"]
                arm.target_passes.append(counts["target_passes"])
                arm.draft_tokens.append(counts["draft_tokens"])
                arm.proposed += counts["proposed"]
                arm.accepted += counts["accepted"]
    finally:
        await target.aclose()
        await draft.aclose()
    report(problems, greedy, arms, draft_rate, target_rate)


def report(problems: list[Problem], greedy: Arm, arms: dict[int, Arm], draft_rate: float, target_rate: float) -> None:
    base_s = statistics.median(greedy.seconds)
    base_passes = sum(greedy.target_passes)
    print(f"{len(problems)} held-out synthetic problems, one at a time; medians over problems")
    print(f"draft/target cost per token: {target_rate / draft_rate:.2f} "
          f"(target {target_rate:.0f} tokens/s, draft {draft_rate:.0f} tokens/s, greedy, same run)")
    print(f"{'arm':<20}{'ms':>8}{'speedup':>9}{'target passes':>15}{'draft tokens':>14}{'acceptance':>12}"
          f"{'same text':>11}{'accuracy':>10}")
    rows = []
    for arm in [greedy, *arms.values()]:
        median_s = statistics.median(arm.seconds)
        pass_ratio = sum(arm.target_passes) / base_passes
        same = sum(a == b for a, b in zip(arm.texts, greedy.texts, strict=True)) / len(problems)
        acceptance = arm.accepted / arm.proposed if arm.proposed else float("nan")
        rows.append((arm, base_s / median_s, pass_ratio, same, acceptance))
        print(f"{arm.name:<20}{1000 * median_s:>8.1f}{base_s / median_s:>8.2f}x{pass_ratio:>15.2f}"
              f"{sum(arm.draft_tokens) / len(problems):>14.1f}{acceptance:>12.2f}{100 * same:>10.1f}%"
              f"{100 * sum(arm.right) / len(problems):>9.1f}%")
    _, speedup, pass_ratio, same, acceptance = max(rows[1:], key=lambda row: row[1])
    # No proposal, no acceptance rate: the figure is left out rather than printed as nan.
    print(f"speedup={speedup:.2f} target_pass_ratio={pass_ratio:.2f} same_text={same:.2f}"
          + ("" if math.isnan(acceptance) else f" acceptance={acceptance:.2f}"))


if __name__ == "__main__":
    run_script(lambda: asyncio.run(main()))
