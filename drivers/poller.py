"""The polling engine: every device polled on its own fixed-rate schedule.

A device that hangs, answers slowly or drops its connection delays only its own schedule;
the others keep their poll rate. (Devices behind one gateway share its connection, and so
its serialised request queue: a gateway that answers a dead unit id with an exception keeps
the others going; one that never answers delays them by the request timeout.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from drivers.device import Device, Health
from drivers.profile import PollClass

log = logging.getLogger(__name__)


@dataclass
class PollStats:
    polls: int = 0
    failures: int = 0
    last_duration_s: float = 0.0
    durations_s: deque[float] = field(default_factory=deque)  # fast polls, newest last


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], *, rounds: int = 100) -> None:
    """Cancel tasks and wait until they have ended.

    A task can swallow one cancellation (Python 3.11's ``asyncio.wait_for`` drops a cancel
    that arrives as its result does; code a task awaits may use it), so cancel again until
    every task is done, a bounded number of times.
    """
    for _ in range(rounds):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.1)
    log.error("%d task(s) would not stop", sum(1 for t in tasks if not t.done()))


class Poller:
    """Polls devices: fast and slow classes at their intervals, ``once`` at the start.

    Each device has its own fixed-rate schedule (device i starts at i/N of the fast
    interval, so the devices are spread over it; a poll that runs late skips the slots it
    missed instead of bursting to catch up), and its classes are polled one after the other
    when several are due. The schedule runs on loop timers and the devices' poll callbacks,
    with no task per device: a device that hangs delays only itself (and, on a shared
    gateway connection, the requests queued behind it).

    Intervals are in the clock's seconds; ``speed`` is the clock's seconds per wall second
    (a simulated clock's speed). Use as an async context manager; ``stats`` keeps the poll
    count and durations per device. ``on_poll(device, poll_class)`` is called as each poll
    ends, its values in the device's ``latest`` (a poller shard publishes them from there).
    """

    def __init__(self, devices: list[Device], *, fast_interval_s: float = 1.0,
                 slow_interval_s: float = 60.0, classes: tuple[PollClass, ...] = (
                     PollClass.ONCE, PollClass.FAST, PollClass.SLOW),
                 speed: float = 1.0, keep_durations: int = 1000,
                 on_poll: Callable[[Device, PollClass], None] | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"Poller speed must be > 0, got {speed}")
        self.devices = devices
        self.classes = classes
        self.speed = speed
        self._wall = {PollClass.FAST: fast_interval_s / speed,
                      PollClass.SLOW: slow_interval_s / speed}
        self._periodic = tuple(pc for pc in (PollClass.FAST, PollClass.SLOW) if pc in classes)
        self.on_poll = on_poll
        self.stats = {d.asset_id: PollStats(durations_s=deque(maxlen=keep_durations))
                      for d in devices}
        self._due: dict[tuple[str, PollClass], float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _schedule(self, dev: Device) -> None:
        if not self._running or not self._periodic:
            return
        assert self._loop is not None
        when = min(self._due[(dev.asset_id, pc)] for pc in self._periodic)
        self._timers[dev.asset_id] = self._loop.call_at(when, self._wake, dev)

    def _wake(self, dev: Device) -> None:
        if not self._running:
            return
        assert self._loop is not None
        now = self._loop.time()
        due = [pc for pc in self._periodic if now >= self._due[(dev.asset_id, pc)] - 1e-3]
        for pc in due:  # the next slot of each, skipping the ones already missed
            key = (dev.asset_id, pc)
            self._due[key] += self._wall[pc]
            if self._due[key] < now:
                self._due[key] = now + self._wall[pc]
        self._chain(dev, due)

    def _chain(self, dev: Device, classes: Sequence[PollClass]) -> None:
        """Poll ``classes`` one after the other, then schedule the next wake."""
        if not classes or not self._running:
            self._schedule(dev)
            return
        pc, rest = classes[0], classes[1:]
        t0 = time.perf_counter()

        def done(result: object) -> None:
            try:
                st = self.stats[dev.asset_id]
                st.last_duration_s = time.perf_counter() - t0
                if pc is PollClass.FAST:
                    st.polls += 1
                    st.failures += dev.health is Health.OFFLINE
                    st.durations_s.append(st.last_duration_s)
                if self.on_poll is not None and not isinstance(result, Exception):
                    self.on_poll(dev, pc)
            except Exception:  # keep the schedule alive whatever happens here
                log.exception("%s: poll bookkeeping failed", dev.asset_id)
            self._chain(dev, rest)

        dev.start_poll(pc, done)

    async def __aenter__(self) -> Poller:
        loop = self._loop = asyncio.get_running_loop()
        self._running = True
        fast = self._wall.get(PollClass.FAST, 0.0)
        n = max(1, len(self.devices))
        start = loop.time()
        for i, d in enumerate(self.devices):
            first = start + fast * i / n  # spread over the interval, not all at once
            for pc in self._periodic:
                self._due[(d.asset_id, pc)] = first
            once = [PollClass.ONCE] if PollClass.ONCE in self.classes else []
            self._timers[d.asset_id] = loop.call_at(first, self._chain, d, once)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Stop scheduling; a poll in flight ends on its own (answer or timeout)."""
        self._running = False
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
