"""Whether the process holding a run or a running trace lives is told by more than its host name and pid: a pid is
reused, outlives its process as a zombie, and means another process in another PID namespace (a container)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from trace_data import BUDGET, make_problem

import ttc
from ttc.errors import ConfigError
from ttc.storage import TraceStore
from ttc.storage import process as process_module
from ttc.storage.process import Holder

HERE = Path(__file__).parent

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

pytestmark = pytest.mark.skipif(not BOOT_ID.exists(), reason="needs Linux's /proc to tell processes apart")


@dataclass(frozen=True)
class Held:
    run_id: str
    trace_id: str


def _stat(pid: int) -> tuple[str, int]:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 1:].split()
    return fields[0], int(fields[19])


def _identity(*, boot: str | None = None, pidns: int | None = None, start: int) -> str:
    """A full identity on this host, with this machine's boot id and namespace unless given others."""
    boot = BOOT_ID.read_text().strip() if boot is None else boot
    pidns = Path("/proc/self/ns/pid").stat().st_ino if pidns is None else pidns
    return f"{socket.gethostname()}|boot={boot}|pidns={pidns}|start={start}"


def _held_by(db: Path, host: str, pid: int) -> Held:
    """A running run with a running trace, whose lease and owner rows name ``host`` and ``pid``."""
    with TraceStore(str(db)) as store:
        run_id = store.create_run(kind="eval", config={}, claim=True)
        trace_id = store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="b", seed=0,
                                     run_id=run_id)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE run_leases SET host = ?, pid = ? WHERE run_id = ?", (host, pid, run_id))
        raw.execute("UPDATE trace_owners SET host = ?, pid = ? WHERE trace_id = ?", (host, pid, trace_id))
    return Held(run_id, trace_id)


def _left_alone(db: Path, held: Held) -> None:
    """A writer's open leaves the holder's run and trace running."""
    with TraceStore(str(db)) as store:
        assert store.get_run(held.run_id).status == "running"
        assert store.get_trace(held.trace_id).status == "running"


def _orphaned(db: Path, held: Held, pid: int) -> None:
    """A writer's open fails the holder's trace and interrupts its run; a resume claims it."""
    with TraceStore(str(db)) as store:
        trace = store.get_trace(held.trace_id)
        assert (trace.status, trace.error) == ("failed", f"interrupted: process {pid} ended without finishing it")
        assert store.get_run(held.run_id).status == "interrupted"
        store.claim_run(held.run_id)
        assert store.get_run(held.run_id).status == "running"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is no holder of anything: the process a dead holder's pid may be given to."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def test_this_process_writes_its_full_identity(db_path: Path) -> None:
    with TraceStore(str(db_path)) as store:
        run_id = store.create_run(kind="eval", config={}, claim=True)
        store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="b", seed=0, run_id=run_id)
    expected = _identity(start=_stat(os.getpid())[1])
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT host, pid FROM run_leases").fetchall() == [(expected, os.getpid())]
        assert raw.execute("SELECT host, pid FROM trace_owners").fetchall() == [(expected, os.getpid())]


def test_a_live_holder_with_its_start_time_is_alive(db_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    held = _held_by(db_path, _identity(start=_stat(sleeper.pid)[1]), sleeper.pid)
    _left_alone(db_path, held)
    with TraceStore(str(db_path)) as store, \
            pytest.raises(ConfigError, match=f"being evaluated by process {sleeper.pid} on this machine"):
        store.claim_run(held.run_id)


def test_a_holder_whose_pid_now_names_another_process_is_dead(db_path: Path,
                                                              sleeper: subprocess.Popen[bytes]) -> None:
    """The pid reused after a reboot or a container restart: the run read 'running' and refused --resume for
    good, as if the unrelated process were evaluating it."""
    held = _held_by(db_path, _identity(start=_stat(sleeper.pid)[1] - 1), sleeper.pid)
    _orphaned(db_path, held, sleeper.pid)
    assert sleeper.poll() is None  # nothing was done to the process that has the pid now


def test_a_zombie_holder_is_dead(db_path: Path) -> None:
    """Killed and not yet reaped by its parent: its pid is taken, but it evaluates nothing."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        start = _stat(child.pid)[1]
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _stat(child.pid)[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        held = _held_by(db_path, _identity(start=start), child.pid)
        _orphaned(db_path, held, child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_holder_from_before_this_host_booted_is_dead(db_path: Path) -> None:
    """Same host name, another boot: every process of that time has ended, whatever now has its pid (here this
    very process)."""
    pid = os.getpid()
    held = _held_by(db_path, _identity(boot="00000000-0000-0000-0000-000000000000", start=_stat(pid)[1]), pid)
    _orphaned(db_path, held, pid)


def test_a_holder_in_another_pid_namespace_is_left_alone(db_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Its pid numbers are not this namespace's, so nothing here can check it: as a holder on another host, its
    run and trace are left running, and a resume takes the run over."""
    for pid in (sleeper.pid, 2**22 + 7):  # a live process here, and no process here
        held = _held_by(db_path, _identity(pidns=1, start=1), pid)
        assert process_module.holder_state(_identity(pidns=1, start=1), pid) is Holder.ELSEWHERE
        _left_alone(db_path, held)
        with TraceStore(str(db_path)) as store:
            store.claim_run(held.run_id)
            store.fail_trace(held.trace_id, error="test")
            store.finish_run(held.run_id, status="done", summary={})


def test_a_row_of_older_ttc_keeps_the_host_and_pid_rule(db_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A bare host name (older ttc): a live process with the pid is the holder; no process with it, none is."""
    held = _held_by(db_path, socket.gethostname(), sleeper.pid)
    _left_alone(db_path, held)
    with TraceStore(str(db_path)) as store, \
            pytest.raises(ConfigError, match=f"being evaluated by process {sleeper.pid} on this machine"):
        store.claim_run(held.run_id)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    held = _held_by(db_path, socket.gethostname(), gone.pid)
    _orphaned(db_path, held, gone.pid)
    other = _held_by(db_path, "another-host", gone.pid)
    _left_alone(db_path, other)


def _namespaced_holder(db: Path) -> subprocess.Popen[str]:
    """store_worker.py's ``crash`` mode in a PID namespace of its own, under this host name, as in a container
    with the host's network. It runs as a child of the namespace's first process (the ``exit`` after it keeps bash
    from exec'ing it as pid 1), its pid pushed past the low numbers, which here name live processes."""
    package_root = Path(ttc.__path__[0]).parent
    script = ('for i in $(seq 300); do /bin/true; done; '
              f'PYTHONPATH={package_root}:{HERE} {sys.executable} {HERE / "store_worker.py"} {db} crash; exit $?')
    return subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                          check=False).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root, or user namespaces)")
def test_a_live_process_in_another_pid_namespace_keeps_its_run_and_trace(db_path: Path) -> None:
    """A writer opening the store on the host took the namespaced process's pid for one of its own: no such process
    here, so its live trace was failed under it and its run interrupted."""
    holder = _namespaced_holder(db_path)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, holder.stderr.read() if holder.stderr else "the worker printed nothing"
        ids = json.loads(line)
        with TraceStore(str(db_path)) as store:
            assert store.get_trace(ids["trace_id"]).status == "running"
            assert store.get_run(ids["run_id"]).status == "running"
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.communicate()
