"""HTML pages of the viewer, rendered from the store's records by Jinja2 templates.

Everything a trace holds came from a model or a user (questions, steps, answers, event payloads), so the templates
autoescape every value: a step that writes ``<script>`` shows as text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, select_autoescape

from ttc.storage.export import strict_json_text
from ttc.storage.records import RunSummary, TraceRecord, TraceSummary
from ttc.types import Node

MAX_TREE_ROWS = 2000
"""Nodes shown on a trace page; the JSON endpoint has them all."""

_ENV = Environment(loader=PackageLoader("ttc.viewer", "templates"), autoescape=select_autoescape(default=True),
                   trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True)
class TreeRow:
    """One node of the tree in depth-first order, with its depth (for indentation) and whether it lies on the
    path to the selected node."""

    node: Node
    depth: int
    on_selected_path: bool


def selected_path(nodes: Sequence[Node]) -> set[int]:
    """Ids of the nodes from a root down to each selected node: the path to the chosen answer. A chain that reaches
    no root (a parent missing from the trace, or a loop) is left out: no walk from the roots would show it."""
    by_id = {node.id: node for node in nodes}
    on_path: set[int] = set()
    for node in nodes:
        if node.status != "selected":
            continue
        chain: set[int] = set()
        walk = node
        while True:
            chain.add(walk.id)
            if walk.parent is None or walk.parent in on_path:
                on_path |= chain
                break
            parent = by_id.get(walk.parent)
            if parent is None or parent.id in chain:
                break
            walk = parent
    return on_path


def tree_rows(nodes: Sequence[Node], limit: int = MAX_TREE_ROWS) -> list[TreeRow]:
    """The tree flattened depth-first (children in id order), iteratively, so a deep chain renders as well as
    a wide tree.

    At most ``limit`` rows, and room among them is kept for the path to the selected node(s): a plain cut in walk
    order dropped the chosen answer of a large tree (a best-of-3000 whose last sample won, a search of thousands of
    nodes) and most of the path to it. The nodes left out are off that path, and the rows keep their id order
    among siblings.
    """
    children: dict[int | None, list[Node]] = defaultdict(list)
    for node in nodes:
        children[node.parent].append(node)
    on_path = selected_path(nodes)
    unshown_path = len(on_path)
    rows: list[TreeRow] = []
    stack = [(node, 0) for node in reversed(children[None])]
    while stack and len(rows) < limit:
        node, depth = stack.pop()
        if node.id in on_path:
            unshown_path -= 1
        elif len(rows) + unshown_path >= limit:
            continue  # the rows left are the path's; below an off-path node no node is on it
        rows.append(TreeRow(node=node, depth=depth, on_selected_path=node.id in on_path))
        stack.extend((child, depth + 1) for child in reversed(children[node.id]))
    return rows


def index_page(runs: Sequence[RunSummary], traces: Sequence[TraceSummary], *, run: str | None,
               status: str | None, limit: int, store: str) -> str:
    return _ENV.get_template("index.html").render(runs=runs, traces=traces, run=run, status=status, limit=limit,
                                                  store=store)


def trace_page(record: TraceRecord, *, store: str) -> str:
    rows = tree_rows(record.nodes)
    events = [(event, strict_json_text(dict(event.payload), "event", sort_keys=True)) for event in record.events]
    return _ENV.get_template("trace.html").render(record=record, rows=rows, hidden=len(record.nodes) - len(rows),
                                                  events=events, store=store)


def error_page(status: int, message: str) -> str:
    return _ENV.get_template("error.html").render(status=status, message=message)


__all__ = ["MAX_TREE_ROWS", "TreeRow", "error_page", "index_page", "selected_path", "trace_page", "tree_rows"]
