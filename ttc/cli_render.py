"""Terminal rendering of a recorded trace: header, usage, decisions, and the node tree."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from ttc.storage.records import TraceRecord
from ttc.types import Node

STATUS_STYLE = {"selected": "bold green", "finished": "cyan", "pruned": "dim red", "active": "yellow"}
MAX_RENDERED_NODES = 500


def node_label(node: Node) -> str:
    style = STATUS_STYLE.get(node.status, "white")
    parts = [f"[{style}]#{node.id} {node.status}[/{style}]", f"tok={node.token_count}"]
    if node.score is not None:
        parts.append(f"score={node.score:.3f}")
    if node.answer is not None:
        parts.append(f"answer={escape(node.answer)}")
    if node.reason:
        parts.append(f"({escape(node.reason)})")
    text = " ⏎ ".join(line.strip() for line in node.text.strip().splitlines() if line.strip())
    if len(text) > 100:
        text = text[:99] + "…"
    return " ".join(parts) + f"  [dim]{escape(text)}[/dim]"


def build_tree(record: TraceRecord) -> Tree:
    children: dict[int | None, list[Node]] = defaultdict(list)
    for node in record.nodes:
        children[node.parent].append(node)
    tree = Tree(f"[bold]trace {record.id}[/bold]")
    shown = 0
    stack: list[tuple[Tree, Node]] = [(tree, n) for n in reversed(children[None])]
    while stack and shown < MAX_RENDERED_NODES:
        branch, node = stack.pop()
        sub = branch.add(node_label(node))
        shown += 1
        stack.extend((sub, child) for child in reversed(children[node.id]))
    if len(record.nodes) > shown:
        tree.add(f"[dim]… {len(record.nodes) - shown} more nodes (ttc traces export for all)[/dim]")
    return tree


def render_trace(console: Console, record: TraceRecord) -> None:
    problem = record.problem
    console.print(f"[bold]question:[/bold] {escape(problem.question.strip())}")
    if problem.gold is not None:
        console.print(f"[bold]gold:[/bold] {escape(problem.gold)}")
    console.print(f"[bold]status:[/bold] {record.status}   [bold]strategy:[/bold] {record.strategy}   "
                  f"[bold]backend:[/bold] {escape(record.backend)}   [bold]seed:[/bold] {record.seed}")
    if record.error:
        console.print(f"[red]error:[/red] {escape(record.error)}")
    console.print(f"[bold]answer:[/bold] {escape(str(record.answer))}   score={record.score}")
    u = record.usage
    console.print(f"[bold]usage:[/bold] generated={u.generated_tokens} prompt={u.prompt_tokens} "
                  f"cached={u.cached_prompt_tokens} verifier={u.verifier_tokens} calls={u.backend_calls} "
                  f"peak_kv={u.peak_kv_tokens} wall={u.wall_s:.3f}s")
    for event in record.events:
        console.print(f"[magenta]{event.t:8.3f}s {escape(event.kind)}[/magenta] {escape(str(dict(event.payload)))}")
    console.print(build_tree(record))


__all__ = ["build_tree", "node_label", "render_trace"]
