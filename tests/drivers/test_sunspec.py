"""SunSpec: simulated devices served over loopback TCP, discovered and read by the drivers,
and read by pysunspec2's own client as an independent peer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from drivers import Device, DeviceError, Health, ModbusConnection, PollClass, Quality, Sample
from drivers.profile import Access, Point, Profile, Table
from drivers.registers import TYPE_TABLE, RegisterType
from drivers.sunspec import (
    STANDARD_NAMES,
    ModelBlock,
    build_profile,
    discover,
    model_def,
    point_name,
    read_strings,
    standard_values,
)
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit
from sim.sunspec import SunSpecSimUnit

PV_MODELS = (1, 103, 120, 121, 123, 160)
BATTERY_MODELS = (1, 701, 702, 704, 124, 802)  # 704 has fixed nested groups too
PV_TEXT = {"m1_mn": "County Sim", "m1_md": "PV-3P-100", "m1_vr": "1.2.3", "m1_sn": "SIM-0001"}
BATTERY_TEXT = {"m1_mn": "County Sim", "m1_md": "BESS-500", "m1_sn": "SIM-0002"}
# values a reader can check at a glance; the rest are drawn at random
PV_FIXED = {"m103_w": 12340.0, "m103_w_sf": 1.0, "m103_hz": 50.02, "m103_hz_sf": -2.0,
            "m120_wrtg": 15000.0, "m123_wmaxlimpct": 80.5, "m123_wmaxlimpct_sf": -1.0}
BATTERY_FIXED = {"m701_w": -2500.0, "m701_w_sf": 0.0, "m802_soc": 56.7, "m802_soc_sf": -1.0,
                 "m124_chastate": 56.0, "m124_chastate_sf": 0.0}
# points left unimplemented on purpose; m120_wrtg_sf is unset too, so it is served as 0
PV_UNSET = {"m103_dcw", "m103_evt2", "m121_vref", "m120_wrtg_sf"}
BATTERY_UNSET = {"m802_soh", "m701_totvarhinj", "m124_storaval"}


def _draw(p: Point, exponent: int, rng: random.Random) -> float:
    """An engineering value the point carries exactly: a raw value that is no sentinel."""
    if p.type is RegisterType.F32:
        return rng.uniform(-1e4, 1e4)
    info = TYPE_TABLE[p.type]
    lo = 1 if p.invalid == (0,) else int(info.min_value) + 1
    hi = int(min(info.max_value - 1, 2**40))
    return rng.randint(lo, hi) * p.gain(exponent)


def _values(profile: Profile, fixed: dict[str, float], unset: set[str],
            seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    scale_factors = {p.scale_register for p in profile.points if p.scale_register}
    values = {name: float(rng.randint(-3, 2)) for name in scale_factors - unset}
    values.update(fixed)
    for p in profile.points:
        if p.name in values or p.name in unset or p.type is RegisterType.STRING:
            continue
        if rng.random() < 0.15:
            continue  # unimplemented
        sf = 0 if p.scale_register is None else round(values.get(p.scale_register, 0))
        values[p.name] = _draw(p, sf, rng)
    return values


@dataclass
class SimDevice:
    models: tuple[int, ...]
    kind: str
    values: dict[str, float]
    text: dict[str, str]
    writes: list[tuple[str, float]] = field(default_factory=list)

    def on_write(self, point: str, value: float) -> None:
        self.writes.append((point, value))
        self.values[point] = value

    def unit(self) -> SunSpecSimUnit:
        return SunSpecSimUnit(self.models, lambda: self.values, self.on_write, text=self.text,
                              kind=self.kind)


def _device(kind: str) -> SimDevice:
    models = PV_MODELS if kind == "pv" else BATTERY_MODELS
    profile = SunSpecSimUnit(models, dict, lambda p, v: None, kind=kind).profile
    if kind == "pv":
        values = _values(profile, PV_FIXED, PV_UNSET, seed=103)
        return SimDevice(models, kind, values, PV_TEXT)
    values = _values(profile, BATTERY_FIXED, BATTERY_UNSET, seed=802)
    return SimDevice(models, kind, values, BATTERY_TEXT)


@dataclass
class Served:
    devices: dict[int, SimDevice]  # by unit id
    server: ModbusTcpDeviceServer
    conn: ModbusConnection


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A PV inverter (unit 1) and a battery (unit 2) behind one port."""
    devices = {1: _device("pv"), 2: _device("battery")}
    units: dict[int, SimUnit] = {uid: d.unit() for uid, d in devices.items()}
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units=units)
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port, timeout_s=1.0)
    try:
        yield Served(devices, server, conn)
    finally:
        conn.close()
        await server.stop()


