"""Who holds a run's lease or a running trace (``RunLeaseRow``, ``TraceOwnerRow``), said so that a later process
can tell whether the holder still lives.

A host name and a pid do not say it. Containers sharing one store file may share the host name but not the pid
numbers (each has its own PID namespace), so a live holder in one would read as dead in another and its traces be
failed under it; and a pid outlives its process (reused after a reboot or a container restart, or a zombie not yet
reaped), so a dead holder would read as alive for good and its run could never be resumed. The ``host`` column
therefore holds ``{hostname}|boot={boot id}|pidns={PID namespace}|start={start time}``: the kernel's boot id tells
a reboot apart, the namespace tells which pid numbers the row's pid is one of, and the start time (in clock ticks
since boot) tells the holder from a later process given its pid. Rows of older ttc hold the bare host name and
keep its rule (same host name and a process with that pid: alive); so does every row where ``/proc`` does not
tell these apart (not Linux), as this process cannot say its own identity there.
"""

from __future__ import annotations

import enum
import functools
import os
import socket
from dataclasses import dataclass

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_OWN_PID_NAMESPACE = "/proc/self/ns/pid"
_OWN_STAT = "/proc/self/stat"
_ENDED = frozenset("ZX")
"""States of /proc/PID/stat of a process that has ended (zombie, dead): its pid is still taken, but nothing runs."""


class Holder(enum.Enum):
    """What a lease's or a trace owner's process is, seen from this one."""

    ALIVE = "alive"
    """On this machine, and still running."""
    DEAD = "dead"
    """It was on this machine and has ended: its runs and traces are orphans."""
    ELSEWHERE = "elsewhere"
    """On another machine (another host, or another PID namespace on this one): it cannot be checked from here."""


@dataclass(frozen=True)
class _Identity:
    hostname: str
    boot: str
    pidns: int
    start: int


def holder_text() -> str:
    """What this process writes in a lease's or a trace owner's ``host`` column (see the module docstring)."""
    hostname = socket.gethostname()
    machine = _machine(os.getpid())
    start = _own_start()
    if machine is None or start is None:
        return hostname
    boot, pidns = machine
    return f"{hostname}|boot={boot}|pidns={pidns}|start={start}"


def _hostname_of(host: str) -> str:
    """The host name in a ``host`` column, of either form: rows of this host are the ones worth checking."""
    return host.split("|", 1)[0]


def holder_state(host: str, pid: int) -> Holder:
    """Whether the process a row names (its ``host`` column and pid) still runs, has ended, or is out of sight."""
    if _hostname_of(host) != socket.gethostname():
        return Holder.ELSEWHERE
    recorded = _parse(host)
    machine = _machine(os.getpid())
    if recorded is None or machine is None:  # a row of older ttc, or no /proc here to compare with
        return Holder.ALIVE if _signalable(pid) else Holder.DEAD
    boot, pidns = machine
    if recorded.boot != boot:  # this host has booted since: every process of the row's time has ended
        return Holder.DEAD
    if recorded.pidns != pidns:  # another container's pid numbers: this pid may name anything here
        return Holder.ELSEWHERE
    return Holder.ALIVE if _runs(pid, recorded.start) else Holder.DEAD


def _parse(host: str) -> _Identity | None:
    """The parts of a full identity; None for a bare host name (older ttc, or a process that could not say more)."""
    parts = host.rsplit("|", 3)
    if len(parts) != 4:
        return None
    hostname, boot, pidns, start = parts
    if not (boot.startswith("boot=") and pidns.startswith("pidns=") and start.startswith("start=")):
        return None
    try:
        return _Identity(hostname, boot[5:], int(pidns[6:]), int(start[6:]))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4)
def _machine(pid: int) -> tuple[str, int] | None:
    """This process's boot id and PID namespace; None where /proc does not give them, or is another namespace's
    (mounted for other pid numbers than this process's: then its entries name other processes). Cached by pid, as
    a forked child may be in another namespace than its parent."""
    try:
        with open(_BOOT_ID, encoding="ascii") as file:
            boot = file.read().strip()
        pidns = os.stat(_OWN_PID_NAMESPACE).st_ino
        with open(_OWN_STAT, encoding="utf-8", errors="replace") as file:
            seen_as = int(file.read().split(" ", 1)[0])
    except (OSError, ValueError):
        return None
    if not boot or "|" in boot or seen_as != pid:
        return None
    return boot, pidns


def _own_start() -> int | None:
    read = _stat(_OWN_STAT)
    return None if read is None else read[1]


def _stat(path: str) -> tuple[str, int] | None:
    """A process's state letter and start time (field 22, clock ticks after boot) from its /proc stat file; the
    fields are counted after the last ')', as the command name before it may hold spaces and parentheses."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 1:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _runs(pid: int, start: int) -> bool:
    """Whether ``pid`` in this namespace is still the process that started at ``start``. A /proc that hides
    other users' processes (``hidepid``) gives no stat file for them: the old rule decides there."""
    read = _stat(f"/proc/{pid}/stat")
    if read is None:
        return _signalable(pid)
    state, started = read
    return state not in _ENDED and started == start


def _signalable(pid: int) -> bool:
    """The rule of rows that say no more than a pid: some process has it."""
    if pid <= 0:  # kill() with 0 or a negative pid signals process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OSError, OverflowError):  # a pid no process can have
        return False
    return True


__all__ = ["Holder", "holder_state", "holder_text"]
