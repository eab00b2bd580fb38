"""The ``ttc`` console script and ``python -m ttc``.

Loading the command line takes a good part of a second before ``ttc.cli.main`` can catch Ctrl-C; pressed then, it
ends the command the way it does once the command runs, with ``interrupted`` and exit status 130, not a traceback.
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED = 130


def main() -> None:
    try:
        from ttc.cli import main as cli_main

        cli_main(restore_signals=False)
    except KeyboardInterrupt:
        _exiting()
        sys.stderr.write("interrupted\n")  # as ttc.cli.main says it
        raise SystemExit(INTERRUPTED) from None
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            _exiting()
        raise


def _exiting() -> None:
    """An interrupted command's process exits now, with its work stopped and recorded. A Ctrl-C held down, or a
    second SIGTERM, that lands in the interpreter's shutdown raised KeyboardInterrupt there or ended the process by
    the signal (status -2 or -15) rather than 130: both are ignored (a handler of Python's own would be reset as
    the interpreter shuts down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


__all__ = ["main"]
