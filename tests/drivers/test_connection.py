"""The Modbus TCP client against a scripted server that misbehaves on purpose: late replies,
replies cut into pieces, replies for another unit, garbage on the stream."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from drivers import DeviceError, ModbusConnection, Table
from sim.modbus_server import stop_accepting

Answer = Callable[[int, int, int, int, asyncio.StreamWriter], Awaitable[None]]


def reply(tid: int, unit: int, words: list[int]) -> bytes:
    """A read reply (function 3) carrying ``words``."""
    n = len(words)
    return struct.pack(f">HHHBBB{n}H", tid, 0, 3 + 2 * n, unit, 3, 2 * n, *words)


@asynccontextmanager
async def scripted(answer: Answer) -> AsyncIterator[int]:
    """A server on a free port; ``answer(k, tid, unit, address, writer)`` handles the k-th
    request (counted over all connections)."""
    count = 0
    handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        try:
            while True:
                head = await reader.readexactly(12)
                tid, _, _, unit, _, address, _ = struct.unpack(">HHHBBHH", head)
                count += 1
                await answer(count, tid, unit, address, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            handlers.pop(task, None)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await stop_accepting(server)
        server.close()
        for w in list(handlers.values()):
            w.transport.abort()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_a_late_reply_is_discarded_not_taken_for_the_next_request() -> None:
    async def answer(k: int, tid: int, unit: int, address: int,
                     w: asyncio.StreamWriter) -> None:
        if k == 1:  # answer the first request after its timeout, with its own value
            async def late() -> None:
                await asyncio.sleep(0.3)
                w.write(reply(tid, unit, [111]))
            asyncio.get_running_loop().create_task(late())
            return
        w.write(reply(tid, unit, [address]))

    async with scripted(answer) as port:
        conn = ModbusConnection(host="127.0.0.1", port=port, timeout_s=0.15)
        try:
            with pytest.raises(DeviceError, match="no reply"):
                await conn.read(Table.HOLDING, 5, 1, 1)
            got = [await conn.read(Table.HOLDING, a, 1, 1) for a in (7, 8, 9)]
            await asyncio.sleep(0.3)  # the late reply arrives meanwhile
            got.append(await conn.read(Table.HOLDING, 10, 1, 1))
            assert got == [[7], [8], [9], [10]]
            assert conn.stray_replies == 1
        finally:
            conn.close()


async def test_a_reply_cut_into_single_bytes_is_put_together() -> None:
    async def answer(k: int, tid: int, unit: int, address: int,
                     w: asyncio.StreamWriter) -> None:
        for b in reply(tid, unit, [address, 0xBEEF, 0x1234]):
            w.write(bytes([b]))
            await w.drain()
            await asyncio.sleep(0.001)

    async with scripted(answer) as port:
        conn = ModbusConnection(host="127.0.0.1", port=port, timeout_s=2.0)
        try:
            assert await conn.read(Table.HOLDING, 42, 3, 1) == [42, 0xBEEF, 0x1234]
        finally:
            conn.close()


@pytest.mark.parametrize("fault", ["other unit", "garbage", "short"])
async def test_a_wrong_reply_is_an_error_and_the_connection_is_reopened(fault: str) -> None:
    async def answer(k: int, tid: int, unit: int, address: int,
                     w: asyncio.StreamWriter) -> None:
        if k == 1 and fault == "other unit":
            w.write(reply(tid, unit + 1, [1]))
        elif k == 1 and fault == "garbage":
            w.write(b"\x00\x01\x12\x34\x00\x05garbage")
        elif k == 1 and fault == "short":
            w.write(reply(tid, unit, [1]))  # one register where two were asked for
        else:
            w.write(reply(tid, unit, [address, address]))

    async with scripted(answer) as port:
        conn = ModbusConnection(host="127.0.0.1", port=port, timeout_s=0.5, backoff_max_s=0.1)
        try:
            with pytest.raises(DeviceError):
                await conn.read(Table.HOLDING, 3, 2, 1)
            assert not conn.connected
            refusals: list[str] = []
            for _ in range(50):  # after the backoff the next request reconnects
                try:
                    got = await conn.read(Table.HOLDING, 4, 2, 1)
                    break
                except DeviceError as exc:
                    refusals.append(str(exc))
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("did not reconnect")
            assert got == [4, 4]
            assert all("waiting to reconnect" in r for r in refusals), refusals
        finally:
            conn.close()


async def test_requests_waiting_on_a_lost_connection_all_fail_at_once() -> None:
    async def answer(k: int, tid: int, unit: int, address: int,
                     w: asyncio.StreamWriter) -> None:
        w.close()  # the peer hangs up on the first request

    async with scripted(answer) as port:
        conn = ModbusConnection(host="127.0.0.1", port=port, timeout_s=5.0)
        try:
            reads = [conn.read(Table.HOLDING, a, 1, 1) for a in range(5)]
            results = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), 2)
            assert all(isinstance(r, DeviceError) for r in results), results
            assert "connection lost" in str(results[0])
        finally:
            conn.close()
