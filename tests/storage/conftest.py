"""Fixtures of the storage tests: a real SQLite file per test, and a way to run a second process on it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ttc
from ttc.storage import TraceStore

HERE = Path(__file__).parent
WORKER = HERE / "store_worker.py"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "traces.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[TraceStore]:
    with TraceStore(str(db_path), busy_timeout_s=2.0) as opened:
        yield opened


Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def spawn_worker() -> Iterator[Spawn]:
    """Start store_worker.py as another process on this checkout's ttc; kills whatever is left at the end."""
    started: list[subprocess.Popen[str]] = []
    package_root = Path(ttc.__path__[0]).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), str(HERE)])}

    def spawn(db: Path, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([sys.executable, str(WORKER), str(db), *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()
