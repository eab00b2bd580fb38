"""What the pooled-batch tests share: a scripted answer that easy questions agree on and hard ones split over, and
a trace's events of one kind. Nothing here pretends to be a model."""

from __future__ import annotations

import hashlib

from ttc.storage import TraceStore


def answer(prompt_text: str, index: int, seed: int | None) -> str:
    """Easy questions always get the same answer; hard ones split three ways, by seed and sample."""
    if "easy" in prompt_text:
        return "The answer is 4."
    digest = hashlib.sha256(f"{prompt_text}|{index}|{seed}".encode()).digest()
    return f"The answer is {5 + digest[0] % 3}."


def events(store: TraceStore, trace_id: str | None, kind: str) -> list[dict[str, object]]:
    assert trace_id is not None
    return [dict(e.payload) for e in store.get_trace(trace_id).events if e.kind == kind]
