"""A scripted model whose caller is cancelled while it releases sequences: where a timeout's cancellation lands."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ttc.testing import ScriptedBackend
from ttc.testing.scripted import Responder
from ttc.types import Completion, Sampling


class CancelledAtRelease(ScriptedBackend):
    """Its caller (``victim``) is cancelled as release number ``at`` is made, and with ``again`` once more at the
    next one (a timeout, then an impatient caller's second cancel). Each release is taken at once and answered
    after a round trip, as the local engine's is: that wait is where a cancellation lands. ``drawn`` holds every
    sequence a completion made, each of which must be released whatever was cancelled."""

    def __init__(self, responses: Responder | Sequence[str], at: int, again: bool) -> None:
        super().__init__(responses)
        self.at, self.again = at, again
        self.victim: asyncio.Task[object] | None = None
        self.drawn: set[tuple[int, ...]] = set()

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        out = await super().complete(prompt, n, sampling)
        self.drawn.update(tuple(prompt) + tuple(c.token_ids) for c in out)
        return out

    async def release(self, prompt: Sequence[int]) -> None:
        await super().release(prompt)
        if self.victim is not None and len(self.released) in {self.at, self.at + self.again}:
            self.victim.cancel()
        await asyncio.sleep(0)