def _now() -> datetime:
    return datetime.now(UTC)


async def _poll_all(dev: Device) -> dict[str, Sample]:
    got: dict[str, Sample] = {}
    for pc in (PollClass.ONCE, PollClass.SLOW, PollClass.FAST):
        got.update(await dev.poll(pc))
    return got


# -- definitions and profile (no device) ---------------------------------------------------

def test_model_definitions_give_the_fixed_group() -> None:
    assert model_def(1).length == 66
    assert model_def(103).length == 50
    w = model_def(103).point("W")
    assert (w.type, w.sf, w.units) == ("int16", "W_SF", "W")
    assert model_def(103) is model_def(103)  # cached
    with pytest.raises(KeyError, match="model 9999"):
        model_def(9999)
    for model_id, point in STANDARD_NAMES:
        model_def(model_id).point(point)  # every standard name points at a real point


def test_build_profile_maps_types_scale_factors_and_access() -> None:
    profile = build_profile([ModelBlock(1, 40004, 66), ModelBlock(103, 40072, 50),
                             ModelBlock(121, 40124, 30), ModelBlock(123, 40156, 24),
                             ModelBlock(305, 40182, 36)], kind="pv")
    p = {pt.name: pt for pt in profile.points}
    assert p["m1_mn"].type is RegisterType.STRING and p["m1_mn"].length == 16
    assert p["m1_mn"].address == 40004 and p["m1_mn"].poll is PollClass.ONCE
    assert "m1_pad" not in p and "m1_id" not in p
    assert p["m103_w"].type is RegisterType.I16 and p["m103_w"].scale_register == "m103_w_sf"
    assert p["m103_w_sf"].type is RegisterType.I16 and p["m103_w"].poll is PollClass.FAST
    assert p["m103_wh"].type is RegisterType.U32 and p["m103_wh"].invalid == (0,)  # acc32
    assert p["m103_st"].type is RegisterType.U16 and p["m103_evt1"].type is RegisterType.BITFIELD32
    assert p["m103_w"].unit == "W" and p["m103_w"].access is Access.READ
    assert p["m121_wmax"].access is Access.READ_WRITE and p["m121_wmax"].poll is PollClass.ONCE
    assert p["m123_wmaxlimpct"].access is Access.READ_WRITE
    assert p["m123_wmaxlimpct"].scale_register == "m123_wmaxlimpct_sf"
    assert p["m305_lat"].scale == pytest.approx(1e-7) and p["m305_lat"].scale_register is None
    assert all(pt.table is Table.HOLDING for pt in profile.points)


def test_build_profile_respects_the_declared_length_and_skips_unknown_models(
        caplog: pytest.LogCaptureFixture) -> None:
    # an older, shorter model 103 (12 registers): only the points that fit
    with caplog.at_level(logging.WARNING):
        profile = build_profile([ModelBlock(103, 100, 12), ModelBlock(64999, 114, 3),
                                 ModelBlock(103, 119, 50)], kind="pv")
    names = {pt.name for pt in profile.points}
    first = {n for n in names if n.startswith("m103_") and not n.startswith("m103_2_")}
    assert max(pt.address + pt.registers for pt in profile.points if pt.name in first) <= 112
    assert "m103_a" in first and "m103_w" not in first  # W is at offset 12
    assert "m103_2_w" in names and profile.point("m103_2_w").scale_register == "m103_2_w_sf"
    assert "64999" in caplog.text


