"""Devices that misbehave, over real TCP: health and quality are right, and the healthy
devices keep their poll rate."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from drivers import Device, Health, ModbusConnection, PollClass, Quality, load_profile
from drivers.poller import Poller
from drivers.profile import Profile
from sim.modbus_server import SENTINEL, Fault, FaultKind, ModbusTcpDeviceServer, SimUnit

INTERVAL_S = 0.05
RUN_S = 1.0
TIMEOUT_S = 0.2


def pv_values() -> dict[str, float]:
    return {"active_power_w": 12e6, "available_power_w": 13e6, "energy_export_wh": 5e8,
            "status": 1.0, "rated_power_w": 60e6, "active_power_limit_w": 60e6}


@dataclass
class Rig:
    healthy: Device
    faulty: Device
    faulty_server: ModbusTcpDeviceServer
    faulty_unit: SimUnit
    poller: Poller


@asynccontextmanager
async def rig(now: Callable[[], datetime] = lambda: datetime.now(UTC),
              faulty_profile: Profile | None = None) -> AsyncIterator[Rig]:
    """A healthy and a faulty PV plant, each on its own port, polled every 50 ms."""
    profile = load_profile("generic-pv")
    ok_unit = SimUnit(profile, pv_values, lambda p, v: None)
    bad_unit = SimUnit(faulty_profile or profile, pv_values, lambda p, v: None)
    ok_srv = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={1: ok_unit})
    bad_srv = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={1: bad_unit})
    await ok_srv.start()
    await bad_srv.start()
    conns = [ModbusConnection(host="127.0.0.1", port=s.port, timeout_s=TIMEOUT_S,
                              backoff_max_s=0.2) for s in (ok_srv, bad_srv)]
    healthy = Device(asset_id="ok", profile=profile, connection=conns[0], unit_id=1, now=now)
    faulty = Device(asset_id="bad", profile=profile, connection=conns[1], unit_id=1, now=now)
    poller = Poller([healthy, faulty], fast_interval_s=INTERVAL_S,
                    classes=(PollClass.FAST,))
    try:
        yield Rig(healthy, faulty, bad_srv, bad_unit, poller)
    finally:
        for c in conns:
            c.close()
        await ok_srv.stop()
        await bad_srv.stop()


async def run_for(r: Rig, seconds: float = RUN_S) -> None:
    async with r.poller:
        await asyncio.sleep(seconds)


def assert_healthy_kept_its_rate(r: Rig) -> None:
    polls = r.poller.stats["ok"].polls
    expected = RUN_S / INTERVAL_S
    assert polls >= 0.7 * expected, f"healthy device polled {polls} times, expected ~{expected}"
    assert r.healthy.health is Health.ONLINE
    assert r.healthy.latest["active_power_w"].quality is Quality.GOOD


@pytest.mark.parametrize("kind", [FaultKind.SILENT, FaultKind.CLOSE, FaultKind.EXCEPTION])
async def test_a_dead_device_is_offline_and_missing(kind: FaultKind) -> None:
    async with rig() as r:
        r.faulty_server.faults[1] = Fault(kind)
        await run_for(r)
        assert_healthy_kept_its_rate(r)
        assert r.faulty.health is Health.OFFLINE
        assert all(s.quality is Quality.MISSING and s.value is None
                   for s in r.faulty.latest.values())


async def test_a_slow_device_times_out_and_recovers() -> None:
    async with rig() as r:
        r.faulty_server.faults[1] = Fault(FaultKind.SLOW, delay_s=2 * TIMEOUT_S)
        await run_for(r)
        assert_healthy_kept_its_rate(r)
        assert r.faulty.health is Health.OFFLINE
        del r.faulty_server.faults[1]
        await run_for(r)
        assert r.faulty.health is Health.ONLINE  # reconnected after its backoff
        assert r.faulty.value("active_power_w") == pytest.approx(12e6)


async def test_sentinels_nan_and_out_of_range_are_never_good() -> None:
    async with rig() as r:
        r.faulty_unit.overrides.update({"active_power_w": 2.1e9,  # above valid_max
                                        "available_power_w": SENTINEL,
                                        "status": math.nan})
        await run_for(r, 0.3)
        got = r.faulty.latest
        assert got["active_power_w"].quality is Quality.BAD
        assert got["available_power_w"].quality is Quality.MISSING
        assert got["status"].quality is Quality.MISSING  # NaN on an integer type → sentinel
        assert r.faulty.value("active_power_w") is None
        assert r.faulty.health is Health.ONLINE  # it answers; its values are what is wrong


async def test_frozen_values_turn_stale() -> None:
    t = [datetime(2026, 4, 15, tzinfo=UTC)]
    profile = load_profile("generic-meter")
    assert profile.point("export_w").frozen_after_s is not None
    frozen_s = profile.point("export_w").frozen_after_s
    values = {"export_w": 1.0e6, "frequency_hz": 50.0}
    unit = SimUnit(profile, lambda: values, lambda p, v: None)
    srv = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={1: unit})
    await srv.start()
    conn = ModbusConnection(host="127.0.0.1", port=srv.port)
    dev = Device(asset_id="pcc", profile=profile, connection=conn, unit_id=1, now=lambda: t[0])
    try:
        for _ in range(3):  # a live meter: the value moves
            values["export_w"] += 1234.0
            await dev.poll()
            t[0] += timedelta(seconds=frozen_s)
        assert dev.latest["export_w"].quality is Quality.GOOD
        srv.faults[1] = Fault(FaultKind.FROZEN)  # the meter keeps sending its last reply
        for _ in range(3):
            values["export_w"] += 1234.0
            await dev.poll()
            t[0] += timedelta(seconds=frozen_s / 2 + 1)
        assert dev.latest["export_w"].quality is Quality.STALE
        assert dev.value("export_w") is None
        del srv.faults[1]
        await dev.poll()
        assert dev.latest["export_w"].quality is Quality.GOOD
    finally:
        conn.close()
        await srv.stop()


async def test_an_unsupported_point_does_not_kill_the_device() -> None:
    full = load_profile("generic-pv")
    without_status = full.model_copy(update={
        "points": tuple(p for p in full.points if p.name != "status")})
    async with rig(faulty_profile=without_status) as r:
        await run_for(r, 0.3)
        assert r.faulty.unsupported == {"status"}
        assert r.faulty.health is Health.ONLINE
        assert r.faulty.latest["status"].quality is Quality.MISSING
        assert r.faulty.value("active_power_w") == pytest.approx(12e6)
        assert_healthy_rate = r.poller.stats["ok"].polls
        assert assert_healthy_rate > 0


async def test_a_gateway_with_one_dead_unit_among_live_ones() -> None:
    profile = load_profile("generic-pv")
    units = {u: SimUnit(profile, pv_values, lambda p, v: None) for u in (1, 2, 3)}
    srv = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units=units)
    await srv.start()
    conn = ModbusConnection(host="127.0.0.1", port=srv.port, timeout_s=TIMEOUT_S)
    devs = [Device(asset_id=f"u{u}", profile=profile, connection=conn, unit_id=u,
                   now=lambda: datetime.now(UTC)) for u in (1, 2, 3, 9)]  # 9: not there
    poller = Poller(devs, fast_interval_s=INTERVAL_S, classes=(PollClass.FAST,))
    try:
        async with poller:
            await asyncio.sleep(RUN_S)
        for d in devs[:3]:
            assert d.health is Health.ONLINE
            assert poller.stats[d.asset_id].polls >= 0.7 * RUN_S / INTERVAL_S
        assert devs[3].health is Health.OFFLINE
        assert devs[3].value("active_power_w") is None
    finally:
        conn.close()
        await srv.stop()
