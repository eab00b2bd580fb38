"""What the trace store refuses before a write, and why: values it would take but no reader could give back.

Every check raises a ConfigError (or NotFound for an id no row can have) that names the value and says what to pass
instead, so a bad trace fails its own write and leaves the database readable for every other trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from ttc.errors import ConfigError, NotFound
from ttc.storage.models import NODE_STATUSES
from ttc.types import Node, Result, TraceEvent, check_unicode, is_int, is_number, real_float

MAX_NESTING: Final = 200
"""How many levels a stored JSON value (a problem's meta, an event's payload, a run's config or summary) may nest.
Every reader walks such a value recursively (the JSON decoder, the export, the viewer), a stack frame or more per
level, and Python stops at 1000 frames: a payload some 980 levels deep was stored and then broke every read of its
trace. 200 leaves the readers' own stacks ample room."""


def check_no_nan(result: Result, nodes: Sequence[Node]) -> None:
    """SQLite stores a NaN REAL as NULL, which reads back as "not scored": a done trace would say something else
    than what was recorded. Refused here, so the trace is failed with this message instead (a failed trace keeps
    its nodes, a NaN among them as NULL)."""
    if result.score is not None and is_real(result.score) and math.isnan(result.score):
        raise ConfigError("the result's score is NaN, which the store cannot keep: a score must be a number")
    for node in nodes:
        for name, value in (("score", node.score), ("logprob", node.logprob)):  # SQLite's JSON keeps a NaN step
            if value is not None and is_real(value) and math.isnan(value):
                raise ConfigError(f"node {node.id}'s {name} is NaN, which the store cannot keep: a score or "
                                  "log-probability must be a number (infinities are kept)")


def check_readable(nodes: Sequence[Node], events: Sequence[TraceEvent]) -> None:
    """Refuse what the store would take but no reader could give back, for a done trace and a failed one alike:
    one such value made every read of its trace (the viewer's page, ``ttc traces show``) fail."""
    for node in nodes:
        check_node_fields(node)
        check_node_numbers(node)
    for seq, event in enumerate(events):
        check_event_fields(seq, event)
        check_nesting(event.payload, f"the payload of event {seq} ({event.kind!r})")


def check_result_score(result: Result) -> None:
    if result.score is not None and not is_real(result.score):
        raise ConfigError(f"the result's score is {result.score!r:.60}, which the store cannot keep: a score must be "
                          "a number (a float or an int) or None")


MAX_NODE_ID: Final = 2**31 - 1
"""The largest node id, parent or depth: PostgreSQL's columns hold 32 bits where SQLite's hold 64, so a larger one
was kept by one database and refused by the other."""

MAX_TOKEN_COUNT: Final = 2**63 - 1
"""A node's token count is a signed 64-bit column in both databases."""


def check_node_fields(node: Node) -> None:
    """The node's ids, depth, count and texts as its type declares them, checked alike for every database: a float
    id (1.5), a depth of 2**40 or a negative token count was kept by SQLite and read back as a tree no strategy
    built, a text given as a number came back as a string, and PostgreSQL refused ids past 32 bits outright."""
    for name, value in (("id", node.id), ("parent", node.parent), ("depth", node.depth)):
        if (value is not None or name != "parent") and not (is_int(value) and 0 <= value <= MAX_NODE_ID):
            raise ConfigError(f"node {node.id!r:.40}'s {name} is {value!r:.60}, which the store cannot keep: it must "
                              f"be an int from 0 to {MAX_NODE_ID}" + (" or None (a root)" if name == "parent" else ""))
    if not (is_int(node.token_count) and 0 <= node.token_count <= MAX_TOKEN_COUNT):
        raise ConfigError(f"node {node.id}'s token_count is {node.token_count!r:.60}, which the store cannot keep: it "
                          "must be an int from 0 (the tokens its step generated)")
    for name, text in (("text", node.text), ("answer", node.answer), ("reason", node.reason)):
        if (text is not None or name == "text") and not isinstance(text, str):
            raise ConfigError(f"node {node.id}'s {name} is {text!r:.60} ({type(text).__name__}), which the store "
                              "cannot keep: pass a string" + ("" if name == "text" else " or None"))
    if node.status not in NODE_STATUSES:
        raise ConfigError(f"node {node.id}'s status is {node.status!r:.60}; it must be one of "
                          f"{', '.join(NODE_STATUSES)}")


def check_event_fields(seq: int, event: TraceEvent) -> None:
    """The event's kind, time, node and payload as its type declares them, checked alike for every database: SQLite
    kept a node id of 2**40 and a kind given as a number (PostgreSQL refused both), PostgreSQL kept a NaN time
    (SQLite refused it as a broken constraint), and a payload that is no mapping failed with a raw TypeError."""
    if not isinstance(event.kind, str) or not event.kind:
        raise ConfigError(f"event {seq}'s kind is {event.kind!r:.60}, which the store cannot keep: pass a non-empty "
                          "string such as 'select'")
    if not is_real(event.t) or not math.isfinite(event.t):
        raise ConfigError(f"event {seq} ({event.kind!r})'s t is {event.t!r:.60}, which the store cannot keep: it must "
                          "be a finite number of seconds since the trace started")
    if event.node_id is not None and not (is_int(event.node_id) and 0 <= event.node_id <= MAX_NODE_ID):
        raise ConfigError(f"event {seq} ({event.kind!r})'s node_id is {event.node_id!r:.60}, which the store cannot "
                          f"keep: it must be a node's id (an int from 0 to {MAX_NODE_ID}) or None")
    if not isinstance(event.payload, Mapping):
        raise ConfigError(f"event {seq} ({event.kind!r})'s payload is a {type(event.payload).__name__}, which the "
                          "store cannot keep: pass a mapping of JSON values (a dict)")


def check_node_numbers(node: Node) -> None:
    """The node's numbers as its type declares them: readers rebuild each step score with ``float()``, so a None
    among them (a step a verifier did not score) was stored and then failed every read as a damaged database."""
    for name, value in (("score", node.score), ("logprob", node.logprob)):
        if value is not None and not is_real(value):
            raise ConfigError(f"node {node.id}'s {name} is {value!r:.60}, which the store cannot keep: it must be a "
                              "number (a float or an int) or None")
    if not isinstance(node.step_scores, tuple | list):
        raise ConfigError(f"node {node.id}'s step_scores is a {type(node.step_scores).__name__}, which the store "
                          "cannot keep: pass a tuple of numbers, one per step")
    for index, value in enumerate(node.step_scores):
        if not is_real(value):
            raise ConfigError(f"node {node.id}'s step_scores[{index}] is {value!r:.60}, which the store cannot read "
                              "back: each step score must be a number (a float or an int); record a step that was "
                              "not scored as math.nan")


def is_real(value: object) -> bool:
    """A number ``float()`` takes: not a bool, a string or None, nor an int past float range (it is stored, and
    then fails the reader's ``float()``). NaN and infinities are floats; the callers decide about them."""
    return is_number(value) and real_float(value) is not None


def check_nesting(value: object, what: str) -> None:
    """Refuse ``value`` if it nests deeper than ``MAX_NESTING`` levels (the value itself is level 1). Measured
    iteratively, so a value of any depth (or one that contains itself) is refused rather than overflowing here."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Iterable[object]
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if level > MAX_NESTING:
            raise ConfigError(f"{what} is nested more than {MAX_NESTING} levels deep, which the store could not read "
                              "back: flatten it, or store its deep part as a JSON string")
        stack.extend((child, level + 1) for child in children)


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_id(value: object, what: str) -> None:
    """An id as given (typed, pasted): text every database can take. A byte that is no character (a stray \\xff
    from a terminal) failed in the query and read as a damaged database; a NUL, which no id holds, is named as
    such rather than searched for."""
    if not isinstance(value, str):
        raise ConfigError(f"a {what} id is a string, got {type(value).__name__}")
    check_unicode(value, f"the {what} id {value!r}")
    if "\x00" in value:
        raise NotFound(f"no {what} has the id {value!r}: ids never contain a NUL character; copy the id as "
                       "`ttc traces list` or `ttc traces runs` shows it")


MAX_LIMIT = (1 << 63) - 1
"""The largest row limit: SQLite's LIMIT is a signed 64-bit integer."""


def check_limit(limit: int | None, *, unlimited: bool = False) -> None:
    """A positive int; ``None`` (no limit) too where ``unlimited``."""
    if unlimited and limit is None:
        return
    if not is_int(limit) or not 1 <= limit <= MAX_LIMIT:
        also = " or None (no limit)" if unlimited else ""
        raise ConfigError(f"limit must be a positive int below 2**63{also}, got {limit!r}")
