"""The ``ttc`` console script and ``python -m ttc``.

Loading the command line takes a good part of a second before ``ttc.cli.main`` can catch Ctrl-C; pressed then, it
ends the command the way it does once the command runs, with ``interrupted`` and exit status 130, not a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from ttc.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")  # as ttc.cli.main says it
        raise SystemExit(130) from None


__all__ = ["main"]
