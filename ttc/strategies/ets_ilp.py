"""ETS's retention problem: which frontier nodes to keep, as an integer linear program solved by HiGHS.

Keeping a frontier node keeps its KV cache and that of every ancestor on its path; ancestors shared by several
kept nodes are paid for once, which is what makes keeping siblings cheaper than keeping cousins. The program
(maximised; ETS, Hooper et al. 2025, Sec. 4)::

    sum_i value_i x_i  -  lambda_kv * (sum_i cost_i x_i + sum_a cost_a y_a)  +  lambda_coverage * sum_c w z_c

    x_i <= y_a          for every ancestor a on node i's path    (a kept node needs its path)
    y_a <= sum x_i      over the nodes below a                   (an ancestor is live only for a kept node)
    z_c <= sum x_i      over the nodes in cluster c              (a cluster is covered by a kept member)
    min_keep <= sum_i x_i <= max_keep

with x, y, z binary. :func:`paper_problem` fills the coefficients as the paper does, so that the two weights are
scale-free: values are the REBASE softmax weights of the PRM scores (they sum to 1), a node's cost is its share of
the live tree's KV (``tokens / all tokens``, or ``1 / nodes`` when counting nodes as the paper does), and each
cluster is worth ``1 / clusters``. :func:`solve_retention` takes any coefficients, so hand-made frontiers can be
checked against optimal answers worked out on paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ttc.errors import ConfigError

KvCost = Literal["tokens", "nodes"]


@dataclass(frozen=True)
class Leaf:
    """A frontier node as the program sees it. ``ancestors`` are the tree nodes above it that hold KV (the
    shared prompt, always kept, is left out)."""

    id: int
    value: float
    cost: float
    ancestors: tuple[int, ...] = ()
    cluster: int = 0


@dataclass(frozen=True)
class RetentionProblem:
    leaves: tuple[Leaf, ...]
    ancestor_cost: Mapping[int, float] = field(default_factory=dict)
    lambda_kv: float = 1.0
    lambda_coverage: float = 1.0
    cluster_weight: float = 1.0
    min_keep: int = 1
    max_keep: int | None = None


@dataclass(frozen=True)
class Retention:
    """The solution: kept leaves and the ancestors they keep live, with the objective's parts.

    ``status`` is ``"optimal"``, ``"time_limit"`` when HiGHS stopped at its time limit and its unproven
    incumbent is kept, or ``"fallback"`` when HiGHS returned no solution in time (or only one worse than this)
    and the single leaf with the best objective (its path's KV and its cluster counted) was kept instead.
    """

    kept: tuple[int, ...]
    ancestors: tuple[int, ...]
    covered: tuple[int, ...]
    objective: float
    reward: float
    kv_cost: float
    status: str


def solve_retention(problem: RetentionProblem, *, time_limit_s: float = 10.0) -> Retention:
    """Solve the program to optimality (``mip_rel_gap=0``) within HiGHS's tolerances: choices whose objectives
    differ by less than about 1e-6 count as ties, which HiGHS breaks deterministically."""
    _check(problem)
    # Imported here: scipy.optimize takes a second to import, and only ETS needs it.
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    leaves = problem.leaves
    ancestors = sorted({a for leaf in leaves for a in leaf.ancestors})
    clusters = sorted({leaf.cluster for leaf in leaves})
    n, m, k = len(leaves), len(ancestors), len(clusters)
    col_y = {a: n + j for j, a in enumerate(ancestors)}
    col_z = {c: n + m + j for j, c in enumerate(clusters)}

    # milp minimises, so the objective is negated.
    cost = np.zeros(n + m + k)
    for i, leaf in enumerate(leaves):
        cost[i] = problem.lambda_kv * leaf.cost - leaf.value
    for a in ancestors:
        cost[col_y[a]] = problem.lambda_kv * problem.ancestor_cost.get(a, 0.0)
    for c in clusters:
        cost[col_z[c]] = -problem.lambda_coverage * problem.cluster_weight

    rows: list[dict[int, float]] = []
    upper: list[float] = []
    lower: list[float] = []
    for i, leaf in enumerate(leaves):
        for a in set(leaf.ancestors):
            rows.append({i: 1.0, col_y[a]: -1.0})
            lower.append(-np.inf)
            upper.append(0.0)
    for a in ancestors:
        row = {col_y[a]: 1.0}
        row.update({i: -1.0 for i, leaf in enumerate(leaves) if a in leaf.ancestors})
        rows.append(row)
        lower.append(-np.inf)
        upper.append(0.0)
    for c in clusters:
        row = {col_z[c]: 1.0}
        row.update({i: -1.0 for i, leaf in enumerate(leaves) if leaf.cluster == c})
        rows.append(row)
        lower.append(-np.inf)
        upper.append(0.0)
    rows.append(dict.fromkeys(range(n), 1.0))
    lower.append(float(problem.min_keep))
    upper.append(float(n if problem.max_keep is None else min(problem.max_keep, n)))

    matrix = lil_matrix((len(rows), n + m + k))
    for r, row in enumerate(rows):
        for col, coef in row.items():
            matrix[r, col] = coef
    result = milp(cost, constraints=LinearConstraint(matrix.tocsr(), lower, upper), bounds=Bounds(0, 1),
                  integrality=np.ones(n + m + k), options={"mip_rel_gap": 0.0, "time_limit": time_limit_s})
    if result.x is None:
        return _fallback(problem)
    chosen = {leaves[i].id for i in range(n) if result.x[i] > 0.5}
    if result.status == 0:
        return _retention(problem, chosen, "optimal")
    # Stopped early (time limit): HiGHS's incumbent is feasible but unproven, and may be worse than the fallback.
    incumbent = _retention(problem, chosen, "time_limit")
    if problem.min_keep > 1:
        return incumbent
    fallback = _fallback(problem)
    return fallback if fallback.objective > incumbent.objective else incumbent


def _fallback(problem: RetentionProblem) -> Retention:
    """The best single leaf by the program's own objective: its path's KV and its cluster count, as they would in
    the program's solution."""
    return max((_retention(problem, {leaf.id}, "fallback") for leaf in problem.leaves), key=lambda r: r.objective)


def _retention(problem: RetentionProblem, kept_ids: set[int], status: str) -> Retention:
    kept = [leaf for leaf in problem.leaves if leaf.id in kept_ids]
    ancestors = sorted({a for leaf in kept for a in leaf.ancestors})
    covered = sorted({leaf.cluster for leaf in kept})
    reward = math.fsum(leaf.value for leaf in kept)
    kv = math.fsum([*(leaf.cost for leaf in kept), *(problem.ancestor_cost.get(a, 0.0) for a in ancestors)])
    objective = reward - problem.lambda_kv * kv + problem.lambda_coverage * problem.cluster_weight * len(covered)
    return Retention(kept=tuple(leaf.id for leaf in kept), ancestors=tuple(ancestors), covered=tuple(covered),
                     objective=objective, reward=reward, kv_cost=kv, status=status)


def _check(problem: RetentionProblem) -> None:
    if not problem.leaves:
        raise ConfigError("the retention problem has no frontier nodes: pass at least one Leaf")
    ids = [leaf.id for leaf in problem.leaves]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"frontier node ids must be unique, got {ids}")
    if set(ids) & {a for leaf in problem.leaves for a in leaf.ancestors}:
        raise ConfigError("a frontier node is listed as another frontier node's ancestor: frontier nodes are leaves")
    if problem.lambda_kv < 0 or problem.lambda_coverage < 0:
        raise ConfigError("lambda_kv and lambda_coverage must be >= 0")
    top = len(problem.leaves) if problem.max_keep is None else problem.max_keep
    if not 0 <= problem.min_keep <= min(top, len(problem.leaves)):
        raise ConfigError(f"need 0 <= min_keep <= max_keep and min_keep <= frontier size; got min_keep="
                          f"{problem.min_keep}, max_keep={problem.max_keep}, frontier={len(problem.leaves)}")
    values = [leaf.value for leaf in problem.leaves] + [leaf.cost for leaf in problem.leaves]
    if not all(math.isfinite(v) for v in [*values, *problem.ancestor_cost.values()]):
        raise ConfigError("retention values and costs must be finite numbers")


