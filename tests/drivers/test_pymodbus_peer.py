"""pymodbus as the independent peer of both ends of our Modbus TCP.

The drivers frame Modbus TCP themselves (``drivers/connection.py``) and so does the
simulator's server (``sim/modbus_server.py``). Each is checked here against pymodbus:
our client against pymodbus' server, and pymodbus' client against our server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers import Device, ExceptionReply, ModbusConnection, PollClass, Quality, Table
from drivers.profile import Profile, load_profile
from drivers.registers import encode
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit
from tests.conftest import shipped_profiles
from tests.drivers.test_modbus_sim import Recorder
from vpp.broker import free_port


def _register_blocks(profile: Profile, values: dict[str, float], table: Table) -> list[SimData]:
    """The profile's points of one table as pymodbus register blocks (unmapped addresses
    stay invalid, so pymodbus answers them with exception 2)."""
    blocks = []
    for p in profile.points:
        if p.table is table:
            words = encode(values[p.name] / p.scale, p.type, profile.order_of(p), p.length)
            blocks.append(SimData(address=p.address, values=words,
                                  datatype=DataType.REGISTERS))
    return blocks


@contextlib.asynccontextmanager
async def pymodbus_server(profile: Profile, values: dict[str, float],
                          unit_id: int) -> AsyncIterator[int]:
    holding = _register_blocks(profile, values, Table.HOLDING)
    inputs = _register_blocks(profile, values, Table.INPUT)
    # pymodbus needs a block in each table; address 60000 is mapped by no shipped profile
    bits = [SimData(address=60000, values=[False], datatype=DataType.BITS)]
    filler = [SimData(address=60000, values=[0], datatype=DataType.REGISTERS)]
    device = SimDevice(id=unit_id, simdata=(bits, bits, holding or filler, inputs or filler))
    port = free_port()
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    try:
        for _ in range(100):  # until it listens
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                await w.wait_closed()
                break
            await asyncio.sleep(0.02)
        yield port
    finally:
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("name", shipped_profiles())
async def test_our_client_reads_and_writes_pymodbus_server(name: str) -> None:
    profile = load_profile(name)
    rec = Recorder(profile, seed=7 + len(name))
    async with pymodbus_server(profile, rec.values, unit_id=5) as port:
        conn = ModbusConnection(host="127.0.0.1", port=port, timeout_s=2.0)
        dev = Device(asset_id="d", profile=profile, connection=conn, unit_id=5,
                     now=lambda: datetime.now(UTC))
        try:
            for pc in PollClass:
                await dev.poll(pc)
            for p in profile.points:
                s = dev.latest[p.name]
                assert s.quality is Quality.GOOD, (p.name, s)
                assert s.value == pytest.approx(rec.values[p.name], rel=1e-6), p.name
            writable = [p for p in profile.points if p.access.value == "rw"]
            for p in writable:  # a write read back through pymodbus' datastore
                lo, hi = p.writable_range()
                target = round((max(lo, -1e6) + min(hi, 1e6)) / 2 / p.scale) * p.scale
                res = await dev.write(p.name, target)
                assert res.written == pytest.approx(target)
                await dev.poll(p.poll)
                assert dev.latest[p.name].value == pytest.approx(target), p.name
            with pytest.raises(ExceptionReply) as exc:  # no point lives at 59000
                await conn.read(Table.HOLDING, 59000, 2, 5)
            assert exc.value.code == 2
        finally:
            conn.close()


async def test_our_client_matches_replies_of_interleaved_unit_ids() -> None:
    """Many requests queued on one connection, for two unit ids: each gets its own reply."""
    profile = load_profile("generic-meter")
    values = {p.name: float(i + 1) * p.scale for i, p in enumerate(profile.points)}
    async with pymodbus_server(profile, values, unit_id=1) as port:
        conn = ModbusConnection(host="127.0.0.1", port=port, timeout_s=2.0)
        try:
            p = profile.points[0]
            reads = [conn.read(p.table, p.address, p.registers, 1) for _ in range(50)]
            got = await asyncio.gather(*reads)
            want = encode(values[p.name] / p.scale, p.type, profile.order_of(p), p.length)
            assert all(g == want for g in got)
            assert conn.requests_ok == 50 and conn.stray_replies == 0
        finally:
            conn.close()


@pytest.mark.parametrize("name", shipped_profiles())
async def test_pymodbus_client_reads_our_server(name: str) -> None:
    profile = load_profile(name)
    rec = Recorder(profile, seed=11 + len(name))
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={
        2: SimUnit(profile, lambda: rec.values, rec.on_write)})
    await server.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2.0, retries=0)
    try:
        assert await client.connect()
        for p in profile.points:
            want = encode(rec.values[p.name] / p.scale, p.type, profile.order_of(p), p.length)
            read = (client.read_holding_registers if p.table is Table.HOLDING
                    else client.read_input_registers)
            rr = await read(p.address, count=p.registers, device_id=2)
            assert not rr.isError(), (p.name, rr)
            assert list(rr.registers) == want, p.name
        rw = next((p for p in profile.points if p.access.value == "rw"), None)
        if rw is not None:
            words = encode(0, rw.type, profile.order_of(rw), rw.length)
            wr = await client.write_registers(rw.address, words, device_id=2)
            assert not wr.isError()
            assert rec.writes[-1] == (rw.name, 0.0)
        rr = await client.read_holding_registers(59000, count=2, device_id=2)
        assert rr.isError() and rr.exception_code == 2
    finally:
        client.close()
        await server.stop()
