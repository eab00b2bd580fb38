"""A forest layout checked once and attended by several layers, each over its own KV.

The engine's forwards build one layout and call ``layout_attention`` once per layer; the torch path keeps the
groups it derives from the layout between those calls. Each layer here must still equal plain attention over its
own KV, so a table kept from an earlier layer can never leak that layer's tensors into a later one.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # repeated here so running this file alone can never compile for a GPU

import pytest
import torch
from forest_cases import TOLERANCE, Maker, assert_close, naive_attention, random_tree

from ttc.errors import ConfigError
from ttc.kernels import Segment, forest_attention, forest_layout, layout_attention


def layout_of(segments: list[Segment], batch: int, tokens: int):  # type: ignore[no-untyped-def]
    return forest_layout([s.queries for s in segments], [s.length for s in segments],
                         [s.causal for s in segments], batch=batch, tokens=tokens)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("seed", range(3))
def test_each_layer_of_one_layout_equals_attention_over_its_own_kv(impl: str, seed: int) -> None:
    batch, tokens = 5 + seed, 1 + seed % 2
    first = random_tree(seed, batch=batch, tokens=tokens, heads_kv=2, dim=8, dtype=torch.float32, max_length=30)
    layout = layout_of(first, batch, tokens)
    for layer in range(3):
        make = Maker(50 + 10 * seed + layer, 2, 8, torch.float32)
        segments = [Segment(make.randn(*s.k.shape), make.randn(*s.v.shape), s.queries, s.causal) for s in first]
        q = make.randn(batch, tokens, 4, 8)
        out = layout_attention(q, layout, [s.k for s in segments], [s.v for s in segments],
                               impl=impl)  # type: ignore[arg-type]
        assert_close(out, naive_attention(q, segments)[0], TOLERANCE[torch.float32], f"{impl} layer {layer}")
        assert torch.equal(out, forest_attention(q, segments, impl=impl))  # type: ignore[arg-type]


def test_the_torch_path_derives_its_groups_once_per_layout() -> None:
    segments = random_tree(7, batch=6, tokens=1, heads_kv=2, dim=8, dtype=torch.float32)
    layout = layout_of(segments, 6, 1)
    q = Maker(1, 2, 8, torch.float32).randn(6, 1, 4, 8)
    for _ in range(2):
        layout_attention(q, layout, [s.k for s in segments], [s.v for s in segments], impl="torch")
    assert len(layout.cache) == 1  # one head shape and device: one set of groups, reused


def test_tensors_that_do_not_fit_the_layout_are_errors() -> None:
    make = Maker(0, heads_kv=2, dim=8, dtype=torch.float32)
    segments = [make.segment(4, [0, 1]), make.segment(3, [1])]
    layout = layout_of(segments, 2, 1)
    keys, values = [s.k for s in segments], [s.v for s in segments]
    with pytest.raises(ConfigError, match="layout has 2 segments but got 1 key"):
        layout_attention(make.randn(2, 1, 4, 8), layout, keys[:1], values[:1])
    with pytest.raises(ConfigError, match="layout says 3 positions"):
        layout_attention(make.randn(2, 1, 4, 8), layout, [keys[0], keys[0]], [values[0], values[0]])
    with pytest.raises(ConfigError, match="built for 2 rows of 1"):
        layout_attention(make.randn(3, 1, 4, 8), layout, keys, values)
    with pytest.raises(ConfigError, match="keys must be a sequence of tensors"):  # was a raw TypeError
        layout_attention(make.randn(2, 1, 4, 8), layout, iter(keys), values)
    with pytest.raises(ConfigError, match="layout must be a ForestLayout"):  # was a raw AttributeError
        layout_attention(make.randn(2, 1, 4, 8), None, keys, values)  # type: ignore[arg-type]


def test_malformed_layouts_are_errors() -> None:
    rows = [torch.tensor([0, 1]), torch.tensor([1])]
    with pytest.raises(ConfigError, match="one row list, length and causal flag per segment"):
        forest_layout(rows, [4], [False, False], batch=2, tokens=1)
    with pytest.raises(ConfigError, match=r"query rows \[0\] attend over no keys"):
        forest_layout(rows, [0, 3], [False, False], batch=2, tokens=1)
    with pytest.raises(ConfigError, match="causal with 1 positions but q has T=2"):
        forest_layout(rows, [4, 1], [False, True], batch=2, tokens=2)
    with pytest.raises(ConfigError, match="1-D int64"):
        forest_layout([torch.tensor([[0]])], [1], [False], batch=1, tokens=1)
    with pytest.raises(ConfigError, match="batch >= 1 and tokens >= 1"):
        forest_layout(rows, [4, 3], [False, False], batch=0, tokens=1)
    with pytest.raises(ConfigError, match=r"int batch >= 1 and tokens >= 1, got 2.0 and 1"):
        forest_layout(rows, [4, 3], [False, False], batch=2.0, tokens=1)  # type: ignore[arg-type]
    for bad in (2.5, "3", True):
        with pytest.raises(ConfigError, match=r"lengths\[1\] must be an int number of key positions"):
            forest_layout(rows, [4, bad], [False, False], batch=2, tokens=1)  # type: ignore[list-item]


def test_a_layout_keeps_its_own_copy_of_the_rows_it_checked() -> None:
    """Changing the caller's row tensor afterwards must not change which keys a checked layout's rows read."""
    make = Maker(0, 2, 8, torch.float32)
    own = torch.tensor([1])
    layout = forest_layout([torch.tensor([0]), own], [3, 3], [False, False], batch=2, tokens=1)
    own[0] = 0
    q, k, v = make.randn(2, 1, 2, 8), make.randn(3, 2, 8), make.randn(3, 2, 8)
    fresh = forest_layout([torch.tensor([0]), torch.tensor([1])], [3, 3], [False, False], batch=2, tokens=1)
    assert torch.equal(layout_attention(q, layout, [k, k], [v, v]), layout_attention(q, fresh, [k, k], [v, v]))


def test_segments_must_be_a_list() -> None:
    make = Maker(0, 2, 8, torch.float32)
    q, k = make.randn(1, 1, 2, 8), make.randn(3, 2, 8)
    segment = Segment(k, k, torch.tensor([0]))
    for bad in (segment, (s for s in [segment])):
        with pytest.raises(ConfigError, match=r"segments must be a list of ttc\.kernels\.Segment"):
            forest_attention(q, bad)  # type: ignore[arg-type]


def test_auto_leaves_heads_wider_than_the_triton_tiles_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, impl='auto' chose Triton for any head, and a head above its tiles' width was a ConfigError."""
    from types import SimpleNamespace

    from ttc.kernels import dispatch
    from ttc.kernels.segments import TRITON_MAX_HEAD_DIM

    monkeypatch.setattr(dispatch, "_triton_installed", lambda: True)
    monkeypatch.setattr(dispatch, "_interpreting", lambda: False)

    def on_gpu(head_dim: int) -> torch.Tensor:
        return SimpleNamespace(device=SimpleNamespace(type="cuda"), shape=(1, 1, 2, head_dim))  # type: ignore[return-value]

    assert dispatch._use_triton(on_gpu(TRITON_MAX_HEAD_DIM), "auto")
    assert not dispatch._use_triton(on_gpu(TRITON_MAX_HEAD_DIM + 64), "auto")
    # Kernels defined under TRITON_INTERPRET=1 (as the tests run them) cannot launch on a GPU's tensors: auto
    # chose them there anyway, and the launch check refused the call.
    monkeypatch.setattr(dispatch, "_interpreting", lambda: True)
    assert not dispatch._use_triton(on_gpu(TRITON_MAX_HEAD_DIM), "auto")
