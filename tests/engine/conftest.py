"""Tiny real checkpoints (seeded random Llama and Qwen2, character tokenizer) shared by the engine tests, and a
recorder of the forwards an engine runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ttc.engine.engine import Engine
from ttc.engine.synthetic import build_checkpoint


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Weights ten times the default's spread: at 0.02 this tied model greedily repeats one token for ever, and a
    # comparison with transformers' greedy decoding then checks nothing of attention or position.
    return build_checkpoint(tmp_path_factory.mktemp("llama"), family="llama", seed=1, tie_word_embeddings=True,
                            initializer_range=0.2)


@pytest.fixture(scope="session")
def qwen2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("qwen2"), family="qwen2", seed=2, tie_word_embeddings=False)


@pytest.fixture(params=["llama", "qwen2"])
def checkpoint(request: pytest.FixtureRequest, llama_path: Path, qwen2_path: Path) -> Path:
    return llama_path if request.param == "llama" else qwen2_path


def _record_forwards(engine: Engine) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    original = engine.model.hidden_states

    def counted(tokens: torch.Tensor, *args: Any) -> torch.Tensor:
        shapes.append(tuple(tokens.shape))
        return original(tokens, *args)

    engine.model.hidden_states = counted  # type: ignore[method-assign]
    return shapes


@pytest.fixture
def count_forwards() -> Callable[[Engine], list[tuple[int, ...]]]:
    """Records the [B, T] shape of every forward an engine runs from then on, in a list it returns."""
    return _record_forwards
