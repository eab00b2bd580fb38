"""Terminal rendering of a recorded trace: header, usage, decisions, and the node tree.

Stored text (questions, answers, node text, strategy and event names) is printed as rich ``Text``, never as
markup: markup would read ``[/]`` as a tag, ``a:b:c`` as an emoji code and double a trailing backslash. It is
also passed through :func:`shown` first, since it is model output or user input: an escape sequence in it would
otherwise reach the terminal (clear the screen, hide what follows, make a link).
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from ttc.storage.records import TraceRecord
from ttc.types import Node
from ttc.viewer.pages import tree_rows

STATUS_STYLE = {"selected": "bold green", "finished": "cyan", "pruned": "dim red", "active": "yellow"}
MAX_RENDERED_NODES = 500


_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown(text: object) -> str:
    """``text`` safe for a terminal: control characters (ESC, NUL, DEL, C1) and bidirectional overrides become
    visible escapes such as ``\\x1b``; newlines and tabs stay."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(ch if ch in "\n\t" or (ch.isprintable() and ch not in _BIDI_CONTROLS) else ascii(ch)[1:-1]
                   for ch in value)


MISSING = "-"
"""How a value that is not there (no answer, no token count, no score) is printed: never as the text ``None``,
which is also an answer a model can give."""


def shown_or_missing(value: object) -> Text:
    """``value`` as terminal-safe text (see ``shown``), or a dim ``MISSING`` where it is None; a real answer
    "None" still prints as None."""
    return Text(MISSING, style="dim") if value is None else Text(shown(value))


def node_label(node: Node) -> Text:
    style = STATUS_STYLE.get(node.status, "white")
    label = Text.assemble((f"#{node.id} {node.status}", style), f" tok={node.token_count}")
    if node.score is not None:
        label.append(f" score={node.score:.3f}")
    if node.answer is not None:
        label.append(f" answer={shown(node.answer)}")
    if node.reason:
        label.append(f" ({shown(node.reason)})")
    text = " ⏎ ".join(shown(line.strip()) for line in node.text.strip().splitlines() if line.strip())
    if len(text) > 100:
        text = text[:99] + "…"
    label.append("  ")
    label.append(text, style="dim")
    return label


def build_tree(record: TraceRecord, max_depth: int | None = None) -> Tree:
    """The trace's nodes as a tree, drawn at most ``max_depth`` levels deep: a tree indents each level, and a
    terminal draws nothing past its width, so deeper nodes (a search's 24 steps on 80 columns; the selected answer
    among them) are drawn at the deepest level, after their parent, labelled with their depth. Past
    ``MAX_RENDERED_NODES`` the nodes off the path to the selected answer are left out, as on the viewer's page."""
    tree = Tree(Text(f"trace {record.id}", style="bold"))
    rows = tree_rows(record.nodes, MAX_RENDERED_NODES)
    below: dict[int, Tree] = {}  # where each drawn node's children go; a drawn node's parent is drawn before it
    for row in rows:
        node, level = row.node, row.depth + 1
        branch = tree if node.parent is None else below[node.parent]
        flat = max_depth is not None and level > max_depth
        label = Text.assemble((f"d={node.depth} ", "dim"), node_label(node)) if flat else node_label(node)
        sub = branch.add(label)
        below[node.id] = branch if max_depth is not None and level >= max_depth else sub
    if len(record.nodes) > len(rows):
        tree.add(f"[dim]… {len(record.nodes) - len(rows)} more nodes (ttc traces export for all)[/dim]")
    return tree


def render_trace(console: Console, record: TraceRecord) -> None:
    problem = record.problem
    if problem.context is not None:
        console.print(Text.assemble(("context:", "bold"), " ", shown(problem.context.strip())))
    console.print(Text.assemble(("question:", "bold"), " ", shown(problem.question.strip())))
    if problem.gold is not None:
        console.print(Text.assemble(("gold:", "bold"), " ", shown(problem.gold)))
    console.print(Text.assemble(("status:", "bold"), f" {record.status}   ", ("strategy:", "bold"),
                                f" {shown(record.strategy)}   ", ("backend:", "bold"), f" {shown(record.backend)}   ",
                                ("seed:", "bold"), " ", shown_or_missing(record.seed)))
    if record.error:
        console.print(Text.assemble(("error:", "red"), " ", shown(record.error)))
    console.print(Text.assemble(("answer:", "bold"), " ", shown_or_missing(record.answer), "   score=",
                                shown_or_missing(record.score)))
    u = record.usage
    if u is None:
        console.print("[bold]usage:[/bold] not recorded (the trace did not finish)")
    else:
        console.print(f"[bold]usage:[/bold] generated={u.generated_tokens} prompt={u.prompt_tokens} "
                      f"cached={u.cached_prompt_tokens} verifier={u.verifier_tokens} calls={u.backend_calls} "
                      f"peak_kv={u.peak_kv_tokens} wall={u.wall_s:.3f}s")
    for event in record.events:
        console.print(Text.assemble((f"{event.t:8.3f}s {shown(event.kind)}", "magenta"), " ",
                                    str(dict(event.payload))))
    # Each level indents 4 columns; a label keeps at least 40 of the width.
    console.print(build_tree(record, max_depth=max(1, (console.width - 40) // 4)))


__all__ = ["MISSING", "build_tree", "node_label", "render_trace", "shown", "shown_or_missing"]
