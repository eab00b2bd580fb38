"""Sampling: greedy, temperature, top-p truncation, and per-sequence random streams."""

from __future__ import annotations

import math

import pytest
import torch

from ttc.engine.sampler import RowSettings, branch_seed, make_generator, sample

CPU = torch.device("cpu")


def _row(seed: int, temperature: float = 1.0, top_p: float = 1.0) -> RowSettings:
    return RowSettings(temperature, top_p, make_generator(seed, CPU))


def test_greedy_picks_the_argmax_and_reports_model_logprobs() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, -1.0]])
    tokens, logprobs = sample(logits, [_row(0, 0.0), _row(1, 0.0)])
    assert tokens == [1, 0]
    expected = torch.log_softmax(logits, -1)
    assert logprobs == [expected[0, 1].item(), expected[1, 0].item()]


def test_a_row_samples_the_same_token_whatever_else_is_batched() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    alone = [sample(logits[i : i + 1], [_row(100 + i)])[0][0] for i in range(6)]
    batched, _ = sample(logits, [_row(100 + i) for i in range(6)])
    mixed, _ = sample(logits, [_row(100 + i, temperature=0.0 if i % 2 else 1.0) for i in range(6)])
    nucleus, _ = sample(logits, [_row(100 + i, top_p=0.5 if i % 2 else 1.0) for i in range(6)])
    assert batched == alone
    assert [m for i, m in enumerate(mixed) if i % 2 == 0] == [a for i, a in enumerate(alone) if i % 2 == 0]
    assert [m for i, m in enumerate(nucleus) if i % 2 == 0] == [a for i, a in enumerate(alone) if i % 2 == 0]


def test_frequencies_follow_the_tempered_distribution() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(4000, -1)
    tokens, _ = sample(logits, [_row(seed) for seed in range(4000)])
    assert [tokens.count(t) / 4000 for t in range(3)] == pytest.approx([0.5, 0.3, 0.2], abs=0.03)
    cold, _ = sample(logits, [_row(seed, temperature=0.25) for seed in range(4000)])
    p = torch.softmax(logits[0] / 0.25, -1)
    assert cold.count(0) / 4000 == pytest.approx(p[0].item(), abs=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(3000, -1)
    seen, _ = sample(logits, [_row(seed, top_p=0.6) for seed in range(3000)])
    assert seen.count(2) == seen.count(3) == 0
    assert seen.count(0) / 3000 == pytest.approx(0.5 / 0.8, abs=0.03)
    tiny, _ = sample(logits[:50], [_row(seed, top_p=1e-6) for seed in range(50)])
    assert set(tiny) == {0}


def test_branch_seeds_differ_and_are_stable() -> None:
    seeds = {branch_seed(s, b) for s in range(20) for b in range(20)}
    assert len(seeds) == 400
    assert branch_seed(5, 3) == branch_seed(5, 3)
    assert all(0 <= s < 2**63 for s in seeds)


def test_logprob_is_log_of_the_untempered_probability() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    token, [logprob] = sample(logits, [_row(1, temperature=5.0)])
    assert math.isclose(logprob, torch.log_softmax(logits, -1)[0, token[0]].item(), rel_tol=1e-6)
