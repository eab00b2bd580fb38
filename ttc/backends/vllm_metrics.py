"""vLLM's prefix-cache counters, read from its Prometheus ``/metrics`` page.

The server counts, in tokens, how many prompt tokens it looked up in its prefix cache (``vllm:prefix_cache_queries``)
and how many it found (``vllm:prefix_cache_hits``). Both are monotonic counters (exposed with a ``_total`` suffix by
newer Prometheus clients), so the hit rate of one run is the ratio of their increases between two snapshots.
Snapshots are kept per replica: a replica that restarts or cannot be reached is left out of a diff instead of
corrupting the sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

QUERIES = "vllm:prefix_cache_queries"
HITS = "vllm:prefix_cache_hits"


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric over its label sets: ``{name: total}``.

    Only the plain text exposition format is read; comment lines, malformed lines and non-finite values are
    skipped rather than failing, because a metrics page is diagnostics, not a contract worth crashing a run over.
    """
    totals: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, rest = _split_name(line)
        if not name:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        if math.isfinite(value):
            totals[name] = totals.get(name, 0.0) + value
    return totals


def _split_name(line: str) -> tuple[str, str]:
    """Split ``name{labels} value [timestamp]`` into the name and what follows the labels."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        close = line.rfind("}")
        if close < brace:
            return "", ""
        return line[:brace], line[close + 1 :]
    if space == -1:
        return "", ""
    return line[:space], line[space:]


def _counter(metrics: Mapping[str, float], name: str) -> float | None:
    for key in (name, f"{name}_total"):
        if key in metrics:
            return metrics[key]
    return None


@dataclass(frozen=True)
class ReplicaCounters:
    """One replica's cumulative prefix-cache counters, in tokens."""

    queries: float
    hits: float


@dataclass(frozen=True)
class PrefixCacheSnapshot:
    """Prefix-cache counters of every replica that answered, keyed by base URL."""

    replicas: Mapping[str, ReplicaCounters] = field(default_factory=dict)

    @property
    def queries(self) -> float:
        return sum(c.queries for c in self.replicas.values())

    @property
    def hits(self) -> float:
        return sum(c.hits for c in self.replicas.values())

    @property
    def hit_rate(self) -> float | None:
        """Lifetime hit rate of the replicas in this snapshot (since each server started)."""
        return self.hits / self.queries if self.queries > 0 else None


def counters_from_metrics(text: str) -> ReplicaCounters | None:
    """The prefix-cache counters on one ``/metrics`` page, or None when the server does not publish them."""
    metrics = parse_prometheus(text)
    queries, hits = _counter(metrics, QUERIES), _counter(metrics, HITS)
    if queries is None or hits is None:
        return None
    return ReplicaCounters(queries=queries, hits=hits)


def prefix_cache_hit_rate(before: PrefixCacheSnapshot, after: PrefixCacheSnapshot) -> float | None:
    """Share of prompt tokens served from the prefix cache between two snapshots.

    Only replicas present in both snapshots count, and a replica whose counters went backwards (it restarted) is
    skipped. None when no prompt token was looked up in between.
    """
    queries = hits = 0.0
    for url, end in after.replicas.items():
        start = before.replicas.get(url)
        if start is None or end.queries < start.queries or end.hits < start.hits:
            continue
        queries += end.queries - start.queries
        hits += end.hits - start.hits
    return hits / queries if queries > 0 else None


__all__ = [
    "HITS",
    "QUERIES",
    "PrefixCacheSnapshot",
    "ReplicaCounters",
    "counters_from_metrics",
    "parse_prometheus",
    "prefix_cache_hit_rate",
]
