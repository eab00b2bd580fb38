"""Shared fixtures. Every test gets its own SQLite trace store, so nothing writes to the user's data directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    db = tmp_path / "traces.db"
    monkeypatch.setenv("TTC_DB", str(db))
    monkeypatch.delenv("TTC_VLLM_URL", raising=False)
    monkeypatch.delenv("TTC_MODEL", raising=False)
    monkeypatch.delenv("TTC_DRAFT_URL", raising=False)
    monkeypatch.delenv("TTC_DRAFT_MODEL", raising=False)
    monkeypatch.delenv("TTC_SYNTHESIZER_URL", raising=False)
    monkeypatch.delenv("TTC_SYNTHESIZER_MODEL", raising=False)
    if DATASETS.is_dir() and "TTC_DATA_DIR" not in os.environ:
        monkeypatch.setenv("TTC_DATA_DIR", str(DATASETS))
    yield db


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
