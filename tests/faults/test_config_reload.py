"""A configuration reloaded mid-run: a file with an error changes nothing (alarm raised,
the cap and the controller as they were); a good one applies what can change live and
clears the alarm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import DEMO_CONFIG
from tests.e2e.test_chain import midday
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions

pytestmark = pytest.mark.e2e


async def test_a_bad_reload_changes_nothing_and_a_good_one_applies(
        demo_config: SiteConfig, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    good = DEMO_CONFIG.read_text(encoding="utf-8")
    assert "export_cap_w = 35_000_000" in good
    demo = Demo(midday(demo_config), DemoOptions(speed=60.0, ephemeral_ports=True))
    async with demo:
        svc, ctrl = demo.services, demo.controller
        await asyncio.sleep(2.0)
        steps = ctrl.state.control_steps
        site.write_text(good.replace("export_cap_w = 35_000_000", "export_cap_w = -5")
                        .replace("[site]", "[site]\nbogus = 1"), encoding="utf-8")
        assert not await svc.reload(site)
        [alarm] = [a for a in ctrl.alarms.listed() if a.key == "config_reload_failed"]
        assert alarm.active
        assert "pcc.export_cap_w" in alarm.message and "site.bogus" in alarm.message
        assert ctrl.config.pcc.export_cap_w == 35e6  # nothing changed
        assert ctrl.export_cap_at(ctrl.clock.now()) == 35e6
        site.write_text("this is [not toml", encoding="utf-8")
        assert not await svc.reload(site)
        await asyncio.sleep(1.0)
        assert ctrl.state.control_steps > steps  # control never stopped
        site.write_text(good.replace("export_cap_w = 35_000_000", "export_cap_w = 30_000_000")
                        .replace('id = "demo-county"', f'id = "{ctrl.config.site.id}"')
                        .replace("telemetry_interval_s = 60", "telemetry_interval_s = 30"),
                        encoding="utf-8")
        assert await svc.reload(site)
        assert ctrl.config.pcc.export_cap_w == 30e6
        assert ctrl.export_cap_at(ctrl.clock.now()) == 30e6
        assert ctrl.config.storage.telemetry_interval_s == 60  # needs a restart: kept
        assert "config_reload_failed" not in ctrl.alarms.active_keys()
        await asyncio.sleep(3.0)  # three simulated minutes under the new cap
    rep = demo.report()
    assert rep["cap_violation_s"] == 0, rep
