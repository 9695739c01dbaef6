"""The real-time loop meets an announced cut of the cap early enough for its own delays."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from sim.clock import SimClock
from vpp.config import SiteConfig
from vpp.controller import Controller

T0 = datetime(2026, 4, 15, 4, 0, tzinfo=UTC)


async def test_the_lead_on_a_cut_grows_with_how_late_the_steps_write(
        demo_config: SiteConfig) -> None:
    clock = SimClock(start=T0, speed=60.0)  # a millisecond late is 0.06 simulated s
    ctrl = Controller(demo_config, clock=clock, control_interval_s=6.0)
    try:
        assert ctrl.cut_lead_s() == 12.0  # nothing measured yet: two steps

        async def slow_step() -> None:  # each step writes 4 simulated seconds after it is due
            await clock.sleep(4.0)
        ctrl.control_step = slow_step  # type: ignore[method-assign]
        loop = asyncio.create_task(ctrl._every(6.0, ctrl.control_step))
        await clock.sleep(20.0)
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        # the next step may be the last before the cut, and it writes ~4 s after it is due
        assert 16.0 <= ctrl.cut_lead_s() <= 17.0
    finally:
        await ctrl.close()
