"""Simulated time: one clock shared by the simulated plant and the controller.

``SimClock`` maps wall time to simulated time: ``now = start + (wall − wall_at_start) × speed``.
At ``speed=1`` and ``start=now`` it is real time. Everything that sleeps uses ``sleep``
in simulated seconds, so a controller written against this clock runs unchanged at any
speed.

When the plant and the controller share one process (``vpp demo``, ``vpp sim run``, the
tests), ``SimClock.pace`` holds simulated time while the event loop is stalled: a garbage
collection, a thread holding the interpreter, the host taking the CPU away. At ×600 a stall
of 40 ms wall would be 24 simulated seconds in which the plant moves and the controller
cannot; a controller running in real time never meets such a gap. Held time is counted, so
a run's report shows how far its simulated time fell behind the wall.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol

PACE_TICK_WALL_S = 0.002  # [wall s] how often the pacer looks at the event loop


class TimeSource(Protocol):
    speed: float

    def time(self) -> float: ...


async def sleep_until_s(clock: TimeSource, t_s: float) -> None:
    """Sleep until the clock reads ``t_s`` [simulated POSIX s]: later in wall time if it
    is held meanwhile (``SimClock.pace``), never earlier."""
    while (left_s := t_s - clock.time()) > 1e-6:  # noqa: ASYNC110 (time, not an event)
        await asyncio.sleep(left_s / clock.speed)


def pace_max_lag_wall_s(speed: float) -> float:
    """How late the event loop may be before simulated time is held [wall s]: one simulated
    second, within 5-50 ms wall (below 5 ms the loop's own work would hold it)."""
    return min(0.05, max(0.005, 1.0 / speed))


class SimClock:
    """An accelerated clock with a shared start.

    Within one process it runs on the monotonic clock from its creation. Processes (or
    hosts) that share one simulated time give the same ``wall_epoch_s``: the POSIX time
    [s] at which simulated time was ``start``; they then run on the system clock, and the
    clock cannot be held (``pace``), since the others would not be.
    """

    def __init__(self, *, start: datetime, speed: float = 1.0,
                 wall_epoch_s: float | None = None) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not 0 < speed <= 10_000:
            raise ValueError(f"speed must be in (0, 10000], got {speed}")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self.shared = wall_epoch_s is not None
        self._wall = time.monotonic if wall_epoch_s is None else time.time
        self._wall0 = self._wall() if wall_epoch_s is None else wall_epoch_s
        self.wall_epoch_s = time.time() - (self._wall() - self._wall0)
        self._start_s = self.start.timestamp()
        # (wall time up to which the clock runs freely, or None: always; wall seconds held
        # so far), one tuple so that a reader in another thread sees both of one moment
        self._hold: tuple[float | None, float] = (None, 0.0)
        self.stalled_wall_s = 0.0  # [wall s] held for the event loop's stalls, in all
        self.longest_stall_wall_s = 0.0  # [wall s] the longest of them
        self._allowance_s: float | None = None  # [wall s] while paced (see pace)
        self._held_by_hand = False

    def to_json(self) -> dict[str, object]:
        """What another process needs to follow this clock (see ``from_json``)."""
        if self.held_wall_s > 0 or self._hold[0] is not None or self._held_by_hand:
            raise ValueError("a clock that holds its time for its event loop cannot be shared")
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

    @property
    def held_wall_s(self) -> float:
        """Wall seconds during which simulated time was held [s], for stalls or by hand."""
        return self._hold[1]

    def _run_wall_s(self) -> float:
        """Wall seconds the clock has run since its start, less the time held [s]."""
        free_until, held = self._hold
        w = self._wall()
        if free_until is not None and w > free_until:
            w = free_until
        return w - self._wall0 - held

    def time(self) -> float:
        """Simulated time as POSIX seconds [s]."""
        return self._start_s + self._run_wall_s() * self.speed

    def now(self) -> datetime:
        """Simulated time, timezone-aware UTC."""
        return datetime.fromtimestamp(self.time(), UTC)

    def elapsed_s(self) -> float:
        """Simulated seconds since the start [s]."""
        return self._run_wall_s() * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep for a number of simulated seconds."""
        await self.sleep_until_s(self.time() + max(0.0, seconds))

    async def sleep_until(self, t: datetime) -> None:
        await self.sleep_until_s(t.timestamp())

    async def sleep_until_s(self, t_s: float) -> None:
        """Sleep until simulated POSIX time ``t_s`` [s] (see :func:`sleep_until_s`)."""
        await sleep_until_s(self, t_s)

    async def pace(self, *, max_lag_wall_s: float | None = None) -> None:
        """Hold simulated time while this event loop is late by more than ``max_lag_wall_s``
        [wall s] (default ``pace_max_lag_wall_s(speed)``); runs until cancelled.

        A task looks at the loop every ``PACE_TICK_WALL_S``: simulated time runs freely up
        to ``max_lag_wall_s`` past the task's tick, and stands still after that until the
        task runs again. So time is continuous and never goes back, whoever reads it (any
        thread), and a stalled loop costs the plant no more than ``max_lag_wall_s`` of
        simulated time that the controller could not act in.
        """
        if self.shared:
            raise ValueError("a clock shared with other processes cannot be held")
        self._allowance_s = PACE_TICK_WALL_S + (pace_max_lag_wall_s(self.speed)
                                                if max_lag_wall_s is None else max_lag_wall_s)
        self._tick(stall=False)
        try:
            while True:
                await asyncio.sleep(PACE_TICK_WALL_S)
                self._tick(stall=True)
        finally:
            self._allowance_s = None
            self._tick(stall=True)

    def hold(self) -> None:
        """Stop simulated time until ``release`` (a run that starts once its controller is
        ready). Not counted as a stall."""
        if self.shared:
            raise ValueError("a clock shared with other processes cannot be held")
        self._tick(stall=True)
        self._held_by_hand = True
        self._tick(stall=False)

    def release(self) -> None:
        """Let simulated time run on from where ``hold`` stopped it."""
        self._tick(stall=False)
        self._held_by_hand = False
        self._tick(stall=False)

    def _tick(self, *, stall: bool) -> None:
        """Count the wall time the clock stood still since the last tick (as a stall of
        the loop if ``stall``), and let it run freely up to the allowance from now."""
        free_until, held = self._hold
        w = self._wall()
        if free_until is not None and w > free_until:
            held += w - free_until
            if stall and not self._held_by_hand:
                self.stalled_wall_s += w - free_until
                self.longest_stall_wall_s = max(self.longest_stall_wall_s, w - free_until)
        if self._held_by_hand:
            self._hold = (w, held)
        else:
            self._hold = (None if self._allowance_s is None else w + self._allowance_s, held)


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

