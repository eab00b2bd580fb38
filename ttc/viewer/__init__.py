"""A local web viewer for the trace store: runs, traces, and each trace's tree, scores and decisions.

``ttc view`` serves it on 127.0.0.1. It only reads the store, so it can watch an evaluation that is still writing.
"""

from ttc.viewer.server import make_server, serve

__all__ = ["make_server", "serve"]
