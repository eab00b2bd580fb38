"""Both cascade-attention implementations against plain softmax attention over each branch's concatenated KV.

The Triton kernels run under TRITON_INTERPRET=1 (set in conftest.py before triton is imported).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # repeated here so running this file alone can never compile for a GPU

import pytest
import torch
from forest_cases import LSE_TOLERANCE, TOLERANCE, Maker, assert_close, naive_attention, random_tree

from ttc.errors import ConfigError
from ttc.kernels import Segment, forest_attention, forest_attention_with_lse
from ttc.kernels.segments import check_forest

IMPLS = ["torch", "triton"]


@pytest.fixture(scope="module", autouse=True)
def _interpreted() -> None:
    from ttc.kernels.triton_forest import interpreting

    assert interpreting(), "triton was imported before TRITON_INTERPRET=1 was set; run tests/kernels on its own"


def check(q: torch.Tensor, segments: list[Segment], impl: str, scale: float | None = None) -> None:
    out, lse = forest_attention_with_lse(q, segments, impl=impl, scale=scale)  # type: ignore[arg-type]
    want_out, want_lse = naive_attention(q, segments, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert_close(out, want_out, TOLERANCE[q.dtype], f"{impl} output")
    assert_close(lse, want_lse, LSE_TOLERANCE[q.dtype], f"{impl} lse")


@pytest.mark.parametrize("impl", IMPLS)
def test_single_branch_single_segment_odd_length(impl: str) -> None:
    make = Maker(0, heads_kv=2, dim=16, dtype=torch.float32)
    check(make.randn(1, 1, 4, 16), [make.segment(37, [0])], impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_shared_prefix_with_single_token_and_empty_suffixes(impl: str, dtype: torch.dtype) -> None:
    make = Maker(1, heads_kv=2, dim=16, dtype=dtype)
    segments = [make.segment(23, [0, 1, 2, 3, 4])]
    segments += [make.segment(length, [b]) for b, length in enumerate([1, 0, 5, 1, 0])]
    check(make.randn(5, 1, 4, 16), segments, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("heads", [(4, 2), (2, 2), (4, 1)], ids=["gqa", "mha", "mqa"])
def test_two_trees_of_different_depth(impl: str, heads: tuple[int, int]) -> None:
    heads_q, heads_kv = heads
    make = Maker(2, heads_kv=heads_kv, dim=8, dtype=torch.float32)
    segments = [
        make.segment(11, [0, 1, 2, 3]),  # tree A: root, two children, leaves
        make.segment(3, [0, 1]),
        make.segment(7, [2, 3]),
        make.segment(1, [0]),
        make.segment(2, [1]),
        make.segment(0, [2]),
        make.segment(4, [3]),
        make.segment(19, [4, 5]),  # tree B: a root and two leaves
        make.segment(1, [4]),
        make.segment(6, [5]),
        make.segment(13, [6]),  # a lone branch
    ]
    check(make.randn(7, 1, heads_q, 8), segments, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_causal_last_segment_verifies_several_tokens(impl: str, dtype: torch.dtype) -> None:
    make = Maker(3, heads_kv=2, dim=16, dtype=dtype)
    tokens = 3
    segments = [make.segment(17, [0, 1, 2]), make.segment(5, [1, 2])]
    segments += [make.segment(tokens + extra, [b], causal=True) for b, extra in enumerate([0, 2, 5])]
    check(make.randn(3, tokens, 4, 16), segments, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_segment_shared_by_branches_and_non_causal_tokens(impl: str) -> None:
    make = Maker(4, heads_kv=1, dim=8, dtype=torch.float32)
    segments = [make.segment(2, [0, 1]), make.segment(4, [0, 1], causal=True), make.segment(3, [2])]
    check(make.randn(3, 4, 2, 8), segments, impl)  # row 2 sees its 3 keys with every one of its 4 tokens


@pytest.mark.parametrize("impl", IMPLS)
def test_many_branches_with_suffixes_of_many_lengths(impl: str) -> None:
    make = Maker(5, heads_kv=2, dim=8, dtype=torch.float32)
    batch = 24 if impl == "torch" else 12  # the interpreter runs programs one by one
    segments = [make.segment(9, list(range(batch)))]
    segments += [make.segment(1 + (b * 7) % 19, [b]) for b in range(batch)]
    check(make.randn(batch, 1, 4, 8), segments, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_more_query_rows_than_one_block(impl: str) -> None:
    # 20 branches x 4 heads per KV head = 80 stacked rows: the Triton kernel needs two 64-row blocks.
    make = Maker(13, heads_kv=2, dim=16, dtype=torch.float32)
    segments = [make.segment(5, list(range(20))), make.segment(3, list(range(0, 20, 2)))]
    segments += [make.segment(1, [b]) for b in range(1, 20, 2)]
    check(make.randn(20, 1, 8, 16), segments, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(4))
def test_random_forests(impl: str, seed: int) -> None:
    tokens = 1 + seed % 3
    segments = random_tree(seed, batch=6 + seed, tokens=tokens, heads_kv=2, dim=8, dtype=torch.float32)
    check(Maker(100 + seed, 2, 8, torch.float32).randn(6 + seed, tokens, 4, 8), segments, impl)


@pytest.mark.parametrize("seed", range(4, 16))
def test_random_forests_torch(seed: int) -> None:
    tokens = 1 + seed % 3
    dtype = torch.float16 if seed % 2 else torch.float32
    segments = random_tree(seed, batch=3 + seed, tokens=tokens, heads_kv=2, dim=8, dtype=dtype, max_length=40)
    check(Maker(100 + seed, 2, 8, dtype).randn(3 + seed, tokens, 4, 8), segments, "torch")


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16(impl: str) -> None:
    make = Maker(6, heads_kv=2, dim=16, dtype=torch.bfloat16)
    segments = [make.segment(20, [0, 1]), make.segment(3, [0]), make.segment(1, [1])]
    check(make.randn(2, 1, 4, 16), segments, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_head_dim_not_a_power_of_two_and_custom_scale(impl: str) -> None:
    make = Maker(7, heads_kv=2, dim=24, dtype=torch.float32)
    segments = [make.segment(10, [0, 1]), make.segment(2, [1])]
    check(make.randn(2, 1, 4, 24), segments, impl, scale=0.3)


@pytest.mark.parametrize("impl", IMPLS)
def test_strided_views_of_one_kv_pool_and_transposed_kv(impl: str) -> None:
    make = Maker(8, heads_kv=2, dim=16, dtype=torch.float32)
    pool_k, pool_v = make.randn(64, 2, 16), make.randn(64, 2, 16)
    segments = [
        Segment(pool_k[3:30], pool_v[3:30], torch.tensor([0, 1, 2])),  # views into a pool: read in place
        Segment(pool_k[40:41], pool_v[40:41], torch.tensor([0])),
        Segment(pool_k[50:57], pool_v[50:57], torch.tensor([2, 1])),  # index order need not be sorted
    ]
    check(make.randn(3, 1, 4, 16), segments, impl)
    k_heads_first = make.randn(2, 9, 16)  # [H_kv, L, D] storage: strides differ from the pool's
    segments.append(Segment(k_heads_first.transpose(0, 1), k_heads_first.transpose(0, 1) * 2, torch.tensor([1])))
    q = make.randn(3, 4, 1, 16).transpose(1, 2)  # non-contiguous queries
    check(q, segments, impl)


def test_triton_splits_long_segments_and_merges_the_splits() -> None:
    from ttc.kernels.triton_forest import forest_attention_triton

    make = Maker(9, heads_kv=2, dim=16, dtype=torch.float32)
    tokens = 2
    segments = [make.segment(150, [0, 1, 2]), make.segment(70, [2], causal=True), make.segment(2, [0, 1])]
    q = make.randn(3, tokens, 4, 16)
    want_out, want_lse = naive_attention(q, segments)
    for split in (1, 40):
        out, lse = forest_attention_triton(q, check_forest(q, segments, None), kv_split=split)
        assert_close(out, want_out, 1e-5, f"kv_split={split} output")
        assert_close(lse, want_lse, 1e-5, f"kv_split={split} lse")
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="kv_split must be a positive int number of keys"):
            forest_attention_triton(q, check_forest(q, segments, None), kv_split=bad)  # type: ignore[arg-type]


def test_torch_blocks_long_segments_without_changing_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import ttc.kernels.reference as reference

    make = Maker(10, heads_kv=2, dim=8, dtype=torch.float32)
    segments = [make.segment(300, [0, 1]), make.segment(130, [0, 1], causal=True)]
    q = make.randn(2, 3, 4, 8)
    monkeypatch.setattr(reference, "_SCORE_BLOCK_ELEMENTS", 1)  # forces key blocks of the 64-key minimum
    check(q, segments, "torch")


def test_auto_on_cpu_and_forest_attention_match_with_lse() -> None:
    make = Maker(11, heads_kv=2, dim=8, dtype=torch.float32)
    segments = [make.segment(12, [0, 1]), make.segment(3, [1])]
    q = make.randn(2, 1, 4, 8)
    auto = forest_attention(q, segments)
    torch_out, _ = forest_attention_with_lse(q, segments, impl="torch")
    triton_out = forest_attention(q, segments, impl="triton")
    assert torch.equal(auto, torch_out)
    torch.testing.assert_close(triton_out, torch_out, atol=1e-5, rtol=1e-5)


def test_attention_is_exact_where_one_key_dominates() -> None:
    # Large scores (|s| ~ 1e3) overflow a naive exp; both paths must subtract the running maximum.
    make = Maker(12, heads_kv=1, dim=8, dtype=torch.float32)
    segments = [make.segment(5, [0, 1]), make.segment(4, [1])]
    q = make.randn(2, 1, 1, 8) * 300
    for impl in IMPLS:
        check(q, segments, impl)
