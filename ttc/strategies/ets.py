"""ETS, efficient tree search (Hooper et al. 2025): REBASE's exploration with a KV-aware choice of what to keep.

Before REBASE shares out the width, an integer program (``ets_ilp``) picks the open nodes worth keeping: it
rewards their softmax weights, charges ``lambda_kv`` for the KV each one keeps live (an ancestor shared by kept
siblings is charged once, so keeping siblings is cheap and keeping scattered cousins is dear), and pays
``lambda_coverage`` for every semantic cluster of steps that keeps at least one member, so cheap redundancy does
not crowd out a genuinely different line of reasoning. Steps are clustered by embedding (``embedder``) with
average linkage up to cosine distance ``cluster_threshold`` (or into ``n_clusters``). Nodes the program drops are
pruned and released; the width then goes to the kept nodes in proportion to their softmax weights, as in REBASE
(so a node kept for its cluster whose weight earns no share of the width is pruned there, and its cluster with it).
With ``lambda_kv = 0`` and ``lambda_coverage = 0`` no program runs: every node is kept and ETS is REBASE.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import anyio.to_thread
from pydantic import Field

from ttc.backends.base import Backend
from ttc.budget import Meter
from ttc.strategies.base import Context, StrategyResult, register
from ttc.strategies.embed import (
    AnyEmbedder,
    BackendEmbedder,
    HashedNgramEmbedder,
    cluster,
    default_threshold,
    embed_steps,
    resolve_embedder,
)
from ttc.strategies.ets_ilp import KvCost, paper_problem, solve_retention
from ttc.strategies.rebase import RebaseBase, RebaseOptions, Retained
from ttc.strategies.tree import SearchTree, StepNode
from ttc.types import Problem

MAX_LAMBDA = 1e6
"""The largest weight ETS takes; the paper's are of order 1."""


class EtsOptions(RebaseOptions):
    # Both weights are scale-free (values sum to 1, costs are shares of the tree), so 1e6 is a generous bound:
    # near 1e16 one term swamps the others to float precision, and past about 1e20 HiGHS reads the costs as
    # infinite and returns no solution.
    lambda_kv: float = Field(1.0, ge=0.0, le=MAX_LAMBDA,
                             description="weight of the KV cost of kept nodes (the paper's lambda_b)")
    lambda_coverage: float = Field(1.0, ge=0.0, le=MAX_LAMBDA,
                                   description="weight of semantic coverage (the paper's lambda_s)")
    cluster_threshold: float | None = Field(
        None, gt=0.0, le=2.0,
        description="cosine distance that separates clusters (default: the embedder's own, see embed.py)")
    n_clusters: int | None = Field(None, ge=1, description="fixed number of clusters instead of a threshold")
    embedder: str = Field("auto", min_length=1, description="auto, ngram, backend, or a local model folder")
    kv_cost: KvCost = Field("tokens", description="charge a node its tokens' share of the tree, or 1 / nodes")


@register
class Ets(RebaseBase[EtsOptions]):
    name = "ets"
    Options = EtsOptions

    def check_setup(self, backend: Backend) -> None:
        super().check_setup(backend)
        resolve_embedder(self.options.embedder, backend)  # a folder holding no model, a backend that cannot embed

    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        self.check_setup(ctx.backend)  # run alone (not through solve), it still fails before any tokens are spent
        return await super().run(problem, meter, ctx)

    async def retain(self, tree: SearchTree, frontier: list[StepNode], owed: int) -> Retained:
        opts = self.options
        if opts.lambda_kv == 0 and opts.lambda_coverage == 0:
            # Weights alone: the program would keep the owed best nodes and break ties its own way (where the
            # width is narrowed), not REBASE's; keeping everything is REBASE exactly.
            return await super().retain(tree, frontier, owed)
        labels, embedded_by = await self._clusters(tree, frontier)
        paths = [node.path()[:-1] for node in frontier]
        problem = paper_problem(
            ids=[n.id for n in frontier], scores=[n.score for n in frontier],
            tokens=[len(n.token_ids) for n in frontier], ancestors=[[a.id for a in path] for path in paths],
            ancestor_tokens={a.id: len(a.token_ids) for path in paths for a in path}, clusters=labels,
            temperature=opts.balance_temperature, lambda_kv=opts.lambda_kv, lambda_coverage=opts.lambda_coverage,
            max_keep=owed, kv_cost=opts.kv_cost)
        solution = await anyio.to_thread.run_sync(functools.partial(solve_retention, problem))
        kept_ids = set(solution.kept)
        kept = [n for n in frontier if n.id in kept_ids]
        dropped = [n for n in frontier if n.id not in kept_ids]
        cluster_of = {n.id: label for n, label in zip(frontier, labels, strict=True)}
        covered = set(solution.covered)
        # Where the width binds, the nodes the program would keep without it were dropped for the width alone.
        unbound: set[int] = set()
        if dropped and len(kept) >= owed:
            free = await anyio.to_thread.run_sync(functools.partial(solve_retention, replace(problem, max_keep=None)))
            unbound = set(free.kept)

        def reason(node: StepNode) -> str:
            if node.id in unbound or (opts.lambda_kv == 0 and opts.lambda_coverage == 0):
                return f"ilp: not among the {owed} nodes the width keeps"
            if opts.lambda_coverage > 0 and cluster_of[node.id] in covered:
                return "ilp: redundant cluster"
            return "ilp: kv cost"

        reasons = {n.id: reason(n) for n in dropped}
        payload: dict[str, object] = {
            "clusters": {str(n.id): cluster_of[n.id] for n in frontier},
            "n_clusters": len(set(labels)),
            "covered": list(solution.covered),
            "objective": solution.objective,
            "reward": solution.reward,
            "kv_cost": solution.kv_cost,
            "ilp_status": solution.status,
        }
        if embedded_by is not None:
            payload["embedder"] = embedded_by
        return Retained(nodes=kept, dropped=dropped, reasons=reasons, payload=payload)

    async def _clusters(self, tree: SearchTree, frontier: list[StepNode]) -> tuple[list[int], str | None]:
        """The frontier's clusters, and the embedder used where it is not the one asked for."""
        if len(frontier) == 1:
            return [0], None
        embedder: AnyEmbedder = resolve_embedder(self.options.embedder, tree.ctx.backend)
        embedded_by = None
        calls = tree.meter.calls_left() if isinstance(embedder, BackendEmbedder) else None
        if calls is not None and calls < 2:
            # The backend's embeddings would take the last call, leaving none for the expansion they choose for.
            embedder, embedded_by = HashedNgramEmbedder(), "ngram: no call left to spare for the backend's"
        vectors = await embed_steps(embedder, [n.text for n in frontier], [n.prefix for n in frontier])
        if isinstance(embedder, BackendEmbedder):  # a request to the backend, counted and limited as one
            tree.meter.charge([], calls=1)
        threshold = self.options.cluster_threshold or default_threshold(embedder)
        return cluster(vectors, threshold=threshold, n_clusters=self.options.n_clusters), embedded_by
