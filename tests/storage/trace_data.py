"""Realistic trace values for the storage tests: a seeded tree, its events, and the result that closes it."""

from __future__ import annotations

import random

from ttc.types import Budget, Candidate, Node, Problem, Result, TraceEvent, Usage

STATUSES = ("active", "pruned", "finished", "selected")


def make_problem(index: int, dataset: str = "toy") -> Problem:
    return Problem(question=f"What is {index} + {index}?", gold=str(2 * index), dataset=dataset, index=index,
                   meta={"level": index % 5, "tags": ["arith", "easy"]})


def make_nodes(count: int, seed: int = 0) -> list[Node]:
    """A random tree: node i's parent is an earlier node, so depths and parents are consistent."""
    rng = random.Random(seed)
    nodes: list[Node] = []
    for i in range(count):
        parent = None if i == 0 else rng.randrange(i)
        depth = 0 if parent is None else nodes[parent].depth + 1
        steps = tuple(round(rng.random(), 6) for _ in range(rng.randrange(4)))
        nodes.append(Node(
            id=i, parent=parent, depth=depth, text=f"step {i}: ünïcødé ∑ {rng.random():.4f}\nnext line",
            token_count=rng.randrange(1, 200), status=rng.choice(STATUSES),
            logprob=None if i % 3 == 0 else -rng.random() * 50, step_scores=steps,
            score=None if i % 4 == 0 else rng.random(), answer=None if i % 2 else str(i),
            reason=None if i % 5 else "pruned by beam width",
        ))
    return nodes


def make_events(count: int, seed: int = 0) -> list[TraceEvent]:
    rng = random.Random(seed)
    return [
        TraceEvent(kind="select" if i % 2 else "expand",
                   payload={"round": i, "kept": [rng.randrange(100) for _ in range(3)], "note": None,
                            "nested": {"score": rng.random()}},
                   t=i * 0.125, node_id=None if i == 0 else i)
        for i in range(count)
    ]


def make_result(trace_id: str, nodes: list[Node], strategy: str = "beam") -> Result:
    finished = [n for n in nodes if n.answer is not None][:3]
    candidates = tuple(
        Candidate(text=n.text, answer=n.answer, score=n.score, token_count=n.token_count, node_id=n.id,
                  votes=float(k + 1))
        for k, n in enumerate(finished)
    )
    usage = Usage(generated_tokens=sum(n.token_count for n in nodes), prompt_tokens=40, cached_prompt_tokens=32,
                  verifier_tokens=7, backend_calls=len(nodes), verifier_calls=2, peak_kv_tokens=512, wall_s=1.25)
    return Result(answer=finished[0].answer if finished else None, text=finished[0].text if finished else "",
                  score=0.75, strategy=strategy, usage=usage, trace_id=trace_id, candidates=candidates)


BUDGET = Budget(tokens=4096, wall_s=30.0)
