"""A trace tree wider than a renderer's row cap, whose selected leaf has the highest id: walked in id order, the
cap falls before the chosen answer unless room is kept for the path to it."""

from __future__ import annotations

from ttc.types import Node


def selected_past(last: int) -> list[Node]:
    """A root, ``last - 1`` finished samples under it, and the selected answer ``last`` under the last sample."""
    nodes = [Node(id=0, parent=None, depth=0, text="q", token_count=0)]
    nodes += [Node(id=i, parent=0, depth=1, text=f"sample {i}", token_count=1, status="finished")
              for i in range(1, last)]
    nodes.append(Node(id=last, parent=last - 1, depth=2, text="the answer", token_count=1, status="selected",
                      answer="42"))
    return nodes
