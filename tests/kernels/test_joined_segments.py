"""Segments read by the same rows, which the torch path joins into one attention call.

A decoding row with several private blocks, or a causal segment after its own prefixes, is read as one unit of
concatenated KV up to ``_JOIN_TOKENS`` positions. Each case here must equal plain fp64 attention and the Triton
path (which never joins), so a join that reorders, drops or double-counts positions, or lets a causal mask apply
to the wrong part of a unit, fails.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # repeated here so running this file alone can never compile for a GPU

import pytest
import torch
from forest_cases import TOLERANCE, Maker, assert_close, naive_attention

from ttc.kernels import Segment, forest_attention
from ttc.kernels.reference import _JOIN_TOKENS


def cases(make: Maker, tokens: int) -> dict[str, tuple[int, list[Segment]]]:
    """Forests as (batch, segments), each built so some rows read several segments alone or together."""
    return {
        "one row, many blocks": (1, [make.segment(n, [0]) for n in (16, 16, 16, 5)]
                                 + [make.segment(tokens, [0], causal=True)]),
        "shared prefix, then private blocks per row": (3, [make.segment(40, [0, 1, 2])]
                                                      + [make.segment(16, [b]) for b in (0, 0, 1, 2, 2)]
                                                      + [make.segment(3 + tokens, [b], causal=True) for b in range(3)]),
        "two rows reading the same blocks": (2, [make.segment(12, [0, 1]), make.segment(9, [0, 1]),
                                                 make.segment(7, [0, 1])]),
        "blocks longer than one unit": (2, [make.segment(_JOIN_TOKENS - 10, [0]), make.segment(30, [0]),
                                            make.segment(_JOIN_TOKENS + 3, [1]), make.segment(8, [1]),
                                            make.segment(tokens, [0], causal=True),
                                            make.segment(tokens + 2, [1], causal=True)]),
    }


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("name", ["one row, many blocks", "shared prefix, then private blocks per row",
                                  "two rows reading the same blocks", "blocks longer than one unit"])
def test_joined_segments_equal_plain_attention_and_the_triton_path(name: str, tokens: int) -> None:
    make = Maker(11 + tokens, heads_kv=2, dim=8, dtype=torch.float32)
    batch, segments = cases(make, tokens)[name]
    q = make.randn(batch, tokens, 4, 8)
    out = forest_attention(q, segments, impl="torch")
    assert_close(out, naive_attention(q, segments)[0], TOLERANCE[torch.float32], f"torch {name}")
    assert_close(out, forest_attention(q, segments, impl="triton").double(), TOLERANCE[torch.float32], f"triton {name}")
