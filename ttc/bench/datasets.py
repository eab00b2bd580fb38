"""Benchmark loaders: GSM8K, MATH-500 and AIME JSONL files, any JSONL with question/answer fields, and the
built-in synthetic benchmark. Data is read from local files only; ttc never downloads a dataset.
"""

from __future__ import annotations

import decimal
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ttc.envvars import env_text
from ttc.errors import ConfigError
from ttc.types import CONTEXT_ROW, Problem, check_unicode, is_int
from ttc.verifiers.answer import gold_key

FILES = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500_test.jsonl", "aime24": "aime24_test.jsonl"}
SYNTHETIC = ("synthetic", "synthetic-stateful", "synthetic-totals")


def data_dir() -> Path:
    """``TTC_DATA_DIR``, else the first of ``../shared/datasets``, ``./datasets`` and ``shared/datasets`` beside the
    checkout that exists."""
    configured = env_text("TTC_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    for candidate in (Path.cwd().parent / "shared" / "datasets", Path.cwd() / "datasets",
                      Path(__file__).resolve().parents[3] / "shared" / "datasets"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("no dataset folder found: set TTC_DATA_DIR to the folder holding gsm8k_test.jsonl, "
                      "math500_test.jsonl and aime24_test.jsonl, or pass a .jsonl path")


def dataset_names() -> list[str]:
    return [*FILES, *SYNTHETIC]


def load_dataset(name: str, *, limit: int | None = None, offset: int = 0, seed: int = 0,
                 levels: Sequence[int] | None = None) -> list[Problem]:
    """Problems of a named dataset (see :func:`dataset_names`) or of a JSONL file path.

    ``offset``/``limit`` select a slice; ``seed`` and ``levels`` apply to the synthetic datasets.
    Problem ``index`` is the row's position in the file, so a resumed evaluation can match rows exactly.
    """
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ConfigError(f"limit must be an int >= 1, got {limit!r}")
    if not is_int(offset) or offset < 0:
        raise ConfigError(f"offset must be an int >= 0, got {offset!r}")
    if not is_int(seed):  # True would run as seed 1 and be stored as True
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if name in SYNTHETIC:
        return _synthetic(name, limit or 100, offset, seed, levels)
    path = data_dir() / FILES[name] if name in FILES else Path(name)
    if name in FILES and not path.is_file():
        raise ConfigError(f"dataset {name!r} is {path}, which does not exist: set TTC_DATA_DIR to the folder "
                          f"that holds {FILES[name]}")
    if not path.is_file():
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(dataset_names())} or a path to a "
                          ".jsonl file")
    if levels is not None:
        raise ConfigError(f"levels select problems of the synthetic datasets; {name!r} has none to select by: "
                          "leave levels out")
    label = name if name in FILES else path.stem
    return _read_jsonl(path, label, limit, offset)


def dataset_setting(name: str) -> str:
    """How a run records the dataset it read: a name as given, a file by its absolute path, so a resume that
    spells the same file another way (``./data.jsonl``, or from another folder) is recognised as the same."""
    return name if name in FILES or name in SYNTHETIC else str(Path(name).resolve())


def same_dataset(recorded: object, given: object) -> bool:
    """Whether two recorded dataset settings name one dataset: equal, or one file spelt two ways (a run
    recorded before :func:`dataset_setting` kept the spelling it was given)."""
    if recorded == given:
        return True
    if not isinstance(recorded, str) or not isinstance(given, str) or recorded in FILES or recorded in SYNTHETIC:
        return False
    try:
        return os.path.samefile(recorded, given)
    except OSError:  # either is not a file here
        return False


def _read_jsonl(path: Path, label: str, limit: int | None, offset: int) -> list[Problem]:
    """Rows ``offset`` to ``offset + limit`` (blank lines are not rows), each indexed by its line in the file.

    Rows before ``offset`` are still read for their context, so that a question's ``context_row`` (the line of its
    context's first question, which seeds the context's sleep run) is the file's, not the slice's."""
    problems: list[Problem] = []
    firsts: dict[str, int] = {}
    rows = 0
    try:
        # utf-8-sig: a byte-order mark, which some editors write at the start of a UTF-8 file, is not JSON.
        with path.open(encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh):
                if not line.strip():
                    continue
                rows += 1
                if rows <= offset:
                    _note_context(line, lineno, firsts)
                    continue
                if limit is not None and len(problems) >= limit:
                    break
                problems.append(_parse_row(line, path, lineno, label, firsts))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8 JSON lines") from None
    except OSError as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    return problems


