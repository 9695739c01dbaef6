"""A bounded hand-off of samples from pollers to their consumers."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from datetime import datetime

from drivers.telemetry import Quality, Sample

_Block = tuple[str, Sequence[str], Sequence[str], Sequence[float | None], Sequence[Quality],
               datetime]


class SampleQueue:
    """Bounded FIFO of samples. Overflow policy: the oldest samples are dropped and counted
    (``dropped``); a consumer that falls behind loses history, never the newest values.

    A poller hands over a read block at a time (``put_block``); the ``Sample`` objects are
    built when the consumer takes them, so a poll pays for no object per point.
    """

    def __init__(self, maxlen: int = 50_000) -> None:
        if maxlen < 1:
            raise ValueError(f"SampleQueue maxlen must be at least 1, got {maxlen}")
        self.maxlen = maxlen
        self._q: deque[_Block] = deque()
        self._n = 0
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return self._n

    def put_block(self, asset_id: str, points: Sequence[str], units: Sequence[str],
                  values: Sequence[float | None], qualities: Sequence[Quality],
                  ts: datetime) -> None:
        """One read's samples: point names, units, values and qualities, all read at ``ts``."""
        n = len(points)
        if n > self.maxlen:  # keep only the newest that fit
            cut = n - self.maxlen
            self.dropped += cut
            points, units, values, qualities = (points[cut:], units[cut:], values[cut:],
                                                qualities[cut:])
            n = self.maxlen
        self._q.append((asset_id, points, units, values, qualities, ts))
        self._n += n
        while self._n > self.maxlen:
            old = self._q.popleft()
            self._n -= len(old[1])
            self.dropped += len(old[1])
        self._ready.set()

    def put_many(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            self.put_block(s.asset_id, (s.point,), (s.unit,), (s.value,), (s.quality,), s.ts)

    def take(self, max_items: int = 10_000) -> list[Sample]:
        """Everything waiting (up to about ``max_items``: whole blocks), oldest first,
        without blocking."""
        out: list[Sample] = []
        while self._q and len(out) < max_items:
            asset_id, points, units, values, qualities, ts = self._q.popleft()
            self._n -= len(points)
            out.extend(Sample(asset_id, p, v, u, ts, q)
                       for p, u, v, q in zip(points, units, values, qualities, strict=True))
        if not self._q:
            self._ready.clear()
        return out

    async def wait(self) -> None:
        await self._ready.wait()
