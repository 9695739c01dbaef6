"""Simulated time: one clock shared by the simulated plant and the controller.

``SimClock`` maps wall time to simulated time: ``now = start + (wall − wall_at_start) × speed``.
At ``speed=1`` and ``start=now`` it is real time. Everything that sleeps uses ``sleep``
in simulated seconds, so a controller written against this clock runs unchanged at any
speed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime


class SimClock:
    """An accelerated clock with a shared start."""

    def __init__(self, *, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not 0 < speed <= 10_000:
            raise ValueError(f"speed must be in (0, 10000], got {speed}")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self._wall0 = time.monotonic()
        self._start_s = self.start.timestamp()

    def time(self) -> float:
        """Simulated time as POSIX seconds [s]."""
        return self._start_s + (time.monotonic() - self._wall0) * self.speed

    def now(self) -> datetime:
        """Simulated time, timezone-aware UTC."""
        return datetime.fromtimestamp(self.time(), UTC)

    def elapsed_s(self) -> float:
        """Simulated seconds since the start [s]."""
        return (time.monotonic() - self._wall0) * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep for a number of simulated seconds."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def sleep_until(self, t: datetime) -> None:
        await self.sleep((t - self.now()).total_seconds())


class WallClock:
    """Real time (speed 1) read from the system clock."""

    speed = 1.0

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, t: datetime) -> None:
        await self.sleep((t - self.now()).total_seconds())
