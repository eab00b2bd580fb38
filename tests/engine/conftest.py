"""Tiny real checkpoints (seeded random Llama and Qwen2, character tokenizer) shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.engine.synthetic import build_checkpoint


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("llama"), family="llama", seed=1, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def qwen2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("qwen2"), family="qwen2", seed=2, tie_word_embeddings=False)


@pytest.fixture(params=["llama", "qwen2"])
def checkpoint(request: pytest.FixtureRequest, llama_path: Path, qwen2_path: Path) -> Path:
    return llama_path if request.param == "llama" else qwen2_path
