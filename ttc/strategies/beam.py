"""Step-level beam search against a process reward model (Snell et al. 2024; search-and-learn's beam search).

The prompt is expanded into ``beam_width * expand`` first steps. Every round the best ``beam_width`` open nodes
by aggregated PRM score are kept and each gets ``expand`` children; the rest are cut. A node that finishes leaves
the beam as a candidate and its slot is not refilled, so the search ends once ``beam_width`` solutions are complete
(or at ``max_depth``, or when the budget runs out).
"""

from __future__ import annotations

from pydantic import Field

from ttc.strategies.base import register
from ttc.strategies.tree import SearchTree, TreeSearch, TreeSearchOptions


class BeamOptions(TreeSearchOptions):
    beam_width: int = Field(4, ge=1, le=1024, description="open nodes kept per round (N)")
    expand: int = Field(4, ge=1, le=256, description="children sampled per kept node")


@register
class BeamSearch(TreeSearch[BeamOptions]):
    name = "beam"
    Options = BeamOptions

    async def search(self, tree: SearchTree) -> None:
        opts = self.options
        await tree.expand([(tree.root, opts.beam_width * opts.expand)])
        while True:
            frontier = tree.frontier()
            slots = opts.beam_width - len(tree.finished)
            if slots <= 0 or not frontier or tree.meter.exhausted():
                return
            keep, cut = frontier[:slots], frontier[slots:]
            await tree.prune(cut, "beam cut")
            tree.round_event(keep, cut, slots=slots)
            if not await tree.expand([(node, opts.expand) for node in keep]):
                return
