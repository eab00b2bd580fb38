"""Choosing a vLLM replica for each request: longest cached prefix, least-loaded placement, failover.

A search tree sends many requests whose prompts share the question (and often much more). vLLM's prefix cache is
per server and holds full blocks of ``block_tokens`` tokens, so a request should land on the server that already
holds the longest run of its leading blocks. The router remembers, for each block-aligned prefix it has sent,
which replicas it went to, and sends a prompt to the healthy replica that holds most of it, fewest requests in
flight breaking ties.

Two things override that affinity, since cache hits are worth less than a balanced fleet:

- A prompt whose best cached prefix is under ``min_cached`` of its length goes to the least-loaded replica. A chat
  template or system prompt shared by every question would otherwise pin every new question to the replica that
  saw the template first; what a new question shares with old ones is worth little next to its own tokens. That
  holds only where the template is shorter than the question: one that is more than ``min_cached`` of a new
  question's prompt (a 256-token template before a 96-token question) keeps it on the template's replica until
  the spill below moves it, so a batch of new questions behind a long template fills one replica first.
- When the best-cached replica has ``spill_in_flight`` or more requests in flight beyond the least-loaded one,
  the prompt spills there: one busy question cannot queue behind itself while other replicas idle.

A replica that refuses connections is benched for ``cooldown_s`` and what it held is forgotten: a server that
went away may come back with an empty cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from ttc.errors import ConfigError
from ttc.types import is_int, is_number


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


def block_keys(prompt: Sequence[int], block_tokens: int) -> list[int]:
    """One key per full block of ``prompt``: key ``i`` stands for the prompt's first ``(i + 1) * block_tokens``
    tokens, chained so that equal keys mean equal prefixes (up to hash collisions, which cost a cache miss)."""
    keys: list[int] = []
    key = 0
    for end in range(block_tokens, len(prompt) + 1, block_tokens):
        key = hash((key, tuple(prompt[end - block_tokens : end])))
        keys.append(key)
    return keys


class ReplicaRouter:
    """Routes prompts to replicas. Not thread-safe: it lives on one event loop, where nothing preempts it."""

    def __init__(self, urls: Sequence[str], *, block_tokens: int = 16, min_cached: float = 0.5,
                 spill_in_flight: int = 32, cooldown_s: float = 10.0, max_keys: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ConfigError("the vLLM backend needs at least one server URL, e.g. http://127.0.0.1:8000")
        if len(set(urls)) != len(urls):
            raise ConfigError(f"vLLM server URLs must be distinct, got {list(urls)}")
        for name, count in (("block_tokens", block_tokens), ("spill_in_flight", spill_in_flight),
                            ("max_keys", max_keys)):
            if not is_int(count) or count < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {count!r}")
        if not is_number(min_cached) or not 0 <= min_cached <= 1:
            raise ConfigError(f"min_cached must be a fraction in [0, 1], got {min_cached!r}")
        self.replicas = [Replica(url=u, index=i) for i, u in enumerate(urls)]
        self.block_tokens = block_tokens
        self.min_cached = min_cached
        self.spill_in_flight = spill_in_flight
        self.cooldown_s = cooldown_s
        self._max_keys = max_keys
        self._clock = clock
        # Block-prefix key -> the replicas it was sent to; least recently sent keys are forgotten first.
        self._holders: OrderedDict[int, set[int]] = OrderedDict()

    def pick(self, prompt: Sequence[int] | None = None,
             avoid: Replica | Collection[Replica] | None = None) -> Replica:
        """The replica for ``prompt`` (None: any). ``avoid`` (one replica or several, e.g. those a request found
        unreachable) is skipped when another healthy replica exists."""
        now = self._clock()
        candidates = self._candidates(now, avoid)
        keys = [] if prompt is None else block_keys(prompt, self.block_tokens)
        least = min(candidates, key=lambda r: (r.in_flight, r.index))
        chosen = least
        cached = self._cached_blocks(keys, candidates)
        if prompt is not None and cached:
            best = max(candidates, key=lambda r: (cached.get(r.index, 0), -r.in_flight, -r.index))
            cached_tokens = cached.get(best.index, 0) * self.block_tokens
            if (cached_tokens >= self.min_cached * len(prompt)
                    and best.in_flight - least.in_flight < self.spill_in_flight):
                chosen = best
        self._remember(keys, chosen)
        return chosen

    def _candidates(self, now: float, avoid: Replica | Collection[Replica] | None) -> list[Replica]:
        skipped = _indices(avoid)
        healthy = [r for r in self.replicas if r.healthy(now) and r.index not in skipped]
        if not healthy:
            healthy = [r for r in self.replicas if r.healthy(now)]
        if not healthy:
            # Every replica is benched: try the one whose cool-down ends first rather than failing outright.
            return [min(self.replicas, key=lambda r: (r.down_until, r.index))]
        return healthy

    def _cached_blocks(self, keys: Sequence[int], candidates: Sequence[Replica]) -> dict[int, int]:
        """How many leading blocks of the prompt each candidate was sent, for those sent any."""
        wanted = {r.index for r in candidates}
        found: dict[int, int] = {}
        for blocks in range(len(keys), 0, -1):
            for index in self._holders.get(keys[blocks - 1], ()):
                if index in wanted and index not in found:
                    found[index] = blocks
            if len(found) == len(wanted):
                break
        return found

    def _remember(self, keys: Sequence[int], replica: Replica) -> None:
        for key in keys:
            holders = self._holders.get(key)
            if holders is None:
                self._holders[key] = {replica.index}
            else:
                holders.add(replica.index)
                self._holders.move_to_end(key)
        while len(self._holders) > self._max_keys:
            self._holders.popitem(last=False)

    def has_alternative(self, replica: Replica | Collection[Replica]) -> bool:
        """Whether a healthy replica other than ``replica`` (or those) exists: a request can fail over to it."""
        now = self._clock()
        skipped = _indices(replica)
        return any(r.index not in skipped and r.healthy(now) for r in self.replicas)

    def is_healthy(self, replica: Replica) -> bool:
        return replica.healthy(self._clock())

    def mark_down(self, replica: Replica) -> None:
        """Bench ``replica``; what it cached is forgotten, since a server that went away may come back empty."""
        replica.failures += 1
        replica.down_until = self._clock() + self.cooldown_s
        for holders in self._holders.values():
            holders.discard(replica.index)

    def mark_up(self, replica: Replica) -> None:
        replica.failures = 0
        replica.down_until = 0.0

    def begin(self, replica: Replica) -> None:
        replica.in_flight += 1

    def end(self, replica: Replica) -> None:
        replica.in_flight -= 1


def _indices(which: Replica | Collection[Replica] | None) -> set[int]:
    if which is None:
        return set()
    return {which.index} if isinstance(which, Replica) else {r.index for r in which}


__all__ = ["Replica", "ReplicaRouter", "block_keys"]
