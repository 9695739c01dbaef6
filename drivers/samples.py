"""A bounded hand-off of samples from pollers to their consumers."""

from __future__ import annotations

import asyncio
from collections import deque

from drivers.telemetry import Sample


class SampleQueue:
    """Bounded FIFO of samples. Overflow policy: the oldest samples are dropped and counted
    (``dropped``); a consumer that falls behind loses history, never the newest values."""

    def __init__(self, maxlen: int = 50_000) -> None:
        self._q: deque[Sample] = deque(maxlen=maxlen)
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._q)

    def put_many(self, samples: list[Sample]) -> None:
        overflow = len(self._q) + len(samples) - (self._q.maxlen or 0)
        if overflow > 0:
            self.dropped += min(overflow, len(self._q) + len(samples))
        self._q.extend(samples)
        self._ready.set()

    def take(self, max_items: int = 10_000) -> list[Sample]:
        """Everything waiting (up to ``max_items``), oldest first, without blocking."""
        out = [self._q.popleft() for _ in range(min(max_items, len(self._q)))]
        if not self._q:
            self._ready.clear()
        return out

    async def wait(self) -> None:
        await self._ready.wait()
