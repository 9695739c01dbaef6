"""The controller's loops: a cut of the cap met early enough for the loop's own delays; the
heartbeat withheld, with a warning, when control steps stop succeeding."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import pytest

from sim.clock import SimClock
from tests.conftest import ManualClock
from vpp.config import SiteConfig
from vpp.controller import Controller

T0 = datetime(2026, 4, 15, 4, 0, tzinfo=UTC)


async def _control_loop(ctrl: Controller, clock: SimClock, step_s: float,
                        for_s: float) -> None:
    """The controller's control loop for ``for_s`` simulated seconds, each step taking
    ``step_s`` (its writes that late after it is due)."""
    async def step() -> None:
        await clock.sleep(step_s)
    ctrl.control_step = step  # type: ignore[method-assign]
    loop = asyncio.create_task(ctrl._every(6.0, ctrl.control_step))
    await clock.sleep(for_s)
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


async def test_the_lead_on_a_cut_grows_with_how_late_the_steps_write(
        demo_config: SiteConfig) -> None:
    clock = SimClock(start=T0, speed=60.0)  # a millisecond late is 0.06 simulated s
    ctrl = Controller(demo_config, clock=clock, control_interval_s=6.0)
    try:
        assert ctrl.cut_lead_s() == 12.0  # nothing measured yet: two steps
        await _control_loop(ctrl, clock, 4.0, 20.0)
        # the next step may be the last before the cut, and it writes ~4 s after it is due
        assert 16.0 <= ctrl.cut_lead_s() <= 17.0
        await _control_loop(ctrl, clock, 60.0, 70.0)  # a stall, or the clock stepped
        assert ctrl.cut_lead_s() == 18.0  # counted as a step late at most
    finally:
        await ctrl.close()


async def test_the_heartbeat_waits_for_the_first_step_and_warns_when_steps_stop(
        demo_config: SiteConfig, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(T0.timestamp())
    ctrl = Controller(demo_config, clock=clock, control_interval_s=6.0)
    caplog.set_level(logging.WARNING, logger="vpp.controller")
    try:
        await ctrl.heartbeat_step()  # starting: no step yet, no beat, and no fault either
        clock.t = T0.timestamp() + 30
        await ctrl.heartbeat_step()
        assert not caplog.records
        clock.t = T0.timestamp() + 61  # still none after the time for one: withheld
        await ctrl.heartbeat_step()
        await ctrl.heartbeat_step()
        assert [r.getMessage() for r in caplog.records] == [
            "no control step succeeded lately: heartbeat withheld"]
        caplog.clear()
        ctrl.state.last_step_at = clock.now() - timedelta(seconds=61)  # a step, long ago
        await ctrl.heartbeat_step()
        assert not caplog.records  # withheld still, and said once
    finally:
        await ctrl.close()
