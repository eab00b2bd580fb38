"""Doubles for tree-search tests: a PRM that scores steps from a table, and a backend scripted per path.

They exist for selection logic only; nothing here pretends to be a model.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence

from ttc.budget import Meter
from ttc.strategies.base import Context, StrategyResult, make_strategy
from ttc.testing import ScriptedBackend
from ttc.trace import TraceRecorder
from ttc.types import Budget, Problem

PROMPT = "Q: {question}\n"


class TablePRM:
    """Step score = table[step text] (``default`` for unknown steps); records every call."""

    def __init__(self, table: Mapping[str, float] | None = None, default: float = 0.5) -> None:
        self.table = dict(table or {})
        self.default = default
        self.calls: list[tuple[str, ...]] = []

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        self.calls.append(tuple(steps))
        return [self.table.get(step, self.default) for step in steps]


class HashPRM:
    """A deterministic pseudo-score per step text, for runs where only reproducibility matters."""

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [hashlib.sha256(s.encode()).digest()[0] / 255 for s in steps]


def tree_responder(children: Mapping[str, Sequence[str]], question: str = "q",
                   fallback: str = "The answer is 0.\n") -> Callable[[str, int, int | None], str]:
    """A responder answering a prefix (the steps generated so far, concatenated) with its scripted children.

    Sample ``i`` of a call gets ``children[path][i]``; a path with no script gets ``fallback``.
    """
    head = PROMPT.format(question=question)

    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        path = prompt_text[len(head):]
        options = children.get(path)
        if not options:
            return fallback
        return options[index % len(options)]

    return respond


def random_responder(prompt_text: str, index: int, seed: int | None) -> str:
    """Seed-dependent steps of varying length, answering after a few steps or at random."""
    rng = random.Random(f"{prompt_text}|{index}|{seed}")
    depth = prompt_text.count("\n") - 1
    if depth >= 4 or rng.random() < 0.25:
        return f"The answer is {rng.randrange(4)}.\n"
    return f"step {depth}: {'x' * rng.randrange(1, 9)} {rng.randrange(5)}\n"


def make_ctx(backend: ScriptedBackend, prm: object, seed: int = 0, delimiter: str = "\n") -> Context:
    return Context(backend=backend, recorder=TraceRecorder(), rng=random.Random(seed), prm=prm,  # type: ignore[arg-type]
                   prompt_template=PROMPT, step_delimiter=delimiter)


def prefix_of(*steps: str, question: str = "q") -> tuple[int, ...]:
    """The exact token ids (code points) of the prompt followed by ``steps``."""
    return tuple(ord(ch) for ch in PROMPT.format(question=question) + "".join(steps))


def round_events(ctx: Context) -> list[dict[str, object]]:
    return [dict(e.payload) for e in ctx.recorder.events() if e.kind == "round"]


async def run_search(name: str, options: Mapping[str, object], backend: ScriptedBackend, prm: object, *,
                     budget: Budget | None = None, seed: int = 0,
                     delimiter: str = "\n") -> tuple[StrategyResult, Context, Meter]:
    """Run one registered search on question "q" and hand back its result, context and meter."""
    ctx = make_ctx(backend, prm, seed=seed, delimiter=delimiter)
    meter = Meter(budget or Budget(tokens=100_000))
    result = await make_strategy(name, options).run(Problem("q"), meter, ctx)
    return result, ctx, meter