def _note_context(line: str, lineno: int, firsts: dict[str, int]) -> None:
    """A skipped row's context, if it has one: the row is not asked, so a flaw in it is not this run's error."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, a number past int()'s digit limit, nesting past the stack
        return
    context = row.get("context") if isinstance(row, dict) else None
    if isinstance(context, str) and context.strip():
        firsts.setdefault(context, lineno)


def _parse_row(line: str, path: Path, lineno: int, label: str, firsts: dict[str, int]) -> Problem:
    where = f"{path}:{lineno + 1}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg}); fix or remove that line") from None
    except (ValueError, RecursionError) as exc:  # a number past int()'s digit limit, nesting past the stack
        raise ConfigError(f"{where}: JSON that cannot be read ({str(exc)[:80] or type(exc).__name__}); fix or "
                          "remove that line") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object with question/problem and answer fields")
    question = row.get("question") or row.get("problem")
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"{where}: no 'question' or 'problem' text")
    gold = _answer_text(row.get("answer"), where)
    context = row.get("context")
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise ConfigError(f"{where}: 'context' must be the text the question is about, or left out")
    meta = {k: v for k, v in row.items() if k in ("level", "subject", "unique_id", "id")}
    texts = {"question": question, "answer": gold, "context": context or ""} | \
        {key: value for key, value in meta.items() if isinstance(value, str)}
    for key, text in texts.items():  # a JSON escape of a lone surrogate: no store or tokenizer can encode it
        check_unicode(text, f"{where}: {key!r}")
    if context is not None:
        meta[CONTEXT_ROW] = firsts.setdefault(context, lineno)
    return Problem(question=question, gold=gold, dataset=label, index=lineno, meta=meta, context=context)


def _answer_text(answer: object, where: str) -> str:
    """The gold answer of a row: its text (a GSM8K solution's ``#### N``), or a JSON number written as an int
    where it is whole (``1e20`` is ``100000000000000000000``, as a model would write it)."""
    if answer is None:
        raise ConfigError(f"{where}: no 'answer'")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise ConfigError(f"{where}: 'answer' must be a string or a number, got {json.dumps(answer)}")
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise ConfigError(f"{where}: 'answer' must be a finite number, got {answer}")
        # Written out in full: repr writes 0.00001 as '1e-05', which a model's '0.00001' does not grade equal to.
        answer = int(answer) if answer.is_integer() else format(decimal.Decimal(repr(answer)), "f")
    gold = _gold(str(answer))
    if not gold:
        raise ConfigError(f"{where}: no 'answer' (after '####' too)")
    try:
        gold_key(gold)  # grading would refuse it only after the model had answered, on every resume again
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return gold


_GSM8K_GOLD = re.compile(r"####\s*(.+?)\s*$", re.S)


def _gold(answer: str) -> str:
    """GSM8K answers are worked solutions ending in ``#### N``: the gold is N, without thousands commas."""
    match = _GSM8K_GOLD.search(answer)
    if match:
        return match.group(1).replace(",", "").strip()
    return answer.strip()


MAX_SYNTHETIC_ROWS = 100_000
"""Rows of one synthetic seed: a row's problem is drawn after every row before it (5-6 s for the last one here), so
an offset far beyond this would generate for minutes before the first problem."""


def _synthetic(name: str, limit: int, offset: int, seed: int, levels: Sequence[int] | None) -> list[Problem]:
    """The synthetic benchmark; for the stateful variant, each context's questions become consecutive rows;
    ``synthetic-totals`` is the totals questions of :mod:`ttc.bench.totals`.

    ``seed`` counts from the start of ``EVAL_SEEDS``, so an evaluation never draws the seeds the bundled models
    were trained on, whatever seed it is given; a one- or two-step problem can still recur in training, since
    there are few of them (the README's model card says how many).
    """
    from ttc.bench import synthetic, totals

    if not 0 <= seed < len(synthetic.EVAL_SEEDS):
        raise ConfigError(f"synthetic seed must be in [0, {len(synthetic.EVAL_SEEDS)}), got {seed}")
    if offset + limit > MAX_SYNTHETIC_ROWS:
        raise ConfigError(f"a synthetic dataset has {MAX_SYNTHETIC_ROWS} problems per seed (offset + limit is "
                          f"{offset + limit}): draw more with other seeds")
    held_out = synthetic.EVAL_SEEDS.start + seed
    chosen = synthetic.LEVELS if levels is None else levels  # an empty choice is an error, not every level
    if name == "synthetic":
        items = synthetic.generate(held_out, offset + limit, chosen)
    elif name == "synthetic-totals":
        items = totals.generate_totals(held_out, offset + limit, chosen)
    elif levels is not None:
        raise ConfigError(f"{name} has no levels: its questions each take a few steps from one context; leave "
                          "levels out")
    else:
        # Each question is asked about its context (Problem.context), so an evaluation can think about a context
        # once, at sleep time, for all of its questions.
        contexts = synthetic.generate_stateful(held_out, -(-(offset + limit) // STATEFUL_QUESTIONS),
                                               STATEFUL_QUESTIONS)
        rows = [(query, p, ctx.context) for ctx in contexts for query, p in zip(ctx.queries, ctx.problems,
                                                                                 strict=True)]
        return [Problem(question=query, gold=p.answer, dataset=name, index=i,
                        meta={"level": p.level, "seed": seed, CONTEXT_ROW: i - i % STATEFUL_QUESTIONS},
                        context=context)
                for i, (query, p, context) in enumerate(rows) if offset <= i < offset + limit]
    return [Problem(question=p.question, gold=p.answer, dataset=name, index=i,
                    meta={"level": p.level, "seed": seed})
            for i, p in enumerate(items) if offset <= i < offset + limit]


STATEFUL_QUESTIONS = 3


__all__ = ["data_dir", "dataset_names", "dataset_setting", "load_dataset", "same_dataset"]
