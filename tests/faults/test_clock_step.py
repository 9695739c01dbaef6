"""The controller's clock stepped back and forward an hour mid-run (NTP, an operator, a bad
RTC): control goes on at once, and the cap holds on the simulator's meter."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.test_chain import midday
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions

pytestmark = pytest.mark.e2e


async def _steps_go_on(demo: Demo, wall_s: float = 2.0) -> int:
    before = demo.controller.state.control_steps
    await asyncio.sleep(wall_s)
    return int(demo.controller.state.control_steps - before)


@pytest.mark.parametrize("step_s", [-3600.0, 3600.0], ids=["back", "forward"])
async def test_a_clock_step_does_not_stop_control(demo_config: SiteConfig,
                                                  step_s: float) -> None:
    demo = Demo(midday(demo_config), DemoOptions(speed=60.0, ephemeral_ports=True,
                                                 stepped_clock=True))
    async with demo:
        ctrl = demo.controller
        for _ in range(300):
            if ctrl.state.schedule is not None:
                break
            await asyncio.sleep(0.1)
        steady = await _steps_go_on(demo)
        demo.controller_clock.step(step_s)
        after = await _steps_go_on(demo)
        again = await _steps_go_on(demo)
    assert steady > 5
    # an hour back would be an hour (a minute of wall time here) without a control step
    assert after >= steady // 2, (steady, after)
    assert again >= steady // 2, (steady, again)
    assert demo.report()["cap_violation_s"] == 0
