"""The in-memory record a strategy keeps while it runs; the API hands it to the trace store at the end.

Keeping the tree in memory and writing it in one transaction is what makes a trace either complete and marked
done, or marked failed: a crash can never leave a half-written tree that reads as finished.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ttc.errors import ConfigError
from ttc.types import Node, NodeStatus, TraceEvent


class TraceRecorder:
    """Collects nodes and events; node ids are assigned in creation order, starting at 0."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._nodes: list[Node] = []
        self._events: list[TraceEvent] = []

    def add_node(
        self,
        *,
        parent: int | None,
        text: str,
        token_count: int,
        status: NodeStatus = "active",
        logprob: float | None = None,
        answer: str | None = None,
    ) -> int:
        depth = 0 if parent is None else self._nodes[parent].depth + 1
        node = Node(id=len(self._nodes), parent=parent, depth=depth, text=text, token_count=token_count,
                    status=status, logprob=logprob, answer=answer)
        self._nodes.append(node)
        return node.id

    def update(self, node_id: int, **changes: Any) -> None:
        """Change fields of a node (status, scores, reason); unknown fields raise TypeError."""
        self._nodes[node_id] = replace(self._nodes[node_id], **changes)

    def node(self, node_id: int) -> Node:
        return self._nodes[node_id]

    def event(self, kind: str, payload: Mapping[str, object], *, node_id: int | None = None) -> None:
        _check_keys(kind, payload)
        self._events.append(TraceEvent(kind=kind, payload=dict(payload), t=round(time.monotonic() - self._t0, 6),
                                       node_id=node_id))

    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def events(self) -> list[TraceEvent]:
        return list(self._events)


def _check_keys(kind: str, payload: Mapping[str, object]) -> None:
    """Refuse a payload key that is not a string, at any depth: the store's JSON turns ``1`` into ``"1"``, so
    ``{1: 0.9, "1": 0.1}`` would read back as ``{"1": 0.1}``, and the trace would hold other data than was recorded.
    """
    stack: list[object] = [payload]
    while stack:  # iterative: a deep payload must not raise RecursionError here
        value = stack.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"the {kind!r} event's payload has the key {key!r} ({type(key).__name__}): "
                                      "trace payloads are JSON, whose keys are strings; use str(key)")
                stack.append(item)
        elif isinstance(value, list | tuple):
            stack.extend(value)


__all__ = ["TraceRecorder"]