# -- over TCP --------------------------------------------------------------------------------

async def test_discover_finds_the_models(served: Served) -> None:
    for uid, sim in served.devices.items():
        blocks = await discover(served.conn, uid)
        assert [b.model_id for b in blocks] == list(sim.models)
        assert blocks[0].address == 40004 and blocks[0].length == 66
        for a, b in itertools.pairwise(blocks):
            assert b.address == a.address + a.length + 2


@pytest.mark.parametrize("uid", [1, 2])
async def test_every_point_reads_back(served: Served, uid: int) -> None:
    sim = served.devices[uid]
    profile = build_profile(await discover(served.conn, uid), kind=sim.kind)
    dev = Device(asset_id=sim.kind, profile=profile, connection=served.conn, unit_id=uid,
                 now=_now)
    got = await _poll_all(dev)
    assert dev.health is Health.ONLINE
    assert set(got) == {p.name for p in profile.points}
    implemented = missing = 0
    for p in profile.points:
        s = got[p.name]
        if p.type is RegisterType.STRING:
            assert s.quality is Quality.MISSING  # text is read with read_strings
            continue
        if p.name in sim.values:
            implemented += 1
            assert s.quality is Quality.GOOD, (p.name, s)
            assert s.value == pytest.approx(sim.values[p.name], rel=1e-6), p.name
            assert s.unit == p.unit
        elif any(q.scale_register == p.name and q.name in sim.values
                 for q in profile.points):
            assert s.value == 0.0 and s.quality is Quality.GOOD  # scale factor served as 0
        else:
            missing += 1
            assert s.quality is Quality.MISSING and s.value is None, (p.name, s)
    assert implemented > 50 and missing > 5
    assert await read_strings(served.conn, uid, profile) == sim.text


async def test_standard_values_in_si_units(served: Served) -> None:
    pv = build_profile(await discover(served.conn, 1), kind="pv")
    bat = build_profile(await discover(served.conn, 2), kind="battery")
    pv_dev = Device(asset_id="pv", profile=pv, connection=served.conn, unit_id=1, now=_now)
    bat_dev = Device(asset_id="bat", profile=bat, connection=served.conn, unit_id=2, now=_now)
    pv_std = standard_values(await _poll_all(pv_dev))
    bat_std = standard_values(await _poll_all(bat_dev))
    assert pv_std["active_power_w"] == pytest.approx(12340.0)
    assert pv_std["frequency_hz"] == pytest.approx(50.02)
    assert pv_std["rated_power_w"] == pytest.approx(15000.0)  # WRtg_SF unset: served as 0
    assert bat_std["active_power_w"] == pytest.approx(-2500.0)  # 701: - absorbing (charging)
    assert bat_std["soc"] == pytest.approx(0.567)  # 802 SoC wins over 124 ChaState (56 %)
    assert "soc" not in pv_std


