"""Fixtures of the storage tests: a real SQLite file per test, and a way to run a second process on it."""

from __future__ import annotations

import os
import shutil
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


DROPPED_CAPABILITIES = "-dac_override,-dac_read_search,-fowner"
"""The capabilities by which root ignores file permissions."""
UNPRIVILEGED = "TTC_TEST_UNPRIVILEGED"


@pytest.fixture
def permissions_bind(request: pytest.FixtureRequest) -> bool:
    """For a test of what file permissions refuse, which root ignores (CI runs as root). As root, the test runs
    again in a child pytest without the capabilities that bypass them (``setpriv``), whose pass is asserted here,
    and this is False: the test then returns at once. Elsewhere (or in that child) True: the test runs."""
    if os.geteuid() != 0 or os.environ.get(UNPRIVILEGED):
        return True
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("file permissions do not bind root, and there is no setpriv to drop the capabilities they need")
    child = subprocess.run(
        [setpriv, "--bounding-set", DROPPED_CAPABILITIES, sys.executable, "-m", "pytest", "-q", "-p",
         "no:cacheprovider", request.node.nodeid],
        cwd=request.config.rootpath, env={**os.environ, UNPRIVILEGED: "1"}, capture_output=True, text=True,
        timeout=300, check=False)
    assert child.returncode == 0 and "1 passed" in child.stdout, child.stdout[-3000:] + child.stderr[-2000:]
    return False
