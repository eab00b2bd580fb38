"""Choosing a vLLM replica for each request: prefix affinity, least-loaded placement, failover.

A search tree sends many requests whose prompts share the question (and often much more). vLLM's prefix cache is
per server, so those requests should land on the server that already holds the question's KV blocks: requests
are keyed by their first ``prefix_tokens`` token ids and a key sticks to the replica it was first placed on while
that replica stays healthy. New keys go to the replica with the fewest requests in flight. A replica that refuses
connections is benched for ``cooldown_s`` and its keys move elsewhere; after the cool-down it is tried again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ttc.errors import ConfigError


@dataclass
class Replica:
    """One server and its client-side load and health."""

    url: str
    index: int
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


class ReplicaRouter:
    """Routes prompts to replicas. Not thread-safe: it lives on one event loop, where nothing preempts it."""

    def __init__(self, urls: Sequence[str], *, prefix_tokens: int = 32, cooldown_s: float = 10.0,
                 max_keys: int = 16384, clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ConfigError("the vLLM backend needs at least one server URL, e.g. http://127.0.0.1:8000")
        if len(set(urls)) != len(urls):
            raise ConfigError(f"vLLM server URLs must be distinct, got {list(urls)}")
        if prefix_tokens < 1:
            raise ConfigError(f"prefix_tokens must be >= 1, got {prefix_tokens}")
        self.replicas = [Replica(url=u, index=i) for i, u in enumerate(urls)]
        self.prefix_tokens = prefix_tokens
        self.cooldown_s = cooldown_s
        self._max_keys = max_keys
        self._clock = clock
        self._affinity: OrderedDict[tuple[int, ...], Replica] = OrderedDict()

    def pick(self, prompt: Sequence[int] | None = None, avoid: Replica | None = None) -> Replica:
        """The replica for ``prompt`` (None: any). ``avoid`` is skipped when another healthy replica exists."""
        now = self._clock()
        key = None if prompt is None else tuple(prompt[: self.prefix_tokens])
        if key is not None:
            sticky = self._affinity.get(key)
            if sticky is not None and sticky.healthy(now) and sticky is not avoid:
                self._affinity.move_to_end(key)
                return sticky
        chosen = self._least_loaded(now, avoid)
        if key is not None:
            self._remember(key, chosen)
        return chosen

    def _least_loaded(self, now: float, avoid: Replica | None) -> Replica:
        healthy = [r for r in self.replicas if r.healthy(now) and r is not avoid]
        if not healthy:
            healthy = [r for r in self.replicas if r.healthy(now)]
        if not healthy:
            # Every replica is benched: try the one whose cool-down ends first rather than failing outright.
            return min(self.replicas, key=lambda r: (r.down_until, r.index))
        return min(healthy, key=lambda r: (r.in_flight, r.index))

    def _remember(self, key: tuple[int, ...], replica: Replica) -> None:
        self._affinity[key] = replica
        self._affinity.move_to_end(key)
        while len(self._affinity) > self._max_keys:
            self._affinity.popitem(last=False)

    def has_alternative(self, replica: Replica) -> bool:
        """Whether a healthy replica other than ``replica`` exists (a retry can fail over without waiting)."""
        now = self._clock()
        return any(r is not replica and r.healthy(now) for r in self.replicas)

    def is_healthy(self, replica: Replica) -> bool:
        return replica.healthy(self._clock())

    def mark_down(self, replica: Replica) -> None:
        replica.failures += 1
        replica.down_until = self._clock() + self.cooldown_s

    def mark_up(self, replica: Replica) -> None:
        replica.failures = 0
        replica.down_until = 0.0

    def begin(self, replica: Replica) -> None:
        replica.in_flight += 1

    def end(self, replica: Replica) -> None:
        replica.in_flight -= 1


__all__ = ["Replica", "ReplicaRouter"]