def _peer_read(port: int, uid: int) -> dict[int, dict[str, Any]]:
    """pysunspec2's blocking client: scan, then every fixed-group point's computed value."""
    d = SunSpecModbusClientDeviceTCP(slave_id=uid, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        d.scan()
        out: dict[int, dict[str, Any]] = {}
        for model_id, instances in d.models.items():
            if isinstance(model_id, int):
                model = instances[0]
                assert not model.error_info, model.error_info
                out[model_id] = {name: pt.cvalue for name, pt in model.points.items()}
        return out
    finally:
        d.disconnect()
        d.close()


def _peer_write(port: int, uid: int, model_id: int, point: str, value: float) -> None:
    d = SunSpecModbusClientDeviceTCP(slave_id=uid, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        d.scan()
        model = d.models[model_id][0]
        model.points[point].cvalue = value
        model.write()  # sends only the changed point
    finally:
        d.disconnect()
        d.close()


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@pytest.mark.parametrize("uid", [1, 2])
async def test_pysunspec2_reads_what_the_drivers_read(served: Served, uid: int) -> None:
    sim = served.devices[uid]
    blocks = await discover(served.conn, uid)
    profile = build_profile(blocks, kind=sim.kind)
    dev = Device(asset_id=sim.kind, profile=profile, connection=served.conn, unit_id=uid,
                 now=_now)
    ours = await _poll_all(dev)
    text = await read_strings(served.conn, uid, profile)
    peer = await _in_thread(_peer_read, served.server.port, uid)
    assert sorted(peer) == sorted(sim.models)
    compared = 0
    for model_id in sim.models:
        for name, theirs in peer[model_id].items():
            mine = point_name(model_id, name)
            if mine not in ours:
                assert name in ("ID", "L", "Pad"), name
                continue
            if profile.point(mine).type is RegisterType.STRING:
                assert theirs == text.get(mine), mine
            elif theirs is None:  # not implemented
                assert ours[mine].value is None, mine
            else:
                assert ours[mine].value == pytest.approx(theirs, rel=1e-9), mine
            compared += 1
    assert compared == len(profile.points)
    # the headline values, spelled out
    if uid == 1:
        assert peer[103]["W"] == pytest.approx(12340.0) == ours["m103_w"].value
        assert peer[103]["W_SF"] == 1
        assert (peer[1]["Mn"], peer[1]["Md"], peer[1]["SN"]) == ("County Sim", "PV-3P-100",
                                                                  "SIM-0001")
        assert peer[1]["Opt"] is None  # not implemented
    else:
        assert peer[802]["SoC"] == pytest.approx(56.7) == ours["m802_soc"].value
        assert peer[701]["W"] == pytest.approx(-2500.0) == ours["m701_w"].value
        assert peer[1]["SN"] == "SIM-0002"


async def test_write_reaches_the_simulator(served: Served) -> None:
    sim = served.devices[1]
    profile = build_profile(await discover(served.conn, 1), kind="pv")
    dev = Device(asset_id="pv", profile=profile, connection=served.conn, unit_id=1, now=_now)
    await dev.poll(PollClass.FAST)  # reads WMaxLimPct_SF (-1)
    res = await dev.write("m123_wmaxlimpct", 42.3)
    assert not res.clamped
    assert len(sim.writes) == 1
    assert sim.writes[0][0] == "m123_wmaxlimpct" and sim.writes[0][1] == pytest.approx(42.3)
    assert (await dev.poll(PollClass.FAST))["m123_wmaxlimpct"].value == pytest.approx(42.3)
    with pytest.raises(PermissionError):
        await dev.write("m103_w", 1.0)
    # pysunspec2 writes through the same register map
    await _in_thread(_peer_write, served.server.port, 1, 123, "WMaxLimPct", 61.5)
    assert sim.writes[-1][0] == "m123_wmaxlimpct" and sim.writes[-1][1] == pytest.approx(61.5)


async def test_no_marker_is_a_clear_error() -> None:
    plain = Profile(name="plain", kind="meter", points=(
        Point(name="x", table=Table.HOLDING, address=40000, type=RegisterType.U32),))
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={
        1: SimUnit(plain, lambda: {"x": 12345.0}, lambda p, v: None)})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port, timeout_s=1.0)
    try:
        with pytest.raises(DeviceError, match="no SunSpec marker") as err:
            await discover(conn, 1)
        msg = str(err.value)
        assert "40000 (read 0x0000 0x3039)" in msg and "50000" in msg and "0 (" in msg
    finally:
        conn.close()
        await server.stop()
