"""Ctrl-C at any moment of a ``ttc`` command ends it with ``interrupted`` and exit status 130, through the real
console script and ``python -m ttc``: also while the command line is still being loaded, before
``ttc.cli.main`` runs to catch it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

# Imported at start-up (sitecustomize): Ctrl-C arrives exactly when the module the test names starts loading.
INTERRUPTER = '''
import importlib.abc, os, signal, sys

class Interrupter(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == os.environ.get("TTC_TEST_INTERRUPT_AT"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupter())
'''

SCRIPT = Path(sysconfig.get_path("scripts")) / "ttc"


def _as_a_terminal_starts_it() -> None:
    """Ctrl-C as a shell delivers it: a signal a test process ignores or blocks (its own code, or a library's, may
    have left it so) is ignored or blocked in every child it starts, and the command would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def commands() -> list[list[str]]:
    return [[str(SCRIPT)], [sys.executable, "-m", "ttc"]]


@pytest.mark.parametrize("command", commands(), ids=["console script", "python -m ttc"])
@pytest.mark.parametrize("module", ["ttc.api", "ttc.cli", "ttc.viewer"],
                         ids=["while loading the service", "while loading", "while running"])
def test_ctrl_c_says_interrupted_and_exits_130(tmp_path: Path, command: list[str], module: str) -> None:
    """Pressed while ttc.cli was being imported, Ctrl-C printed a KeyboardInterrupt traceback and the process died
    of SIGINT, and so it did while ``import ttc`` loaded the whole service (ttc.api), before the console script's
    own code ran at all; once the command runs (``ttc view`` loads the viewer) it was already caught."""
    if not Path(command[0]).exists():
        pytest.skip(f"no console script at {command[0]}")
    (tmp_path / "sitecustomize.py").write_text(INTERRUPTER, encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TTC_TEST_INTERRUPT_AT": module, "TTC_DB": str(tmp_path / "t.db")}
    proc = subprocess.run([*command, "view", "--port", "0"], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=_as_a_terminal_starts_it)
    assert (proc.returncode, proc.stderr.strip().splitlines()[-1:]) == (130, ["interrupted"]), proc.stderr
    assert "Traceback" not in proc.stderr
