"""Traces as strict JSON (RFC 8259), for ``ttc traces export`` and the viewer's JSON endpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime

from ttc.errors import StorageError


def strict_json(value: object, where: str) -> object:
    """``value`` with every non-finite float replaced by "NaN", "Infinity" or "-Infinity" (valid JSON; a string
    "NaN" exports the same, so a reader takes those strings back as the floats where a number is expected),
    datetimes and dates as ISO strings, and tuples as lists. Any other non-JSON value is a StorageError naming
    where it is, never silently stringified; so is a value nested too deeply to convert."""
    try:
        return _strict(value, where)
    except RecursionError:
        raise StorageError(_too_deep(where)) from None


def strict_json_text(value: object, where: str, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """``value`` written as strict JSON text (see ``strict_json``). The encoder recurses too, one level at a time
    and deeper below a caller's stack than the conversion was: its RecursionError is the same StorageError, so the
    CLI and the viewer report it in one line instead of a traceback."""
    converted = strict_json(value, where)
    try:
        return json.dumps(converted, indent=indent, sort_keys=sort_keys, allow_nan=False)
    except RecursionError:
        raise StorageError(_too_deep(where)) from None


def _too_deep(where: str) -> str:
    return (f"cannot write {where} as JSON: it is nested too deeply (a value stored before ttc refused such values); "
            "read it in Python with TraceStore.get_trace instead")


def _strict(value: object, where: str) -> object:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):  # numpy's float64 too, whose repr is not "nan"
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        converted: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StorageError(f"cannot export {where}: key {key!r} is a {type(key).__name__}, not a string; "
                                  "JSON objects take string keys only")
            converted[key] = _strict(item, f"{where}.{key}")
        return converted
    if isinstance(value, (list, tuple)):
        items: list[object] = []
        for i, item in enumerate(value):  # a loop, not a comprehension: one stack frame per level of nesting
            items.append(_strict(item, f"{where}[{i}]"))
        return items
    raise StorageError(f"cannot export {where}: a {type(value).__name__} ({value!r:.60}) has no JSON form; "
                      "store only JSON values (str, number, bool, None, lists, dicts) in traces")


__all__ = ["strict_json", "strict_json_text"]
