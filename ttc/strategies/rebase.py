"""REBASE, reward-balanced search (Wu et al. 2024): children allotted in proportion to softmax(score / T).

The search keeps ``width`` solutions in flight. Each round the ``width - finished`` children still owed are
shared among all open nodes by their softmax weights (largest remainders get the leftovers, so the shares sum
exactly); a node whose share rounds to zero is pruned. Low temperatures concentrate on the best nodes, high ones
explore. The search ends when ``width`` solutions are complete, at ``max_depth``, or when the budget runs out.
With ``narrow_to_finish`` (``auto`` sets it), a search that has completed nothing keeps only the paths its budget
can finish (``finishable``), so a budget too small for the width still ends with an answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import Field

from ttc.strategies.base import register
from ttc.strategies.ets_ilp import softmax
from ttc.strategies.tree import SearchTree, StepNode, TreeSearch, TreeSearchOptions, by_rank

FINISH_HORIZON = 0.5
"""With ``narrow_to_finish``, the share of the steps a path has taken that it is assumed still to need."""


class RebaseOptions(TreeSearchOptions):
    width: int = Field(16, ge=1, le=4096, description="solutions in flight; children shared out per round")
    balance_temperature: float = Field(0.2, gt=0.0, description="softmax temperature over PRM scores")
    narrow_to_finish: bool = Field(
        False, description="while no solution is complete, only as many paths in flight as the tokens left can "
                           "carry half as far again as the best one has come")


def finishable(tree: SearchTree, best: StepNode, owed: int) -> int:
    """How many of ``owed`` paths the tokens left can carry ``FINISH_HORIZON`` as far again as ``best`` has come,
    at the tree's mean step length; at least one.

    A wide search on a budget too small for its questions cuts every path short and ends with no answer at all
    (at 256 tokens ``auto`` did on 54 of 192 held-out mini problems, all of levels 6-8); narrowing to what can
    finish answers most of them, and solved 1.1 to 2.1 points more at 256 and 512 tokens (docs/mini_models.md).
    """
    left = tree.meter.tokens_left()
    steps = tree.nodes[1:]
    if left is None or not steps:
        return owed
    per_step = sum(len(n.token_ids) for n in steps) / len(steps)
    to_go = max(1, math.floor(best.depth * FINISH_HORIZON))
    return max(1, min(owed, math.floor(left / (per_step * to_go)) if per_step > 0 else owed))


def apportion(nodes: Sequence[StepNode], weights: Sequence[float], total: int) -> dict[int, int]:
    """Split ``total`` children by weight (largest remainder); ties go to the better node as ``by_rank`` orders
    them (a judged step before an unscored one of the same score, then the older)."""
    quotas = [w * total for w in weights]
    shares = {n.id: math.floor(q) for n, q in zip(nodes, quotas, strict=True)}
    order = sorted(range(len(nodes)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), *by_rank(nodes[i])))
    for i in order[: total - sum(shares.values())]:
        shares[nodes[i].id] += 1
    return shares


@dataclass
class Retained:
    """The open nodes that share the width this round, the ones dropped (with why), and extra event fields."""

    nodes: list[StepNode]
    dropped: list[StepNode] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    payload: dict[str, object] = field(default_factory=dict)


RebaseOptionsT = TypeVar("RebaseOptionsT", bound=RebaseOptions)


class RebaseBase(TreeSearch[RebaseOptionsT]):
    """The REBASE loop; ETS overrides :meth:`retain` to choose which open nodes take part."""

    async def search(self, tree: SearchTree) -> None:
        opts = self.options
        await tree.expand([(tree.root, opts.width)])
        while True:
            frontier = tree.frontier()
            owed = opts.width - len(tree.finished)
            if owed <= 0 or not frontier or tree.meter.exhausted():
                return
            narrowed: dict[str, int] = {}
            if opts.narrow_to_finish and not tree.finished:
                cap = finishable(tree, frontier[0], owed)
                if cap < owed:
                    narrowed, owed = {"narrowed_from": owed}, cap
            chosen = await self.retain(tree, frontier, owed)
            retained = chosen.nodes
            shares = apportion(retained, softmax([n.score for n in retained], opts.balance_temperature), owed)
            keep = [n for n in retained if shares[n.id] > 0]
            starved = [n for n in retained if shares[n.id] == 0]
            await tree.prune(chosen.dropped, chosen.reasons)
            await tree.prune(starved, "rebase: no share of the width")
            tree.round_event(keep, [*chosen.dropped, *starved], owed=owed,
                             allocation={str(n.id): shares[n.id] for n in keep}, **narrowed, **chosen.payload)
            if not await tree.expand([(n, shares[n.id]) for n in keep]):
                return

    async def retain(self, tree: SearchTree, frontier: list[StepNode], owed: int) -> Retained:
        """Which open nodes share the width (REBASE: all of them)."""
        return Retained(nodes=frontier)


@register
class Rebase(RebaseBase[RebaseOptions]):
    name = "rebase"
    Options = RebaseOptions
