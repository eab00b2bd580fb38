"""Traces as strict JSON (RFC 8259), for ``ttc traces export`` and the viewer's JSON endpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime

from ttc.errors import StorageError

_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def strict_json(value: object, where: str) -> object:
    """``value`` with every non-finite float replaced by "NaN", "Infinity" or "-Infinity" (lossless, and
    valid JSON), datetimes and dates as ISO strings, and tuples as lists. Any other non-JSON value is a
    StorageError naming where it is, never silently stringified."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE[repr(value)]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        converted: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StorageError(f"cannot export {where}: key {key!r} is a {type(key).__name__}, not a string; "
                                  "JSON objects take string keys only")
            converted[key] = strict_json(item, f"{where}.{key}")
        return converted
    if isinstance(value, (list, tuple)):
        return [strict_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise StorageError(f"cannot export {where}: a {type(value).__name__} ({value!r:.60}) has no JSON form; "
                      "store only JSON values (str, number, bool, None, lists, dicts) in traces")


__all__ = ["strict_json"]
