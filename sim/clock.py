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
    """An accelerated clock with a shared start.

    Within one process it runs on the monotonic clock from its creation. Processes (or
    hosts) that share one simulated time give the same ``wall_epoch_s``: the POSIX time
    [s] at which simulated time was ``start``; they then run on the system clock.
    """

    def __init__(self, *, start: datetime, speed: float = 1.0,
                 wall_epoch_s: float | None = None) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not 0 < speed <= 10_000:
            raise ValueError(f"speed must be in (0, 10000], got {speed}")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self._wall = time.monotonic if wall_epoch_s is None else time.time
        self._wall0 = self._wall() if wall_epoch_s is None else wall_epoch_s
        self.wall_epoch_s = time.time() - (self._wall() - self._wall0)
        self._start_s = self.start.timestamp()

    def to_json(self) -> dict[str, object]:
        """What another process needs to follow this clock (see ``from_json``)."""
        return {"start": self.start.isoformat(), "speed": self.speed,
                "wall_epoch_s": self.wall_epoch_s}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SimClock:
        try:
            return cls(start=datetime.fromisoformat(str(data["start"])),
                       speed=float(data["speed"]),  # type: ignore[arg-type]
                       wall_epoch_s=float(data["wall_epoch_s"]))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a simulator clock description ({exc}): {data!r}") from exc

    def time(self) -> float:
        """Simulated time as POSIX seconds [s]."""
        return self._start_s + (self._wall() - self._wall0) * self.speed

    def now(self) -> datetime:
        """Simulated time, timezone-aware UTC."""
        return datetime.fromtimestamp(self.time(), UTC)

    def elapsed_s(self) -> float:
        """Simulated seconds since the start [s]."""
        return (self._wall() - self._wall0) * self.speed

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


class SteppedClock:
    """Another clock as a process sees it whose system clock was stepped (NTP, an operator,
    a bad RTC): ``step(seconds)`` moves it forward or back at once; it runs on from there."""

    def __init__(self, base: SimClock) -> None:
        self.base = base
        self.speed = base.speed
        self.offset_s = 0.0

    def step(self, seconds: float) -> None:
        self.offset_s += seconds

    def time(self) -> float:
        return self.base.time() + self.offset_s

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    async def sleep_until(self, t: datetime) -> None:
        await self.sleep(t.timestamp() - self.time())

