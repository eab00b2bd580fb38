"""Diverse verifier tree search (Beeching et al. 2024, search-and-learn): independent greedy subtrees.

The prompt is expanded into ``subtrees`` first steps, one per subtree. Each round every unfinished subtree
expands its single head into ``expand`` children and keeps only the best by PRM score: a beam of width one, so
the subtrees cannot collapse onto one high-scoring prefix the way a shared beam does. A subtree ends when its
head completes. Finished siblings of a head are kept as candidates: they cost nothing more.
"""

from __future__ import annotations

from pydantic import Field

from ttc.strategies.base import register
from ttc.strategies.tree import SearchTree, StepNode, TreeSearch, TreeSearchOptions, by_rank


class DvtsOptions(TreeSearchOptions):
    subtrees: int = Field(4, ge=1, le=1024, description="independent subtrees (N / M)")
    expand: int = Field(4, ge=1, le=256, description="children per head each round (M)")


@register
class Dvts(TreeSearch[DvtsOptions]):
    name = "dvts"
    Options = DvtsOptions

    async def search(self, tree: SearchTree) -> None:
        opts = self.options
        heads: list[StepNode] = await tree.expand([(tree.root, opts.subtrees)])
        tree.round_event(heads, [], subtrees={str(i): h.id for i, h in enumerate(heads)})
        while True:
            growing = sorted((h for h in heads if h.open), key=by_rank)
            if not growing or tree.meter.exhausted() or not await tree.expand([(h, opts.expand) for h in growing]):
                return
            kept: list[StepNode] = []
            cut: list[StepNode] = []
            for index, head in enumerate(heads):
                # Children the tree dropped (too long for the verifier) are no head: with none left, the subtree ends.
                children = [child for child in head.children if not child.pruned]
                if not head.expanded or not children:
                    continue
                best, *rest = sorted(children, key=by_rank)
                heads[index] = best
                kept.append(best)
                cut += [child for child in rest if child.open]
            await tree.prune(cut, "dvts: not the best child of its subtree")
            tree.round_event(kept, cut, subtrees={str(i): h.id for i, h in enumerate(heads)})
