"""A signal ends a ``ttc`` command whose trace store stopped answering: its cleanup writes are waited for only so
long, not for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttc.storage import TraceStore

# Every write after the first few never returns, as one does on a database server that stopped answering (the
# driver waits without end on its socket).
FROZEN_STORE = '''
import sys, threading
import ttc.cli
from ttc.storage import writer

submit = writer.Writer.submit
submitted = 0

def freezing(self, work, explain):
    global submitted
    submitted += 1
    if submitted <= 6:
        return submit(self, work, explain)

    def never_answered(connection):
        print("frozen", file=sys.stderr, flush=True)
        threading.Event().wait()

    return submit(self, never_answered, explain)

writer.Writer.submit = freezing
sys.argv = ["ttc", *sys.argv[1:]]
ttc.cli.main()
'''


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM, signal.SIGINT]],
                         ids=["SIGTERM", "SIGTERM twice then SIGINT"])
def test_a_signal_ends_an_eval_whose_store_stopped_answering(tmp_path: Path, signals: list[signal.Signals]) -> None:
    """The open traces' failures waited on the store for good, and neither SIGTERM, a second one nor SIGINT
    ended the command."""
    script = tmp_path / "frozen_store.py"
    script.write_text(FROZEN_STORE, encoding="utf-8")
    db = tmp_path / "frozen.db"
    env = {**os.environ, "TTC_DB_BUSY_TIMEOUT_S": "1", "TTC_SCRIPTED_DELAY_S": "0.05"}
    proc = subprocess.Popen([sys.executable, str(script), "eval", "--backend", "scripted", "--dataset", "synthetic",
                             "--limit", "20", "--concurrency", "2", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None and proc.stderr.readline().strip() == "frozen"
        signalled = time.monotonic()
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.3)
        _, errors = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - signalled < 30
    assert proc.returncode == 130, errors
    last = errors.strip().splitlines()[-1]
    assert last.startswith("interrupted: the trace store did not answer for 5s, so the traces this command left "
                           "open read 'running' until a solve or eval on this machine opens the store"), errors
    assert "Traceback" not in errors
    with TraceStore(str(db)) as store:  # the next open marks what the ended process left open
        [run] = store.list_runs()
        assert run.status == "interrupted"
        traces = store.list_traces(run_id=run.id, limit=None)
        assert traces and not [t for t in traces if t.status == "running"]
