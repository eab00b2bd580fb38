"""`scripts/vllm_server.sh stop PIDFILE` signals the process group a pidfile names.

A pidfile outlives its server: by the time it is read, its PID may belong to any other process, and a 0 in it
would make the group signal reach the caller's own group. Only a process running vLLM's API entrypoint, as
`start` launches it, may be stopped. These tests stand a sleeping Python process named like the entrypoint in
for a server, so no vLLM runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vllm_server.sh"
ENTRYPOINT = ("-m", "vllm.entrypoints.openai.api_server")
SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads process states from /proc")


def alive(pid: int) -> bool:
    """A killed process nobody reaps stays a zombie, which `os.kill(pid, 0)` still finds."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def gone_within(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def stop(pidfile: Path) -> subprocess.CompletedProcess[str]:
    # A session of its own: a stop that signals its caller's group takes only itself down, never pytest.
    return subprocess.run(["bash", str(SCRIPT), "stop", str(pidfile)], capture_output=True, text=True,
                          timeout=60, start_new_session=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stop_ends_the_server_its_pidfile_names(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    server = subprocess.Popen([*SLEEPER, *ENTRYPOINT, "--port", "1"], start_new_session=True)
    processes.append(server)
    pidfile = tmp_path / "vllm.pid"
    pidfile.write_text(f"{server.pid}\n")
    result = stop(pidfile)
    assert result.returncode == 0, result.stderr
    assert f"stopped vLLM (PID {server.pid})" in result.stdout
    assert server.wait(timeout=10) != 0
    assert not pidfile.exists()


def test_stop_reaps_the_servers_engine_when_the_api_process_exited_first(tmp_path: Path) -> None:
    launcher = ("import subprocess, sys; "
                "print(subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    leader = subprocess.run([sys.executable, "-c", launcher, *SLEEPER, *ENTRYPOINT], capture_output=True, text=True,
                            check=True, start_new_session=True)
    engine = int(leader.stdout)
    try:
        assert alive(engine)
        pidfile = tmp_path / "vllm.pid"
        pidfile.write_text(f"{os.getpgid(engine)}\n")
        result = stop(pidfile)
        assert result.returncode == 0, result.stderr
        assert gone_within(engine)
    finally:
        if alive(engine):
            os.kill(engine, 9)


def test_a_stale_pidfile_naming_another_process_stops_nothing(tmp_path: Path,
                                                               processes: list[subprocess.Popen[bytes]]) -> None:
    unrelated = subprocess.Popen(["sleep", "120"], start_new_session=True)
    processes.append(unrelated)
    pidfile = tmp_path / "vllm.pid"
    pidfile.write_text(f"{unrelated.pid}\n")
    result = stop(pidfile)
    assert result.returncode == 0, result.stderr
    assert "stale pidfile" in result.stdout
    time.sleep(0.3)
    assert unrelated.poll() is None, "stop killed a process that is no vLLM server"
    assert not pidfile.exists()


@pytest.mark.parametrize("content", ["0", "", "12ab"])
def test_a_pidfile_without_a_positive_pid_signals_nobody(tmp_path: Path, content: str) -> None:
    pidfile = tmp_path / "vllm.pid"
    pidfile.write_text(content + "\n")
    result = stop(pidfile)
    assert result.returncode == 0, f"stop ended with {result.returncode}: {result.stdout}{result.stderr}"
    assert "stale pidfile" in result.stdout
    assert not pidfile.exists()
