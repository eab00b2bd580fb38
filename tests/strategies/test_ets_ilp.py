"""ETS's retention program on hand-made frontiers with optimal answers worked out by hand, and against brute force."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from ttc.errors import ConfigError
from ttc.strategies.ets_ilp import Leaf, RetentionProblem, paper_problem, softmax, solve_retention

P, Q = 100, 200  # ancestor ids


def siblings_and_cousin(lambda_kv: float, lambda_coverage: float) -> RetentionProblem:
    """s1, s2 share ancestor P (cluster 0); t hangs under Q (cluster 1). Leaves cost 1, ancestors 2."""
    leaves = (Leaf(1, 0.5, 1.0, (P,), 0), Leaf(2, 0.4, 1.0, (P,), 0), Leaf(3, 0.3, 1.0, (Q,), 1))
    return RetentionProblem(leaves=leaves, ancestor_cost={P: 2.0, Q: 2.0}, lambda_kv=lambda_kv,
                            lambda_coverage=lambda_coverage)


def test_siblings_are_cheaper_than_a_cousin() -> None:
    # {s1,s2}: 0.9 - 0.12*4 = 0.42 beats all three: 1.2 - 0.12*7 = 0.36 (P is paid once for both siblings).
    solution = solve_retention(siblings_and_cousin(0.12, 0.0))
    assert solution.kept == (1, 2)
    assert solution.ancestors == (P,)
    assert solution.kv_cost == pytest.approx(4.0)
    assert solution.objective == pytest.approx(0.42)
    assert solution.status == "optimal"


def test_coverage_brings_the_other_cluster_back() -> None:
    # Same costs, coverage 0.2 per cluster: all three 0.36 + 0.4 = 0.76 beats {s1,s2} 0.42 + 0.2 = 0.62.
    solution = solve_retention(siblings_and_cousin(0.12, 0.2))
    assert solution.kept == (1, 2, 3)
    assert solution.covered == (0, 1)
    assert solution.objective == pytest.approx(0.76)


def test_dear_kv_and_strong_coverage_keep_one_per_cluster() -> None:
    # lambda_kv 0.5, coverage 1.5: {s1,t} 0.8 - 3 + 3 = 0.8; {s1} 0.5; {s1,s2} 0.4; all 0.7; {t} 0.3.
    solution = solve_retention(siblings_and_cousin(0.5, 1.5))
    assert solution.kept == (1, 3)
    assert solution.ancestors == (P, Q)
    assert solution.objective == pytest.approx(0.8)


def test_a_single_node_is_kept_even_at_a_loss() -> None:
    problem = RetentionProblem(leaves=(Leaf(7, 0.1, 5.0, (P,)),), ancestor_cost={P: 5.0}, lambda_kv=1.0)
    solution = solve_retention(problem)
    assert solution.kept == (7,)
    assert solution.objective == pytest.approx(0.1 - 10.0 + 1.0)


def test_one_cluster_and_dear_kv_keep_only_the_best() -> None:
    leaves = tuple(Leaf(i, v, 1.0, (P,), 0) for i, v in ((1, 0.3), (2, 0.5), (3, 0.4)))
    # {2}: 0.5 - 0.45*3 + 1 = 0.15; {2,3}: 0.9 - 0.45*4 + 1 = 0.1.
    solution = solve_retention(RetentionProblem(leaves=leaves, ancestor_cost={P: 2.0}, lambda_kv=0.45))
    assert solution.kept == (2,)


def test_free_kv_keeps_every_valued_node_up_to_the_bound() -> None:
    leaves = tuple(Leaf(i, v, 3.0, (P + i,), i % 2) for i, v in enumerate([0.1, 0.4, 0.2, 0.3]))
    costs = {P + i: 9.0 for i in range(4)}
    assert solve_retention(RetentionProblem(leaves=leaves, ancestor_cost=costs, lambda_kv=0.0,
                                            lambda_coverage=0.0)).kept == (0, 1, 2, 3)
    capped = solve_retention(RetentionProblem(leaves=leaves, ancestor_cost=costs, lambda_kv=0.0,
                                              lambda_coverage=0.0, max_keep=2))
    assert capped.kept == (1, 3)


def test_ancestors_are_only_those_of_kept_nodes() -> None:
    leaves = (Leaf(1, 0.9, 1.0, (P, P + 1), 0), Leaf(2, 0.05, 1.0, (Q,), 0))
    solution = solve_retention(RetentionProblem(leaves=leaves, ancestor_cost={P: 1.0, P + 1: 1.0, Q: 1.0},
                                                lambda_kv=0.1))
    assert solution.kept == (1,) and solution.ancestors == (P, P + 1)


def _brute_force(problem: RetentionProblem) -> float:
    best = -math.inf
    n = len(problem.leaves)
    top = n if problem.max_keep is None else problem.max_keep
    for size in range(problem.min_keep, top + 1):
        for subset in itertools.combinations(problem.leaves, size):
            ancestors = {a for leaf in subset for a in leaf.ancestors}
            kv = sum(leaf.cost for leaf in subset) + sum(problem.ancestor_cost[a] for a in ancestors)
            covered = len({leaf.cluster for leaf in subset})
            value = (sum(leaf.value for leaf in subset) - problem.lambda_kv * kv
                     + problem.lambda_coverage * problem.cluster_weight * covered)
            best = max(best, value)
    return best


def test_matches_brute_force_on_random_trees() -> None:
    rng = random.Random(11)
    for _ in range(60):
        ancestors = list(range(100, 100 + rng.randrange(1, 5)))
        leaves = []
        for i in range(rng.randrange(1, 7)):
            path = tuple(sorted(rng.sample(ancestors, rng.randrange(0, len(ancestors) + 1))))
            leaves.append(Leaf(i, rng.random(), rng.random(), path, rng.randrange(3)))
        problem = RetentionProblem(leaves=tuple(leaves), ancestor_cost={a: rng.random() * 2 for a in ancestors},
                                   lambda_kv=rng.choice([0.0, 0.3, 1.0, 3.0]),
                                   lambda_coverage=rng.choice([0.0, 0.5, 2.0]), cluster_weight=rng.random(),
                                   max_keep=rng.choice([None, 1, 2, 4]))
        solution = solve_retention(problem)
        assert solution.objective == pytest.approx(_brute_force(problem), abs=1e-7)
        assert 1 <= len(solution.kept) <= (problem.max_keep or len(leaves))


def test_paper_coefficients_are_scale_free() -> None:
    problem = paper_problem(ids=[1, 2, 3], scores=[0.9, 0.9, 0.4], tokens=[10, 30, 20],
                            ancestors=[[P], [P], [Q]], ancestor_tokens={P: 25, Q: 15}, clusters=[0, 0, 1],
                            temperature=0.5, lambda_kv=1.0, lambda_coverage=1.0, max_keep=2)
    values = [leaf.value for leaf in problem.leaves]
    assert sum(values) == pytest.approx(1.0)
    assert values == pytest.approx(softmax([0.9, 0.9, 0.4], 0.5))
    # Token shares of the live tree: P and Q are counted once although P has two frontier children.
    total = 10 + 30 + 20 + 25 + 15
    assert [leaf.cost for leaf in problem.leaves] == pytest.approx([10 / total, 30 / total, 20 / total])
    assert problem.ancestor_cost == pytest.approx({P: 25 / total, Q: 15 / total})
    assert problem.cluster_weight == pytest.approx(0.5)
    assert problem.max_keep == 2
    by_node = paper_problem(ids=[1, 2, 3], scores=[0.9, 0.9, 0.4], tokens=[10, 30, 20],
                            ancestors=[[P], [P], [Q]], ancestor_tokens={P: 25, Q: 15}, clusters=[0, 0, 1],
                            temperature=0.5, lambda_kv=1.0, lambda_coverage=1.0, kv_cost="nodes")
    costs = [leaf.cost for leaf in by_node.leaves] + list(by_node.ancestor_cost.values())
    assert costs == pytest.approx([1 / 5] * 5)


def test_invalid_problems_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no frontier"):
        solve_retention(RetentionProblem(leaves=()))
    with pytest.raises(ConfigError, match="unique"):
        solve_retention(RetentionProblem(leaves=(Leaf(1, 0.5, 1.0), Leaf(1, 0.5, 1.0))))
    with pytest.raises(ConfigError, match="min_keep"):
        solve_retention(RetentionProblem(leaves=(Leaf(1, 0.5, 1.0),), min_keep=2))
    with pytest.raises(ConfigError, match="missing"):
        paper_problem(ids=[1], scores=[0.5], tokens=[3], ancestors=[[P]], ancestor_tokens={}, clusters=[0],
                      temperature=1.0, lambda_kv=1.0, lambda_coverage=1.0)
    with pytest.raises(ConfigError, match="temperature"):
        softmax([0.1], 0.0)


def test_a_solve_stopped_by_its_time_limit_is_not_called_optimal(monkeypatch: pytest.MonkeyPatch) -> None:
    """HiGHS at its time limit hands back its incumbent (status 1), which may be poor: not "optimal", and never
    worse than the single-best-leaf fallback."""
    import numpy as np
    import scipy.optimize
    from scipy.optimize import OptimizeResult

    def stopped(cost: object, **kwargs: object) -> OptimizeResult:
        x = np.zeros(len(cost))  # type: ignore[arg-type]
        x[2] = 1.0  # the cousin alone: 0.3 - 0.12 * 3 = -0.06
        return OptimizeResult(x=x, status=1, success=False, message="Time limit reached.")

    monkeypatch.setattr(scipy.optimize, "milp", stopped)
    solution = solve_retention(siblings_and_cousin(0.12, 0.0))
    assert solution.status != "optimal"
    # The fallback keeps s1 alone: 0.5 - 0.12 * (1 + 2) = 0.14 beats the incumbent's -0.06.
    assert solution.kept == (1,) and solution.objective == pytest.approx(0.14)
    assert solution.status == "fallback"


def test_the_fallback_counts_a_leafs_path_and_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no solution from HiGHS, the single leaf kept is the best by the program's own objective: the cousin's
    own cost is lowest, but its dear ancestor makes it the worst single leaf to keep."""
    import scipy.optimize
    from scipy.optimize import OptimizeResult

    def unknown(cost: object, **kwargs: object) -> OptimizeResult:
        return OptimizeResult(x=None, status=4, success=False, message="model_status is Unknown")

    monkeypatch.setattr(scipy.optimize, "milp", unknown)
    leaves = (Leaf(1, 0.3, 2.0, (P,), 0), Leaf(2, 0.3, 1.0, (Q,), 1))
    solution = solve_retention(RetentionProblem(leaves=leaves, ancestor_cost={P: 1.0, Q: 5.0}, lambda_kv=0.1))
    # Leaf 1: 0.3 - 0.1 * (2 + 1) + 1 = 1.0; leaf 2: 0.3 - 0.1 * (1 + 5) + 1 = 0.7.
    assert solution.status == "fallback"
    assert solution.kept == (1,) and solution.objective == pytest.approx(1.0)
