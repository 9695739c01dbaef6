"""Every shipped profile, served by the simulator's Modbus server, read back over real TCP."""

from __future__ import annotations

import asyncio
import random
import socket
from datetime import UTC, datetime

import pytest

from drivers import (
    Device,
    DeviceError,
    Health,
    ModbusConnection,
    PollClass,
    Quality,
    Table,
    load_profile,
)
from drivers.profile import Access, Point, Profile
from drivers.registers import TYPE_TABLE, RegisterType
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit
from tests.conftest import shipped_profiles


def _value_for(p: Point, rng: random.Random) -> float:
    """A value the point can carry exactly: a representable raw value times the scale."""
    info = TYPE_TABLE[p.type]
    lo_raw, hi_raw = info.min_value + 1, info.max_value - 1  # avoid the sentinels
    if p.valid_min is not None or p.valid_max is not None:
        bounds = sorted(v / p.scale for v in (p.valid_min or 0.0, p.valid_max or 0.0))
        lo_raw, hi_raw = max(lo_raw, bounds[0]), min(hi_raw, bounds[1])
    if p.type is RegisterType.F32:
        return rng.uniform(-1e6, 1e6)
    return rng.randint(int(lo_raw), int(min(hi_raw, 2**40))) * p.scale


class Recorder:
    def __init__(self, profile: Profile, seed: int) -> None:
        rng = random.Random(seed)
        self.values = {p.name: _value_for(p, rng) for p in profile.points}
        self.writes: list[tuple[str, float]] = []

    def on_write(self, point: str, value: float) -> None:
        self.writes.append((point, value))
        self.values[point] = value


@pytest.mark.parametrize("name", shipped_profiles())
async def test_every_point_reads_back(name: str) -> None:
    profile = load_profile(name)
    rec = Recorder(profile, seed=len(name))
    # two unit ids behind one port, as behind a gateway
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={
        3: SimUnit(profile, lambda: rec.values, rec.on_write),
        4: SimUnit(profile, dict, rec.on_write)})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port, timeout_s=1.0)
    dev = Device(asset_id="d", profile=profile, connection=conn, unit_id=3,
                 now=lambda: datetime.now(UTC))
    try:
        got = {}
        for pc in PollClass:
            got.update(await dev.poll(pc))
        assert set(got) == {p.name for p in profile.points}
        for p in profile.points:
            s = got[p.name]
            assert s.quality is Quality.GOOD, (p.name, s)
            assert s.value == pytest.approx(rec.values[p.name], rel=1e-6, abs=abs(p.scale)), p.name
            assert s.unit == p.unit
        assert dev.health is Health.ONLINE
        for p in profile.points:
            if p.access is Access.READ_WRITE:
                lo, hi = p.writable_range()
                target = min(max(rec.values[p.name] * 0.5, lo), hi)
                res = await dev.write(p.name, target)
                assert not res.clamped
                assert rec.writes[-1] == (p.name, pytest.approx(target, abs=abs(p.scale)))
        # the second unit has no values: zero registers decode, nothing is lost or shared
        other = Device(asset_id="e", profile=profile, connection=conn, unit_id=4,
                       now=lambda: datetime.now(UTC))
        await other.poll(PollClass.FAST)
        assert other.health is Health.ONLINE
    finally:
        conn.close()
        await server.stop()


async def test_dead_unit_and_dead_server_give_missing_not_zero() -> None:
    profile = load_profile("generic-meter")
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={
        1: SimUnit(profile, lambda: {"export_w": 5e6, "frequency_hz": 50.0}, lambda p, v: None)})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port, timeout_s=0.5)
    live = Device(asset_id="pcc", profile=profile, connection=conn, unit_id=1,
                  now=lambda: datetime.now(UTC))
    dead = Device(asset_id="gone", profile=profile, connection=conn, unit_id=9,
                  now=lambda: datetime.now(UTC))
    try:
        s = await dead.poll(PollClass.FAST)
        assert dead.health is Health.OFFLINE
        assert all(x.quality is Quality.MISSING and x.value is None for x in s.values())
        s = await live.poll(PollClass.FAST)
        assert live.health is Health.ONLINE
        assert s["export_w"].value == pytest.approx(5e6)
        await server.stop()
        await asyncio.sleep(0.05)
        s = await live.poll(PollClass.FAST)
        assert live.health is Health.OFFLINE
        assert live.value("export_w") is None
    finally:
        conn.close()
        await server.stop()


