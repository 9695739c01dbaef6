"""The simulated plant's battery as a SunSpec storage system (models 1, 701, 702, 713, 704):
read and controlled by pysunspec2 as an independent peer, and by the drivers through the
house names, over real Modbus TCP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from drivers import Device, ModbusConnection, PollClass, capabilities
from drivers.sunspec import build_profile, discover, standard_values
from sim import SimulatedPlant
from tests.conftest import ManualClock
from vpp.config import REQUIRED_CAPABILITIES, SiteConfig
from vpp.simbridge import plant_spec

START_S = datetime(2026, 4, 15, 4, tzinfo=UTC).timestamp()  # noon local



def _sunspec_bess(cfg: SiteConfig) -> SiteConfig:
    return cfg.model_copy(update={"assets": tuple(
        a.model_copy(update={"port": 0, **({"profile": "sunspec"} if a.id == "bess1" else {})})
        for a in cfg.assets)})


def _peer(port: int, write: dict[str, float] | None = None) -> dict[int, dict[str, Any]]:
    """pysunspec2's blocking client: optionally write 704 points (in the order given), then
    scan and read every fixed-group point's computed value."""
    d = SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        d.scan()
        for name, value in (write or {}).items():
            m = d.models[704][0]
            m.points[name].cvalue = value
            m.write()
        d.scan()
        return {mid: {n: p.cvalue for n, p in inst[0].points.items()}
                for mid, inst in d.models.items() if isinstance(mid, int)}
    finally:
        d.disconnect()
        d.close()


async def test_pysunspec2_reads_and_commands_the_simulated_battery(
        demo_config: SiteConfig) -> None:
    clock = ManualClock(START_S)
    async with SimulatedPlant(plant_spec(_sunspec_bess(demo_config)), clock=clock,
                              seed=3) as sim:
        spec = sim.spec.batteries[0]
        _, port = sim.endpoint_of("bess1")
        peer = await asyncio.to_thread(_peer, port)
        assert sorted(peer) == [1, 701, 702, 704, 713]
        assert peer[1]["Md"] == "Simulated BESS" and peer[1]["SN"] == "bess1"
        assert peer[713]["SoC"] == pytest.approx(100 * sim.plant.battery["bess1"].soc, abs=0.01)
        assert peer[713]["WHRtg"] == pytest.approx(spec.capacity_wh, rel=1e-4)
        assert peer[702]["WChaRteMaxRtg"] == pytest.approx(spec.max_charge_w, rel=1e-4)
        assert peer[702]["WDisChaRteMaxRtg"] == pytest.approx(spec.max_discharge_w, rel=1e-4)
        assert peer[701]["W"] == 0 and peer[701]["InvSt"] == 3  # RUNNING, idle
        assert peer[713]["Sta"] == 0

        # charge at 4 MW, the SunSpec way: watts mode, setpoint, enable
        peer = await asyncio.to_thread(_peer, port, {"WSetMod": 1, "WSet": -4.0e6,
                                                     "WSetEna": 1})
        assert sim.plant.setpoint_enabled["bess1"]
        assert sim.plant.battery_setpoint_w["bess1"] == -4.0e6
        assert peer[704]["WSet"] == -4.0e6 and peer[704]["WSetEna"] == 1
        clock.t += 10.0
        peer = await asyncio.to_thread(_peer, port)
        assert peer[701]["W"] == pytest.approx(-4.0e6, abs=1e4)  # 701 W_SF: 10 kW steps
        assert peer[701]["TotWhAbs"] > 0

        sim.plant.trip("bess1")
        clock.t += 1.0
        peer = await asyncio.to_thread(_peer, port)
        assert peer[701]["InvSt"] == 6 and peer[713]["Sta"] == 2 and peer[701]["W"] == 0


async def test_the_drivers_discover_and_command_it_with_a_reverting_setpoint(
        demo_config: SiteConfig) -> None:
    clock = ManualClock(START_S)
    async with SimulatedPlant(plant_spec(_sunspec_bess(demo_config)), clock=clock,
                              seed=3) as sim:
        host, port = sim.endpoint_of("bess1")
        conn = ModbusConnection(host=host, port=port, timeout_s=1.0)
        try:
            profile = build_profile(await discover(conn, 1), kind="battery")
            assert REQUIRED_CAPABILITIES["battery"] <= profile.capabilities
            dev = Device(asset_id="bess1", profile=profile, connection=conn, unit_id=1,
                         now=lambda: datetime.now(UTC))
            await dev.poll(PollClass.ONCE)
            house = standard_values(await dev.poll(PollClass.FAST))
            assert house["soc"] == pytest.approx(sim.plant.battery["bess1"].soc, abs=1e-4)
            assert house["capacity_wh"] == pytest.approx(sim.spec.batteries[0].capacity_wh,
                                                         rel=1e-4)
            await capabilities.make_setpoints_safe(dev)
            assert sim.plant.revert_to_w["bess1"] == 0.0  # a lapsed setpoint idles
            res = await capabilities.set_battery_power_w(dev, 3.0e6, revert_s=60.0)
            assert res.point == "power_setpoint_w" and res.written == 3.0e6
            assert sim.plant.battery_setpoint_w["bess1"] == 3.0e6
            clock.t += 30.0
            await dev.poll(PollClass.FAST)
            assert dev.value("power_setpoint_w") == 3.0e6
            assert dev.value("active_power_w") == pytest.approx(3.0e6, abs=1e4)
            assert not capabilities.in_fault(dev)
            clock.t += 32.0  # not refreshed within its reversion timer: it lapses to 0 W
            await dev.poll(PollClass.FAST)
            assert "bess1" in sim.plant.reverts
            assert sim.plant.battery_setpoint_w["bess1"] == 0.0
            # a controller coming back writes the timer first: the lapsed 3 MW stays lapsed
            await dev.poll(PollClass.FAST)
            await dev.write(profile.aliases["power_setpoint_revert_s"].point, 60.0)
            assert sim.plant.battery_setpoint_w["bess1"] == 0.0
            sim.plant.trip("bess1")
            await dev.poll(PollClass.FAST)
            assert capabilities.in_fault(dev)  # 701 InvSt FAULT
        finally:
            conn.close()