def softmax(scores: Sequence[float], temperature: float) -> list[float]:
    """REBASE's balance weights: ``exp(score / T)`` normalised to sum to 1 (shifted by the max for stability)."""
    if temperature <= 0:
        raise ConfigError(f"balance temperature must be > 0, got {temperature}")
    if not scores:
        return []
    top = max(scores)
    raw = [math.exp((s - top) / temperature) for s in scores]
    total = math.fsum(raw)
    return [r / total for r in raw]


def paper_problem(*, ids: Sequence[int], scores: Sequence[float], tokens: Sequence[int],
                  ancestors: Sequence[Sequence[int]], ancestor_tokens: Mapping[int, int],
                  clusters: Sequence[int], temperature: float, lambda_kv: float, lambda_coverage: float,
                  max_keep: int | None = None, kv_cost: KvCost = "tokens") -> RetentionProblem:
    """ETS's coefficients for one frontier: softmax values, KV shares as costs, ``1 / clusters`` per cluster.

    With ``kv_cost="nodes"`` every node costs ``1 / (frontier + ancestors)``, the paper's uniform cost; with
    ``"tokens"`` a node costs its share of the tree's live tokens, which is the same when all steps are equally
    long and tracks the real KV footprint when they are not.
    """
    if not len(ids) == len(scores) == len(tokens) == len(ancestors) == len(clusters):
        raise ConfigError("paper_problem needs one score, token count, ancestor path and cluster per frontier node")
    if not ids:
        raise ConfigError("paper_problem got an empty frontier: there is nothing to retain")
    unique_ancestors = sorted({a for path in ancestors for a in path})
    missing = [a for a in unique_ancestors if a not in ancestor_tokens]
    if missing:
        raise ConfigError(f"ancestor token counts are missing for nodes {missing}")
    if kv_cost == "nodes":
        share = 1.0 / (len(ids) + len(unique_ancestors))
        leaf_cost = [share] * len(ids)
        anc_cost = dict.fromkeys(unique_ancestors, share)
    else:
        total = sum(tokens) + sum(ancestor_tokens[a] for a in unique_ancestors)
        scale = 1.0 / total if total > 0 else 0.0
        leaf_cost = [t * scale for t in tokens]
        anc_cost = {a: ancestor_tokens[a] * scale for a in unique_ancestors}
    values = softmax(scores, temperature)
    leaves = tuple(Leaf(id=i, value=v, cost=c, ancestors=tuple(path), cluster=k)
                   for i, v, c, path, k in zip(ids, values, leaf_cost, ancestors, clusters, strict=True))
    return RetentionProblem(leaves=leaves, ancestor_cost=anc_cost, lambda_kv=lambda_kv,
                            lambda_coverage=lambda_coverage, cluster_weight=1.0 / len(set(clusters)),
                            max_keep=max_keep)


__all__ = ["KvCost", "Leaf", "Retention", "RetentionProblem", "paper_problem", "softmax", "solve_retention"]