async def test_write_is_clamped_and_counted() -> None:
    profile = load_profile("generic-pv")
    rec = Recorder(profile, seed=1)
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0,
                                   units={1: SimUnit(profile, lambda: rec.values, rec.on_write)})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port)
    dev = Device(asset_id="pv", profile=profile, connection=conn, unit_id=1,
                 now=lambda: datetime.now(UTC))
    try:
        res = await dev.write("active_power_limit_w", -5.0)  # below write_min 0
        assert res.clamped and res.written == 0.0
        assert dev.clamps == 1
        assert rec.writes[-1] == ("active_power_limit_w", 0.0)
        with pytest.raises(PermissionError):
            await dev.write("active_power_w", 1.0)
    finally:
        conn.close()
        await server.stop()


async def test_strict_device_refuses_unmapped_registers_and_bad_frames() -> None:
    import struct

    profile = load_profile("generic-battery")
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={
        1: SimUnit(profile, lambda: {"active_power_w": 1.0, "soc": 0.5, "status": 0.0},
                   lambda p, v: None)})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port)
    try:
        with pytest.raises(DeviceError, match="read 11"):
            await conn.read(Table.INPUT, 11, 3, 1)  # status is 11; 12 and 13 map nothing
        assert await conn.read(Table.INPUT, 0, 3, 1) == [0, 1, 5000]
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        bad = struct.pack(">HHHB", 7, 0, 3, 1) + bytes([3, 0])  # FC 3 with a truncated body
        writer.write(bad)
        await writer.drain()
        reply = await reader.readexactly(9)
        assert struct.unpack(">HHHBBB", reply) == (7, 0, 3, 1, 0x83, 3)  # illegal data value
        writer.close()
        await writer.wait_closed()
    finally:
        conn.close()
        await server.stop()


async def test_a_connection_accepted_as_the_server_stops_is_closed_not_left_open() -> None:
    """asyncio starts a connection's handler some loop turns after the connection is made:
    one made just before ``stop`` is closed all the same, whichever turn stop comes on (left
    open, its socket outlived the test's event loop)."""
    profile = load_profile("generic-battery")
    for turns in range(8):
        server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={
            1: SimUnit(profile, lambda: {"active_power_w": 1.0, "soc": 0.5, "status": 0.0},
                       lambda p, v: None)})
        await server.start()
        # connected in the kernel at once; the server's loop has not even accepted it yet
        with socket.create_connection(("127.0.0.1", server.port), timeout=2.0) as client:
            for _ in range(turns):
                await asyncio.sleep(0)
            await server.stop()
            for _ in range(8):  # aborted transports close their sockets a turn later
                await asyncio.sleep(0)
            try:  # the server's end is closed: the client reads the end of the stream
                got = await asyncio.to_thread(client.recv, 1)
            except ConnectionError:
                got = b""
            except TimeoutError:
                got = b"(still open)"
            assert got == b"", turns


async def test_huawei_markers_gains_and_signs_on_the_wire() -> None:
    """Raw registers as a SUN2000 sends them, decoded by the profile."""
    from drivers.registers import RegisterType, WordOrder, encode

    profile = load_profile("huawei-sun2000")
    raw = {  # address -> words, as the inverter would put them
        32080: encode(12345, RegisterType.I32), 32084: encode(0x7FFF, RegisterType.I16),
        32085: encode(5003, RegisterType.U16), 32106: encode(123456, RegisterType.U32),
        37760: encode(875, RegisterType.U16), 37765: encode(-2500, RegisterType.I32),
        40126: encode(0xFFFFFFFF, RegisterType.U32)}
    assert WordOrder.BIG is profile.word_order

    class Wire(SimUnit):
        def read(self, table: Table, address: int, count: int) -> list[int]:
            words: list[int] = []
            a = address
            while a < address + count:
                w = raw.get(a, [0])
                words += w
                a += len(w)
            return words[:count]

    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0,
                                   units={1: Wire(profile, dict, lambda p, v: None)})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port)
    dev = Device(asset_id="inv", profile=profile, connection=conn, unit_id=1,
                 now=lambda: datetime.now(UTC))
    try:
        s = dict(await dev.poll(PollClass.FAST))
        s.update(await dev.poll(PollClass.SLOW))
    finally:
        conn.close()
        await server.stop()
    assert s["active_power_w"].value == 12345.0
    assert s["power_factor"].quality is Quality.MISSING  # Huawei's 0x7FFF, not 32.767
    assert s["frequency_hz"].value == pytest.approx(50.03)
    assert s["energy_export_wh"].value == pytest.approx(1234.56e3)  # kWh with gain 100
    assert s["battery_soc"].value == pytest.approx(0.875)  # % with gain 10 -> ratio
    assert s["battery_power_w"].value == 2500.0  # discharging: + in the house convention
    assert s["active_power_limit_w"].quality is Quality.MISSING  # 0xFFFFFFFF
