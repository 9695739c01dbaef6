"""The fault injector on a served plant, seen through the drivers over real TCP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from drivers import Device, DeviceError, ModbusConnection, PollClass, Quality, capabilities
from drivers import load_profile as profile_of
from sim import SimClock, SimulatedPlant
from sim.inject import FaultInjector
from sim.scenario import Fault, FaultAction, FaultType, Scenario
from vpp.config import SiteConfig
from vpp.simbridge import plant_spec

START = datetime(2026, 4, 15, 4, tzinfo=UTC)  # noon local


def _scenario(*faults: Fault) -> Scenario:
    return Scenario(name="t", start=START, duration_h=1, faults=faults)


def _ephemeral(cfg: SiteConfig) -> SiteConfig:
    return cfg.model_copy(update={"assets": tuple(a.model_copy(update={"port": 0})
                                                  for a in cfg.assets)})


async def _device(sim: SimulatedPlant, cfg: SiteConfig, asset_id: str) -> Device:
    host, port = sim.endpoint_of(asset_id)
    a = cfg.asset(asset_id)
    conn = ModbusConnection(host=host, port=port, timeout_s=0.2, backoff_max_s=0.05)
    return Device(asset_id=asset_id, profile=profile_of(a.profile), connection=conn,
                  unit_id=a.unit_id, now=lambda: datetime.now(UTC))


async def test_faults_start_and_end_as_the_drivers_see_them(demo_config: SiteConfig) -> None:
    cfg = _ephemeral(demo_config)
    faults = (Fault(at_h=0.1, device="pcc", kind=FaultType.OFFLINE),
              Fault(at_h=0.1, device="wf1", kind=FaultType.GARBAGE, point="active_power_w",
                    value=2.0e9),
              Fault(at_h=0.1, device="bess1", kind=FaultType.TRIP),
              Fault(at_h=0.1, device="pv1", kind=FaultType.EXCEPTION, code=6))
    clock = SimClock(start=START, speed=1.0)
    async with SimulatedPlant(plant_spec(cfg), clock=clock, seed=2) as sim:
        inj = FaultInjector(sim, _scenario(*faults))
        devs = {a: await _device(sim, cfg, a) for a in ("pcc", "wf1", "bess1", "pv1")}
        try:
            for d in devs.values():
                await d.poll(PollClass.ONCE)
                await d.poll(PollClass.FAST)
            assert devs["pcc"].value("export_w") is not None
            assert not capabilities.in_fault(devs["bess1"])
            ids = [inj.start(f) for f in faults]
            assert sorted(inj.active) == ids
            for d in devs.values():
                await d.poll(PollClass.FAST)
            assert devs["pcc"].latest["export_w"].quality is Quality.MISSING  # silent
            assert devs["pcc"].health.value == "offline"
            assert devs["wf1"].value("active_power_w") == pytest.approx(2.0e9)  # the lie
            assert capabilities.in_fault(devs["bess1"])
            assert devs["pv1"].health.value == "offline"  # every request refused
            with pytest.raises(DeviceError, match="exception 6"):
                await devs["pv1"].connection.read(profile_of("generic-pv").points[0].table,
                                                  0, 2, 1)
            for fid in ids:
                inj.end(fid)
            assert not inj.active
            await asyncio.sleep(0.1)  # the meter's connection backs off, then reconnects
            for _ in range(20):
                await devs["pcc"].poll(PollClass.FAST)
                if devs["pcc"].value("export_w") is not None:
                    break
                await asyncio.sleep(0.05)
            for d in devs.values():
                await d.poll(PollClass.FAST)
            assert devs["pcc"].value("export_w") is not None
            assert devs["wf1"].value("active_power_w") < 40e6
            assert not capabilities.in_fault(devs["bess1"])
            assert devs["pv1"].health.value == "online"
            assert [(e.device, e.action) for e in inj.events] == [
                ("pcc", "start"), ("wf1", "start"), ("bess1", "start"), ("pv1", "start"),
                ("pcc", "end"), ("wf1", "end"), ("bess1", "end"), ("pv1", "end")]
        finally:
            for d in devs.values():
                d.connection.close()


def test_a_fault_on_a_device_the_plant_lacks_is_refused(demo_config: SiteConfig) -> None:
    clock = SimClock(start=START, speed=1.0)
    sim = SimulatedPlant(plant_spec(_ephemeral(demo_config)), clock=clock, seed=2)
    with pytest.raises(ValueError, match="'pv9', which the plant does not have"):
        FaultInjector(sim, _scenario(Fault(at_h=0.1, device="pv9", kind=FaultType.OFFLINE)))
    with pytest.raises(ValueError, match="only a battery can suffer 'trip', not 'pv1'"):
        FaultInjector(sim, _scenario(Fault(at_h=0.1, device="pv1", kind=FaultType.TRIP)))
    with pytest.raises(ValueError, match="only a battery can suffer 'cooling', not 'wf1'"):
        FaultInjector(sim, _scenario(Fault(at_h=0.1, device="wf1", kind=FaultType.COOLING)))
    sim = SimulatedPlant(plant_spec(_ephemeral(demo_config)), clock=clock, seed=2)
    inj = FaultInjector(sim)
    with pytest.raises(ValueError, match="pv1 has no point 'volts'"):
        inj.start(FaultAction(device="pv1", kind=FaultType.GARBAGE, point="volts"))
    assert not inj.active and not inj.events  # nothing half-done


async def test_a_fault_injected_at_run_time_ends_after_its_duration(
        demo_config: SiteConfig) -> None:
    cfg = _ephemeral(demo_config)
    clock = SimClock(start=START, speed=100.0)
    async with SimulatedPlant(plant_spec(cfg), clock=clock, seed=2) as sim:
        async with FaultInjector(sim) as inj:
            fid = inj.inject(FaultAction(device="bess1", kind=FaultType.TRIP, duration_s=20))
            assert "bess1" in sim.plant.tripped
            assert inj.active[fid].until_s == pytest.approx(inj.active[fid].since_s + 20)
            await asyncio.sleep(0.3)  # 30 simulated seconds
            assert fid not in inj.active and "bess1" not in sim.plant.tripped
            keep = inj.inject(FaultAction(device="pcc", kind=FaultType.OFFLINE))
            assert sim.server_of("pcc").faults
        assert keep not in inj.active and not sim.server_of("pcc").faults  # ended on exit
        assert [(e.fault_id, e.action) for e in inj.events] == [
            (fid, "start"), (fid, "end"), (keep, "start"), (keep, "end")]


async def test_a_held_clock_holds_the_faults_timeline(demo_config: SiteConfig) -> None:
    """Faults begin and end at their simulated times, however long the clock stands still
    (the demo's clock is held while its event loop stalls): a scenario's fault waited out
    in wall time began ten simulated minutes early in a paced run."""
    cfg = _ephemeral(demo_config)
    clock = SimClock(start=START, speed=100.0)
    scenario = _scenario(Fault(at_h=10 / 3600, duration_s=10, device="bess1",
                               kind=FaultType.TRIP))
    clock.hold()
    async with SimulatedPlant(plant_spec(cfg), clock=clock, seed=2) as sim, \
            FaultInjector(sim, scenario) as inj:
        await asyncio.sleep(0.2)  # 20 simulated s, had it run
        assert not inj.events
        clock.release()
        while len(inj.events) < 2:  # noqa: ASYNC110 (watching from outside)
            await asyncio.sleep(0.01)
    start, end = inj.events
    assert start.t_s >= START.timestamp() + 10.0 and end.t_s >= START.timestamp() + 20.0


async def test_overlapping_faults_in_one_place_hand_it_back_to_the_one_still_in_force(
        demo_config: SiteConfig) -> None:
    from sim.modbus_server import FaultKind

    cfg = _ephemeral(demo_config)
    clock = SimClock(start=START, speed=1.0)
    sim = SimulatedPlant(plant_spec(cfg), clock=clock, seed=2)
    async with sim, FaultInjector(sim) as inj:
        srv = sim.server_of("pv1")
        silent = inj.start(FaultAction(device="pv1", kind=FaultType.OFFLINE))
        slow = inj.start(FaultAction(device="pv1", kind=FaultType.SLOW, delay_s=3))
        assert srv.faults[1].kind is FaultKind.SLOW  # the newest acts
        inj.end(slow)
        assert srv.faults[1].kind is FaultKind.SILENT  # the older one is still in force
        inj.end(silent)
        assert not srv.faults
        unit = srv.units[1]
        a = inj.start(FaultAction(device="pv1", kind=FaultType.GARBAGE,
                                  point="active_power_w", value=1e9))
        b = inj.start(FaultAction(device="pv1", kind=FaultType.GARBAGE,
                                  point="active_power_w", value=-5.0))
        inj.end(b)
        assert unit.overrides == {"active_power_w": 1e9}
        inj.end(a)
        assert unit.overrides == {}
