"""The synthesis prompt of parallel thinking: a question and the paths sampled for it, as one text to continue.

It lives apart from the strategy because a synthesizer model is trained on exactly this text
(``scripts/train_mini_models.py --stage synthesizer``): the strategy and the training data render it with the same
function, so they cannot drift apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ttc.contexts import template_fields

SYNTHESIS_TEMPLATE = (
    "Question: {question}\n"
    "Here are {total} independent attempts at it.\n"
    "{paths}"
    "Check the attempts against the question, then write one final solution and end with 'The answer is N.'\n"
    "Answer:\n"
)
"""The synthesis prompt for an instruction-following model (a vLLM server, a local checkpoint)."""

PATH_TEMPLATE = "Attempt {index} (written by {count} of {total}):\n{text}\n\n"
"""How one (merged) path appears in :data:`SYNTHESIS_TEMPLATE`."""


@dataclass(frozen=True)
class Path:
    """One distinct path text and how many of the sampled paths wrote exactly it."""

    text: str
    count: int


def merge_paths(texts: Sequence[str]) -> list[Path]:
    """Identical texts once, with their count: most common first, ties in order of first appearance.

    Eight samples of a confident model repeat themselves; writing a repeat once with its count keeps the prompt
    short and gives the synthesizer the vote that the repeats stood for.
    """
    counts = Counter(texts)
    first = {text: i for i, text in reversed(list(enumerate(texts)))}
    ordered = sorted(counts, key=lambda text: (-counts[text], first[text]))
    return [Path(text=text, count=counts[text]) for text in ordered]


def render_synthesis(question: str, texts: Sequence[str], template: str = SYNTHESIS_TEMPLATE,
                     path_template: str = PATH_TEMPLATE) -> str:
    """The synthesis prompt for ``texts`` (the paths shown, in sampling order; ``{total}`` is how many); each
    path's surrounding whitespace is stripped, so that the path template alone decides the layout."""
    paths = merge_paths([text.strip() for text in texts])
    total = len(texts)
    body = "".join(path_template.format(index=i + 1, count=p.count, total=total, text=p.text)
                   for i, p in enumerate(paths))
    return template.format(question=question, paths=body, total=total)


def check_templates(template: str, path_template: str) -> None:
    """Refuse templates that would drop the question or the paths, or name a field the renderer does not fill.

    The fields are read as ``str.format`` reads them, so an escaped ``{{paths}}`` (a literal brace pair, which
    renders as the text ``{paths}``) does not count as the paths.
    """
    for text, what, needed, values in (
        (template, "synthesis_template", {"question", "paths"}, {"question": "", "paths": "", "total": 1}),
        (path_template, "path_template", {"text"}, {"index": 1, "count": 1, "total": 1, "text": ""}),
    ):
        # Filled as the renderer fills them: a conversion or spec they cannot take (``{paths!z}``, ``{text:d}``)
        # is refused, and one an int can (``{index:02d}``) is not.
        template_fields(text, name=what, required=needed, allowed=set(values), values=values)


__all__ = ["PATH_TEMPLATE", "SYNTHESIS_TEMPLATE", "Path", "check_templates", "merge_paths", "render_synthesis"]
