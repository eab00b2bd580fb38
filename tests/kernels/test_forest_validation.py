"""Malformed forests fail loudly with a ConfigError that says what to fix, for every implementation."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from forest_cases import Maker

from ttc.errors import ConfigError
from ttc.kernels import Segment, forest_attention

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make() -> Maker:
    return Maker(0, heads_kv=2, dim=8, dtype=torch.float32)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_a_branch_with_no_segment_is_an_error(make: Maker, impl: str) -> None:
    segments = [make.segment(4, [0, 2])]
    with pytest.raises(ConfigError, match=r"query rows \[1\] attend over no keys"):
        forest_attention(make.randn(3, 1, 4, 8), segments, impl=impl)  # type: ignore[arg-type]


def test_a_branch_whose_only_segment_is_empty_is_an_error(make: Maker) -> None:
    with pytest.raises(ConfigError, match=r"query rows \[0\] attend over no keys"):
        forest_attention(make.randn(2, 1, 4, 8), [make.segment(0, [0]), make.segment(3, [1])])


@pytest.mark.parametrize(
    ("segments", "match"),
    [
        (lambda m: [m.segment(4, [0, 3])], "index 3, outside the 3 query rows"),
        (lambda m: [m.segment(4, [0, 1, 2, -1])], "index -1, outside"),
        (lambda m: [m.segment(4, [0, 1, 1, 2])], "same query row twice"),
        (lambda m: [m.segment(4, [0, 1, 2]), m.segment(1, [0], causal=True)], "causal with 1 positions but q has T=2"),
        (lambda m: [], "at least one Segment"),
    ],
    ids=["index-high", "index-negative", "duplicate", "causal-too-short", "no-segments"],
)
def test_bad_query_indices_and_segments(make: Maker, segments, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        forest_attention(make.randn(3, 2, 4, 8), segments(make))


def test_head_counts_dims_dtypes_and_devices_must_agree(make: Maker) -> None:
    seg = make.segment(4, [0])
    with pytest.raises(ConfigError, match="multiple of KV heads"):
        forest_attention(make.randn(1, 1, 3, 8), [seg])
    with pytest.raises(ConfigError, match="head dim 8, but q has head dim 16"):
        forest_attention(make.randn(1, 1, 4, 16), [seg])
    with pytest.raises(ConfigError, match=r"differs from q's torch\.float16"):
        forest_attention(make.randn(1, 1, 4, 8).half(), [seg])
    other_heads = Maker(1, heads_kv=4, dim=8, dtype=torch.float32).segment(2, [0])
    with pytest.raises(ConfigError, match="4 KV heads, but segments\\[0\\] has 2"):
        forest_attention(make.randn(1, 1, 4, 8), [seg, other_heads])
    with pytest.raises(ConfigError, match=r"\[B, T, H_q, D\]"):
        forest_attention(make.randn(1, 4, 8), [seg])
    with pytest.raises(ConfigError, match="float16, bfloat16 or float32"):
        forest_attention(make.randn(1, 1, 4, 8).double(), [seg])


def test_segment_shapes_are_checked_at_construction(make: Maker) -> None:
    k = make.randn(4, 2, 8)
    with pytest.raises(ConfigError, match="same shape"):
        Segment(k, k[:3], torch.tensor([0]))
    with pytest.raises(ConfigError, match=r"\[L, H_kv, D\]"):
        Segment(k[0], k[0], torch.tensor([0]))
    with pytest.raises(ConfigError, match="1-D int64"):
        Segment(k, k, torch.tensor([0.0]))


def test_bad_impl_and_scale_are_rejected(make: Maker) -> None:
    q, segments = make.randn(1, 1, 4, 8), [make.segment(3, [0])]
    with pytest.raises(ConfigError, match="impl must be one of"):
        forest_attention(q, segments, impl="cuda")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scale must be a positive finite number"):
        forest_attention(q, segments, scale=0.0)



@pytest.mark.parametrize("scale", [np.float32(0.25), np.float64(0.25), np.int64(1), Fraction(1, 4), 0.25, 1])
def test_any_real_scale_is_accepted(make: Maker, scale: object) -> None:
    """A numpy float32 scale (e.g. read from a model config array) was rejected as not a number."""
    q, segments = make.randn(1, 1, 4, 8), [make.segment(3, [0])]
    expected = forest_attention(q, segments, scale=float(scale))  # type: ignore[arg-type]
    assert torch.equal(forest_attention(q, segments, scale=scale), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [True, np.float32("nan"), np.float64("inf"), -1.0, np.float32(0), "0.5",
                                   torch.tensor(0.5)])
def test_non_real_non_finite_and_non_positive_scales_are_rejected(make: Maker, scale: object) -> None:
    q, segments = make.randn(1, 1, 4, 8), [make.segment(3, [0])]
    with pytest.raises(ConfigError, match="scale must be a positive finite number"):
        forest_attention(q, segments, scale=scale)  # type: ignore[arg-type]

def test_triton_on_cpu_without_the_interpreter_explains_what_to_do() -> None:
    script = (
        "import torch\n"
        "from ttc.errors import ConfigError\n"
        "from ttc.kernels import Segment, forest_attention\n"
        "k = torch.zeros(3, 1, 8)\n"
        "try:\n"
        "    forest_attention(torch.zeros(1, 1, 1, 8), [Segment(k, k, torch.tensor([0]))], impl='triton')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=True)
    assert "set TRITON_INTERPRET=1" in done.stdout and "impl='torch'" in done.stdout
