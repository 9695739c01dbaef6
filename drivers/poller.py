"""The polling engine: every device polled on its own schedule, in its own task.

A device that hangs, answers slowly or drops its connection delays only its own task; the
others keep their poll rate. (Devices behind one gateway share its connection, and so its
serialised request queue: a gateway that answers a dead unit id with an exception keeps
the others going; one that never answers delays them by the request timeout.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from drivers.connection import DeviceError
from drivers.device import Device
from drivers.profile import PollClass

log = logging.getLogger(__name__)


@dataclass
class PollStats:
    polls: int = 0
    failures: int = 0
    last_duration_s: float = 0.0
    durations_s: list[float] = field(default_factory=list)


async def _wall_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


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

    ``sleep`` and ``time`` are the clock's, in its own seconds (simulated or real). Use as an async
    context manager; ``stats`` keeps the poll count and durations per device.
    """

    def __init__(self, devices: list[Device], *, fast_interval_s: float = 1.0,
                 slow_interval_s: float = 60.0, classes: tuple[PollClass, ...] = (
                     PollClass.ONCE, PollClass.FAST, PollClass.SLOW),
                 sleep: Callable[[float], Awaitable[None]] = _wall_sleep,
                 time: Callable[[], float] = time.monotonic,
                 keep_durations: int = 1000) -> None:
        self.devices = devices
        self.intervals = {PollClass.FAST: fast_interval_s, PollClass.SLOW: slow_interval_s}
        self.classes = classes
        self.sleep = sleep
        self.time = time
        self.keep_durations = keep_durations
        self.stats = {d.asset_id: PollStats() for d in devices}
        self._tasks: list[asyncio.Task[None]] = []

    async def _poll(self, dev: Device, pc: PollClass) -> None:
        st = self.stats[dev.asset_id]
        t0 = time.perf_counter()
        try:
            await dev.poll(pc)
        except DeviceError as exc:  # poll() reports failures as quality; this is a bug guard
            log.warning("%s: %s", dev.asset_id, exc)
        st.last_duration_s = time.perf_counter() - t0
        if pc is PollClass.FAST:
            st.polls += 1
            if dev.health.value == "offline":
                st.failures += 1
            st.durations_s.append(st.last_duration_s)
            if len(st.durations_s) > self.keep_durations:
                del st.durations_s[: len(st.durations_s) - self.keep_durations]

    async def _run_device(self, dev: Device, offset: float) -> None:
        if offset > 0:  # spread the devices over the interval, not all at once
            await self.sleep(offset)
        if PollClass.ONCE in self.classes:
            await self._poll(dev, PollClass.ONCE)
        periodic = [pc for pc in (PollClass.FAST, PollClass.SLOW) if pc in self.classes]
        if not periodic:
            return
        # fixed rate: each class is due at start + k × its interval; a poll that runs late
        # skips the slots it missed instead of bursting to catch up
        due = dict.fromkeys(periodic, self.time())
        while True:
            for pc in periodic:
                if self.time() >= due[pc] - 1e-9:
                    await self._poll(dev, pc)
                    due[pc] += self.intervals[pc]
                    if due[pc] < self.time():
                        due[pc] = self.time() + self.intervals[pc]
            await self.sleep(max(0.0, min(due.values()) - self.time()))

    async def __aenter__(self) -> Poller:
        fast = self.intervals[PollClass.FAST]
        n = max(1, len(self.devices))
        self._tasks = [asyncio.create_task(self._run_device(d, fast * i / n),
                                           name=f"poll.{d.asset_id}")
                       for i, d in enumerate(self.devices)]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await cancel_and_wait(self._tasks)
