"""The polling engine: every device polled on its own schedule, in its own task.

A device that hangs, answers slowly or drops its connection delays only its own task; the
others keep their poll rate. (Devices behind one gateway share its connection, and so its
serialised request queue: a gateway that answers a dead unit id with an exception keeps
the others going; one that never answers delays them by the request timeout.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

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


class Poller:
    """Polls devices: fast and slow classes at their intervals, ``once`` at the start.

    ``sleep`` is the clock's sleep in its own seconds (simulated or real). Use as an async
    context manager; ``stats`` keeps the poll count and durations per device.
    """

    def __init__(self, devices: list[Device], *, fast_interval_s: float = 1.0,
                 slow_interval_s: float = 60.0, classes: tuple[PollClass, ...] = (
                     PollClass.ONCE, PollClass.FAST, PollClass.SLOW),
                 sleep: Callable[[float], Awaitable[None]] = _wall_sleep,
                 keep_durations: int = 1000) -> None:
        self.devices = devices
        self.intervals = {PollClass.FAST: fast_interval_s, PollClass.SLOW: slow_interval_s}
        self.classes = classes
        self.sleep = sleep
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

    async def _run_device(self, dev: Device) -> None:
        if PollClass.ONCE in self.classes:
            await self._poll(dev, PollClass.ONCE)
        periodic = [pc for pc in (PollClass.FAST, PollClass.SLOW) if pc in self.classes]
        if not periodic:
            return
        base = min(self.intervals[pc] for pc in periodic)
        elapsed = {pc: self.intervals[pc] for pc in periodic}  # due at once
        while True:
            for pc in periodic:
                if elapsed[pc] >= self.intervals[pc] - 1e-9:
                    elapsed[pc] = 0.0
                    await self._poll(dev, pc)
            await self.sleep(base)
            for pc in periodic:
                elapsed[pc] += base

    async def __aenter__(self) -> Poller:
        self._tasks = [asyncio.create_task(self._run_device(d), name=f"poll.{d.asset_id}")
                       for d in self.devices]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
