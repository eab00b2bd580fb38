"""Prompts for questions about a shared context, and for thinking about a context before any question comes.

Sleep-time compute splits a prompt in two: a context that is known early (a document, a state of the world) and
questions that arrive later. Two templates, owned by the backend setup because they belong with its model:

- the sleep template (``{context}``) asks the model to work out what follows from the context;
- the context template (``{context}``, ``{notes}``, ``{question}``) asks a question about the context. ``{notes}``
  becomes the notes written at sleep time, each line ending in a newline, or nothing when there are none, so one
  template serves questions with and without notes.

A template filled here goes on to the strategies with ``{question}`` still open (they format it once more), so
everything else in it, the user's literal ``{{ }}`` and the braces of contexts and notes alike, is escaped again.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from ttc.errors import ConfigError
from ttc.types import check_unicode

DEFAULT_SLEEP_TEMPLATE = (
    "Context: {context}\n"
    "No question has been asked yet. Work out what follows from this context: compute the quantities it "
    "implies, one per line, so that later questions about it can be answered quickly.\n"
    "Notes:\n"
)

DEFAULT_CONTEXT_TEMPLATE = (
    "Context: {context}\n"
    "{notes}"
    "Question: {question}\n"
    "Solve step by step and end with 'The answer is N.'\n"
    "Answer:\n"
)


def template_fields(template: object, *, name: str, required: set[str], allowed: set[str],
                    values: Mapping[str, object] | None = None) -> set[str]:
    """The placeholders of ``template``; a ConfigError names what is missing or unknown, or a conversion or format
    spec the fields cannot take when filled with ``values`` (text for each, where not given)."""
    if not isinstance(template, str):
        raise ConfigError(f"{name} must be a string, got {type(template).__name__}")
    check_unicode(template, name)
    try:
        found = _fields(template)
    except ValueError as exc:
        raise ConfigError(f"{name} is not a valid format string ({exc}); write a literal brace as {{{{ or }}}}") \
            from None
    if missing := sorted(required - found):
        raise ConfigError(f"{name} must contain the placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
    if unknown := sorted(found - allowed):
        raise ConfigError(f"{name} has unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; it may "
                          f"use {', '.join('{' + a + '}' for a in sorted(allowed))}")
    try:  # a conversion or format spec the values cannot take (``{context!x}``, ``{question:x}``) fails here
        template.format(**(dict(values) if values is not None else dict.fromkeys(allowed, "text")))
    except (ValueError, KeyError, IndexError) as exc:
        raise ConfigError(f"{name} does not render ({exc}): got {template!r}") from None
    return found


def _fields(template: str) -> set[str]:
    """Every placeholder, those nested in a format spec too (``{question:{width}}`` names ``width``)."""
    found: set[str] = set()
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None:
            found.add(name)
        if spec:
            found |= _fields(spec)
    return found


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _left_open(template: str, field: str, **fields: str) -> str:
    """``template`` formatted with ``fields``, as a strategy's template again: ``{field}`` becomes the open
    ``{question}`` (its conversion and format spec kept), and every other brace of the result (a literal ``{{`` of
    the template, a brace of a field's text) is escaped for the strategies' own format."""
    formatter = string.Formatter()
    out: list[str] = []
    for literal, name, spec, conversion in formatter.parse(template):
        out.append(_escape(literal))
        if name is None:
            continue
        if name == field:
            out.append("{question" + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
            continue
        value = formatter.convert_field(fields[name], conversion) if conversion else fields[name]
        shown = formatter.vformat(spec, (), fields) if spec else ""
        out.append(_escape(formatter.format_field(value, shown)))
    return "".join(out)


def sleep_prompt_template(template: str) -> str:
    """``template`` (with ``{context}``) as a strategy's prompt template (with ``{question}``): sleep runs treat
    the context as the question they are given."""
    template_fields(template, name="sleep_template", required={"context"}, allowed={"context"})
    return _left_open(template, "context")


def context_prompt_template(template: str, context: str, notes: str | None, *,
                            name: str = "the context template") -> str:
    """A prompt template with the context and notes filled in and ``{question}`` left open."""
    needed = {"context", "question"} | ({"notes"} if notes is not None else set())
    template_fields(template, name=name, required=needed, allowed={"context", "notes", "question"})
    return _left_open(template, "question", context=context, notes=notes_block(notes))


def notes_block(notes: str | None) -> str:
    """The notes as ``{notes}`` shows them: ending in a newline, so the template's next line starts on its own,
    or nothing when there are none. Only ``\n`` ends a line: ``str.splitlines`` also splits at ``\r``, form
    feeds, ``\x1c``-``\x1e``, ``\x85`` and U+2028/U+2029, and rewrote those to ``\n``, so the model read other
    text than the stored notes."""
    body = (notes or "").strip("\n")
    return f"{body}\n" if body else ""


__all__ = [
    "DEFAULT_CONTEXT_TEMPLATE",
    "DEFAULT_SLEEP_TEMPLATE",
    "context_prompt_template",
    "sleep_prompt_template",
    "template_fields",
]
