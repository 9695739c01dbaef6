"""A shiftable load on the simulated plant: configured, served over Modbus TCP, read and
commanded by the drivers, counted by the meter, back on its own timer when the controller
goes silent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drivers import Device, ModbusConnection, PollClass, load_profile
from sim import SimulatedPlant
from sim.physics import FlexMode
from tests.conftest import ManualClock
from vpp.config import ConfigError, FlexibleLoad, LoadAsset, SiteConfig, load_config
from vpp.simbridge import plant_spec

START_S = datetime(2026, 4, 15, 2, tzinfo=UTC).timestamp()  # 10:00 local



def _with_boilers(cfg: SiteConfig) -> SiteConfig:
    boilers = LoadAsset(id="boilers", kind="load", profile="generic-flex-load", port=0,
                        flexible=FlexibleLoad(max_w=8e6, min_w=1e6, daily_energy_wh=32e6,
                                              deadline_h=23.0, default_start_h=0.0))
    return cfg.model_copy(update={"assets": (
        *(a.model_copy(update={"port": 0}) for a in cfg.assets), boilers)})


async def test_a_flexible_load_is_served_read_and_commanded(demo_config: SiteConfig) -> None:
    clock = ManualClock(START_S)
    spec = plant_spec(_with_boilers(demo_config))
    assert [f.id for f in spec.flex_loads] == ["boilers"] and len(spec.loads) == 1
    async with SimulatedPlant(spec, clock=clock, seed=4) as sim:
        host, port = sim.endpoint_of("boilers")
        conn = ModbusConnection(host=host, port=port, timeout_s=1.0)
        dev = Device(asset_id="boilers", profile=load_profile("generic-flex-load"),
                     connection=conn, unit_id=1, now=lambda: datetime.now(UTC))
        try:
            await dev.poll(PollClass.ONCE)
            await dev.poll(PollClass.FAST)
            # since midnight on its own timer: 4 h at 8 MW is 32 MWh, so by 10:00 it is done
            assert dev.value("status") == FlexMode.DONE
            assert dev.value("served_today_wh") == pytest.approx(32e6, rel=1e-6)
            assert dev.value("max_power_w") == 8e6 and dev.value("deadline_h") == 23.0
            # the next local day, commanded: 6 MW drawn, in the generator convention
            clock.t += 15 * 3600.0  # 01:00 local the next day
            await dev.poll(PollClass.FAST)
            assert dev.value("status") == FlexMode.OWN_TIMER
            assert dev.value("active_power_w") == pytest.approx(-8e6)
            await dev.write("power_setpoint_w", -6e6)
            await dev.write("watchdog", 1)
            clock.t += 60.0
            await dev.poll(PollClass.FAST)
            assert dev.value("status") == FlexMode.SETPOINT
            assert dev.value("active_power_w") == pytest.approx(-6e6)
            assert dev.value("power_setpoint_w") == pytest.approx(-6e6)
            assert sim.plant.power_w["boilers"] == pytest.approx(-6e6)
            # the controller goes silent: after its watchdog timeout, its own timer again
            clock.t += sim.plant.watchdog_timeout_s("boilers") + 5.0
            await dev.poll(PollClass.FAST)
            assert "boilers" in sim.plant.fallbacks
            assert dev.value("status") == FlexMode.OWN_TIMER
            assert dev.value("active_power_w") == pytest.approx(-8e6)
        finally:
            conn.close()
        books = sim.plant.finish()
    # counted from the start: nothing more the first day, then 00:00-01:00 at 8 MW, a minute
    # at 6 MW and the watchdog's 125 s at 6 MW and then 8 MW
    assert 8.1e6 < books.flexible_load_wh < 8.6e6
    assert books.energy_balance_error_ratio() < 1e-9


def test_a_flexible_load_that_cannot_be_served_is_refused_by_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import DEMO_CONFIG
    text = DEMO_CONFIG.read_text(encoding="utf-8") + (
        '\n[[assets]]\nid = "boilers"\nkind = "load"\nprofile = "generic-flex-load"\n'
        'port = 15099\n[assets.flexible]\nmax_w = 1e6\ndaily_energy_wh = 30e6\n')
    bad = tmp_path / "site.toml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "daily_energy_wh 3e+07 cannot be drawn" in str(err.value.problems)
    # a flexible load needs a profile it can be commanded through
    bad.write_text(text.replace("daily_energy_wh = 30e6", "daily_energy_wh = 1e6").replace(
        'profile = "generic-flex-load"', 'profile = "generic-load"'), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert ("profile generic-load of asset boilers lacks what a flexible load needs: "
            "['accepts_power_setpoint']") in str(err.value.problems)
