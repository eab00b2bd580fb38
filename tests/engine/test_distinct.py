"""The Gumbel-top-k step of the local engine's draws without replacement, on hand-made distributions."""

from __future__ import annotations

import math

import torch

from ttc.engine.distinct import conditioned, gumbels, select, step_logprobs


def test_the_nucleus_is_the_samplers_and_is_renormalised() -> None:
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]], dtype=torch.float64)
    logq = step_logprobs(logits, 1.0, 0.8)  # 0.5 + 0.3 reach 0.8: the third token's predecessors hold 0.8
    assert torch.isfinite(logq[0]).tolist() == [True, True, False, False]
    assert torch.allclose(logq[0, :2].exp(), torch.tensor([0.625, 0.375], dtype=torch.float64))
    cooled = step_logprobs(logits, 0.5, 1.0).exp()[0]
    squared = torch.tensor([0.25, 0.09, 0.0225, 0.0025], dtype=torch.float64)
    assert torch.allclose(cooled, squared / squared.sum())


def test_conditioning_moves_each_rows_maximum_to_its_bound_and_keeps_the_order() -> None:
    generator = torch.Generator().manual_seed(3)
    values = gumbels((5, 7), generator, torch.device("cpu"))
    values[1, 3] = float("-inf")
    bound = torch.tensor([0.0, -1.5, 2.0, 10.0, -0.3], dtype=torch.float64)
    out = conditioned(values, bound)
    assert torch.allclose(out.max(dim=-1).values, bound)
    assert out[1, 3] == float("-inf")
    finite = torch.isfinite(values)
    for row in range(5):
        keep = finite[row]
        assert torch.equal(values[row][keep].argsort(), out[row][keep].argsort())
        assert (out[row][keep] <= bound[row] + 1e-12).all()


def test_a_step_keeps_the_largest_children_and_finished_texts() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 0.0, -50.0], [0.0, -1.0, -2.0]])
    kept, picks = select(logits, [0.0, -0.5], [1.0, 0.5], [0.7, -3.0], 3, temperature=1.0, top_p=1.0,
                         generator=generator)
    ranked = sorted([*(p.gumbel for p in picks), *([0.7, -3.0][i] for i in kept)], reverse=True)
    assert len(picks) + len(kept) == 3 and len(ranked) == 3
    assert 1.0 in [p.gumbel for p in picks] and kept == [0]  # the best child of the best row is its bound
    for p in picks:  # a child's log-probability is its parent's plus its token's
        step = torch.log_softmax(logits[p.row].double(), -1)[p.token].item()
        assert math.isclose(p.logprob, [0.0, -0.5][p.row] + step)
    few, every = select(torch.tensor([[0.0, -1e9]]), [0.0], [0.0], [], 4, temperature=1.0, top_p=0.5,
                        generator=generator)
    assert few == [] and [(p.row, p.token) for p in every] == [(0, 0)]  # the nucleus holds one child
