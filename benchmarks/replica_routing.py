#!/usr/bin/env python3
"""How well the vLLM backend's replica router places a tree search's requests: cache hits against balance.

No server runs: each replica is modelled by its prefix cache alone (an LRU of ``block_tokens``-token blocks, as
vLLM's automatic prefix caching keeps them), which is all that placement decides. The workload is a batch of
questions searched at once, every prompt opening with one shared chat template: each round, every live node of
every question asks for ``--children`` continuations of ``--step`` tokens, and ``--width`` of the children live
on. A round's requests are in flight together, so the router sees the load they make.

Two routers place the same requests:

* ``longest prefix``: ``ttc.backends.routing.ReplicaRouter``, the backend's router;
* ``first tokens`` (the baseline): a key of each prompt's first ``--key-tokens`` tokens sticks to the replica it
  was first placed on, new keys going to the least loaded, which is how the backend routed before.

Reported per router: the share of prompt tokens found in the chosen replica's cache, the busiest replica's share
of requests against an even split (1.0 is even), and the largest in-flight count any replica reached in a round
against the round's even split.

    python3 benchmarks/replica_routing.py
    python3 benchmarks/replica_routing.py --replicas 8 --questions 64 --template 512

The last line holds ``name=value`` pairs.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arguments import run_script

from ttc.backends.routing import Replica, ReplicaRouter, block_keys


class Router(Protocol):
    replicas: list[Replica]

    def pick(self, prompt: Sequence[int] | None = None, avoid: Replica | None = None) -> Replica: ...


class FirstTokensRouter:
    """The baseline: a prompt's first ``key_tokens`` tokens stick to the replica that first saw them."""

    def __init__(self, urls: Sequence[str], key_tokens: int) -> None:
        self.replicas = [Replica(url=u, index=i) for i, u in enumerate(urls)]
        self.key_tokens = key_tokens
        self._sticky: dict[tuple[int, ...], Replica] = {}

    def pick(self, prompt: Sequence[int] | None = None, avoid: Replica | None = None) -> Replica:
        key = tuple(prompt[: self.key_tokens]) if prompt is not None else ()
        if key not in self._sticky:
            self._sticky[key] = min(self.replicas, key=lambda r: (r.in_flight, r.index))
        return self._sticky[key]


@dataclass
class PrefixCache:
    """One replica's prefix cache: the most recently used blocks, each standing for its whole prefix."""

    capacity: int
    blocks: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def cached_tokens(self, keys: Sequence[int], block_tokens: int) -> int:
        hits = 0
        for key in keys:
            if key not in self.blocks:
                break
            hits += 1
        return hits * block_tokens

    def insert(self, keys: Sequence[int]) -> None:
        for key in keys:
            self.blocks[key] = None
            self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


@dataclass
class Outcome:
    cached_share: float
    load_share: float
    peak_share: float


def simulate(router: Router, args: argparse.Namespace) -> Outcome:
    rng = random.Random(args.seed)
    template = [rng.randrange(1000) for _ in range(args.template)]
    live = {q: [[*template, *(rng.randrange(1000) for _ in range(args.question))]] for q in range(args.questions)}
    caches = [PrefixCache(args.cache_blocks) for _ in router.replicas]
    requests = [0] * len(router.replicas)
    prompt_tokens = cached = 0
    peak_share = 0.0
    for _ in range(args.rounds):
        wave: list[tuple[int, Replica, list[int]]] = []
        for q, nodes in live.items():
            for node in nodes:
                for _ in range(args.children):
                    replica = router.pick(node)
                    replica.in_flight += 1
                    keys = block_keys(node, args.block_tokens)
                    prompt_tokens += len(node)
                    cached += caches[replica.index].cached_tokens(keys, args.block_tokens)
                    caches[replica.index].insert(keys)
                    requests[replica.index] += 1
                    wave.append((q, replica, [*node, *(rng.randrange(1000) for _ in range(args.step))]))
        even = len(wave) / len(router.replicas)
        peak_share = max(peak_share, max(r.in_flight for r in router.replicas) / even)
        children: dict[int, list[list[int]]] = {}
        for q, replica, child in wave:
            replica.in_flight -= 1
            caches[replica.index].insert(block_keys(child, args.block_tokens))
            children.setdefault(q, []).append(child)
        live = {q: rng.sample(kids, min(args.width, len(kids))) for q, kids in children.items()}
    even_requests = sum(requests) / len(requests)
    return Outcome(cached / prompt_tokens, max(requests) / even_requests, peak_share)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--template", type=int, default=256, help="tokens of the chat template every prompt opens with")
    parser.add_argument("--question", type=int, default=96, help="tokens of each question")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--width", type=int, default=4, help="nodes that live on per question each round")
    parser.add_argument("--children", type=int, default=4, help="continuations asked of each live node")
    parser.add_argument("--step", type=int, default=40, help="tokens of each continuation")
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--key-tokens", type=int, default=32, help="the baseline's key length")
    parser.add_argument("--cache-blocks", type=int, default=8192, help="each replica's prefix cache, in blocks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("replicas", "questions", "rounds", "width", "children", "step", "block_tokens", "key_tokens",
                 "cache_blocks", "question"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.template < 0:
        parser.error("--template must be >= 0")
    urls = [f"http://replica-{i}" for i in range(args.replicas)]
    outcomes = {
        "longest prefix": simulate(ReplicaRouter(urls, block_tokens=args.block_tokens), args),
        "first tokens": simulate(FirstTokensRouter(urls, args.key_tokens), args),
    }
    print(f"{args.questions} questions behind a {args.template}-token template, {args.rounds} rounds of "
          f"{args.width} x {args.children} requests each, on {args.replicas} replicas")
    print(f"{'router':<16}{'cached prompt share':>22}{'busiest / even (requests)':>28}{'peak in flight / even':>24}")
    for name, o in outcomes.items():
        print(f"{name:<16}{o.cached_share:>22.3f}{o.load_share:>28.2f}{o.peak_share:>24.2f}")
    new, old = outcomes["longest prefix"], outcomes["first tokens"]
    print(f"cached_share={new.cached_share:.3f} baseline_cached_share={old.cached_share:.3f} "
          f"load_share={new.load_share:.2f} baseline_load_share={old.load_share:.2f} "
          f"peak_share={new.peak_share:.2f} baseline_peak_share={old.peak_share:.2f}")


if __name__ == "__main__":
    run_script(main)
