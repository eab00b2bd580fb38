"""The main job on the embedded default: greedy decoding against test-time compute on the synthetic benchmark.

It answers the first question a newcomer has — does spending more compute per question buy accuracy? — with
real (small) models on a laptop CPU, and leaves every trace in the store to inspect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ttc.api import Session, plan_runner
from ttc.bench.datasets import load_dataset
from ttc.bench.eval import EvalReport, Progress, evaluate
from ttc.bench.synthetic import EVAL_SEEDS
from ttc.errors import ConfigError
from ttc.types import Budget


@dataclass(frozen=True)
class Arm:
    """One configuration compared in the demo."""

    label: str
    strategy: str
    options: Mapping[str, object]
    budget: int


GREEDY = Arm("greedy", "best_of_n", {"n": 1, "temperature": 0.0, "max_tokens": 160}, 160)


def default_arms(samples: int) -> list[Arm]:
    return [
        GREEDY,
        Arm(f"majority@{samples}", "best_of_n", {"n": samples, "select": "vote", "max_tokens": 160},
            160 * samples),
        # Drawn with the plain vote's seeds; samples that miscompute a line or compute with a number nothing gave
        # do not vote. The mini reasoner slips in arithmetic when sampled where it does not greedily, and misreads
        # operands (docs/mini_models.md: arithmetic slips and misread operands).
        Arm(f"checked majority@{samples}", "best_of_n",
            {"n": samples, "select": "vote", "check_arithmetic": True, "check_operands": True, "max_tokens": 160},
            160 * samples),
        Arm(f"verifier-weighted@{samples}", "best_of_n", {"n": samples, "select": "weighted_vote", "max_tokens": 160},
            160 * samples),
        # The same budget given to the controller's own choice: with a process verifier, a step-level search; on
        # the embedded default REBASE, each round's children different next steps (benchmarks/search_vs_sampling.py).
        Arm("auto (tree search)", "auto", {}, 160 * samples),
    ]


_DEMO_SEED_OFFSET = 10_000  # the demo's problems sit apart from the synthetic dataset's first seeds


async def run_demo(session: Session, *, problems: int, samples: int, seed: int, concurrency: int,
                   progress: Progress | None = None) -> list[tuple[Arm, EvalReport]]:
    """Evaluate each arm on the same held-out synthetic problems (held-out seeds: never trained on)."""
    # Checked here, by the names the caller gave: past this point they become a limit, a budget and a seed offset.
    if problems < 1 or samples < 1:
        raise ConfigError(f"problems and samples must be >= 1, got problems={problems} samples={samples}")
    if not 0 <= seed < len(EVAL_SEEDS) - _DEMO_SEED_OFFSET:
        raise ConfigError(f"seed must be in [0, {len(EVAL_SEEDS) - _DEMO_SEED_OFFSET}), got {seed}")
    data = load_dataset("synthetic", limit=problems, seed=_DEMO_SEED_OFFSET + seed)
    arms = [arm for arm in default_arms(samples) if session.setup.verifier is not None or not _needs_verifier(arm)]
    for arm in arms:
        _check_arm(arm, samples, session)
    reports = []
    for arm in arms:
        report = await evaluate(data, Budget(tokens=arm.budget), session, strategy=arm.strategy,
                                options=arm.options, seed=seed, concurrency=concurrency,
                                config={"demo": arm.label, "dataset": "synthetic", "problems": problems},
                                progress=progress)
        reports.append((arm, report))
    return reports


def _needs_verifier(arm: Arm) -> bool:
    return arm.options.get("select") == "weighted_vote" or arm.strategy == "auto"


def _check_arm(arm: Arm, samples: int, session: Session) -> None:
    """Refuse an arm these samples make impossible before the first arm runs: it failed only after the arms before
    it had run (minutes), their results never shown, and it named the strategy's option rather than the samples."""
    try:
        plan_runner(arm.strategy, Budget(tokens=arm.budget), session, arm.options)
    except ConfigError as exc:
        raise ConfigError(f"the {arm.label} arm cannot run with samples={samples} ({exc}): use fewer samples "
                          "(--samples)") from None


__all__ = ["GREEDY", "Arm", "default_arms", "run_demo"]
