"""merge_state on its own: merging two halves of a key set equals attention over the whole of it."""

from __future__ import annotations

import pytest
import torch

from ttc.errors import ConfigError
from ttc.kernels import merge_state


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 softmax attention: q [N, D], k/v [L, D] -> (out [N, D], lse [N])."""
    scores = q.double() @ k.double().T
    return torch.softmax(scores, dim=-1) @ v.double(), torch.logsumexp(scores, dim=-1)


@pytest.mark.parametrize("cut", [1, 7, 12])
def test_merging_two_halves_equals_attention_over_the_whole(cut: int) -> None:
    gen = torch.Generator().manual_seed(cut)
    q, k, v = (torch.randn(5, 16, generator=gen) * 2, torch.randn(13, 16, generator=gen),
               torch.randn(13, 16, generator=gen))
    out_a, lse_a = attention(q, k[:cut], v[:cut])
    out_b, lse_b = attention(q, k[cut:], v[cut:])
    out, lse = merge_state(out_a.float(), lse_a.float(), out_b.float(), lse_b.float())
    want_out, want_lse = attention(q, k, v)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-6, rtol=1e-6)
    swapped, swapped_lse = merge_state(out_b.float(), lse_b.float(), out_a.float(), lse_a.float())
    torch.testing.assert_close(swapped, out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(swapped_lse, lse, atol=1e-6, rtol=1e-6)


def test_an_empty_part_leaves_the_other_unchanged() -> None:
    gen = torch.Generator().manual_seed(0)
    out_a, lse_a = torch.randn(3, 4, 8, generator=gen), torch.randn(3, 4, generator=gen)
    empty_out, empty_lse = torch.zeros(3, 4, 8), torch.full((3, 4), float("-inf"))
    for merged, merged_lse in (merge_state(out_a, lse_a, empty_out, empty_lse),
                               merge_state(empty_out, empty_lse, out_a, lse_a)):
        torch.testing.assert_close(merged, out_a, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(merged_lse, lse_a)


def test_two_empty_parts_give_zeros_and_minus_infinity_not_nan() -> None:
    out, lse = merge_state(torch.zeros(2, 8), torch.full((2,), float("-inf")),
                           torch.zeros(2, 8), torch.full((2,), float("-inf")))
    assert not torch.isnan(out).any() and torch.equal(out, torch.zeros(2, 8))
    assert torch.isneginf(lse).all()


def test_huge_log_sum_exps_do_not_overflow() -> None:
    out_a, out_b = torch.ones(1, 4), -torch.ones(1, 4)
    out, lse = merge_state(out_a, torch.tensor([1000.0]), out_b, torch.tensor([1000.0 + torch.log(torch.tensor(3.0))]))
    torch.testing.assert_close(out, torch.full((1, 4), -0.5))  # weights 1/4 and 3/4
    torch.testing.assert_close(lse, torch.tensor([1000.0 + float(torch.log(torch.tensor(4.0)))]))


def test_half_precision_outputs_keep_their_dtype_and_lse_is_fp32() -> None:
    gen = torch.Generator().manual_seed(1)
    out_a, out_b = torch.randn(4, 8, generator=gen).half(), torch.randn(4, 8, generator=gen).half()
    lse_a, lse_b = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    out, lse = merge_state(out_a, lse_a, out_b, lse_b)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    w_a = torch.sigmoid(lse_a - lse_b).unsqueeze(-1)
    torch.testing.assert_close(out.float(), w_a * out_a.float() + (1 - w_a) * out_b.float(), atol=2e-3, rtol=2e-3)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ConfigError, match="merge_state needs"):
        merge_state(torch.zeros(2, 8), torch.zeros(2), torch.zeros(3, 8), torch.zeros(3))
    with pytest.raises(ConfigError, match="merge_state needs"):
        merge_state(torch.zeros(2, 8), torch.zeros(2, 1), torch.zeros(2, 8), torch.zeros(2, 1))
    with pytest.raises(ConfigError, match="merge_state needs four tensors; lse_b is a float"):
        merge_state(torch.zeros(2, 8), torch.zeros(2), torch.zeros(2, 8), 0.0)  # type: ignore[arg-type]
