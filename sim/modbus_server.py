"""A lean asyncio Modbus TCP server for simulated devices.

Why not pymodbus' server: it costs 115-330 µs of CPU per request here (3-6× a lean
server), its datastore API is being replaced for v4, and the simulator needs full control
of the request path to inject faults. pymodbus' client, an independent implementation,
reads and writes it in ``tests/drivers/test_pymodbus_peer.py``, so its framing is checked
against a peer (and the drivers' own client is checked against pymodbus' server there).

Supported: function codes 3 (read holding), 4 (read input), 6 (write single register) and
16 (write multiple registers); several unit ids behind one port (a gateway). Exception
codes: 1 illegal function, 2 illegal data address, 3 illegal data value, 4 device failure,
11 gateway target failed to respond (unknown unit id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from drivers.profile import Access, Profile, Table
from drivers.registers import TYPE_TABLE, RegisterCodecError, RegisterType, decode, encode

log = logging.getLogger(__name__)

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4
GATEWAY_TARGET_FAILED = 11
# asyncio attaches a connection to its server one loop turn after accepting it, and starts
# its handler two turns later: a stopping server gives them this many
ACCEPT_LOOP_TURNS = 4


class ModbusReplyError(Exception):
    """An exception response to send back."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FaultKind(StrEnum):
    """What a faulty device does with a request."""

    SILENT = "silent"  # never answers
    SLOW = "slow"  # answers after delay_s
    CLOSE = "close"  # closes the connection
    EXCEPTION = "exception"  # answers with exception ``code``
    FROZEN = "frozen"  # answers every read with the reply it gave when the fault began


@dataclass
class Fault:
    kind: FaultKind
    delay_s: float = 2.0
    code: int = DEVICE_FAILURE


SENTINEL = "sentinel"  # an override that puts the type's "not implemented" value


@dataclass
class SimUnit:
    """A simulated device behind a unit id: a profile, a value source and a setpoint sink.

    ``values()`` returns the device's engineering values at the instant of the request;
    ``on_write(point, value)`` applies a setpoint. ``overrides`` replace values to inject
    garbage: a number (NaN, out of range) or :data:`SENTINEL`.
    """

    profile: Profile
    values: Callable[[], dict[str, float]]
    on_write: Callable[[str, float], None]
    overrides: dict[str, float | str] = field(default_factory=dict)
    _mapped_cache: dict[Table, frozenset[int]] = field(default_factory=dict, init=False,
                                                       repr=False)

    def _words(self, name: str, value: float | str) -> list[int]:
        p = self.profile.point(name)
        order = self.profile.order_of(p)
        if value == SENTINEL or (isinstance(value, float) and math.isnan(value)
                                 and p.type is not RegisterType.F32):
            raw = p.invalid[0] if p.invalid else TYPE_TABLE[p.type].not_implemented
            if raw is None:
                return encode(math.nan, p.type, order, p.length)
            return encode(raw, p.type, order, p.length)
        assert not isinstance(value, str)
        return encode(value / p.scale, p.type, order, p.length)

    def _image(self, table: Table, address: int, count: int) -> dict[int, int]:
        """The registers of the points of ``table`` that overlap [address, address+count)."""
        vals: dict[str, float | str] = {**self.values(), **self.overrides}
        regs: dict[int, int] = {}
        end = address + count
        for p in self.profile.points:
            if p.table != table or p.name not in vals or p.address >= end or \
                    p.address + p.registers <= address:
                continue
            words = self._words(p.name, vals[p.name])
            for i, w in enumerate(words):
                regs[p.address + i] = w
        return regs

    def _mapped(self, table: Table) -> frozenset[int]:
        cache = self._mapped_cache  # the profile's registers of a table, found once
        if table not in cache:
            cache[table] = frozenset(p.address + i for p in self.profile.points
                                     if p.table == table for i in range(p.registers))
        return cache[table]

    def read(self, table: Table, address: int, count: int) -> list[int]:
        """Registers [address, address + count); like a strict device, a read that touches
        a register no point maps is refused with exception 2."""
        mapped = self._mapped(table)
        if any(a not in mapped for a in range(address, address + count)):
            raise ModbusReplyError(ILLEGAL_ADDRESS)
        try:
            regs = self._image(table, address, count)
        except RegisterCodecError as exc:
            log.warning("%s: cannot encode a value: %s", self.profile.name, exc)
            raise ModbusReplyError(DEVICE_FAILURE) from exc
        return [regs.get(a, 0) for a in range(address, address + count)]

    def write(self, address: int, words: list[int]) -> None:
        for p in self.profile.points:
            if p.table is Table.HOLDING and p.address == address and p.registers == len(words):
                if p.access is not Access.READ_WRITE:
                    raise ModbusReplyError(ILLEGAL_ADDRESS)
                value = float(decode(words, p.type, self.profile.order_of(p))) * p.scale
                lo, hi = p.writable_range()
                if not lo <= value <= hi:
                    raise ModbusReplyError(ILLEGAL_VALUE)
                self.on_write(p.name, value)
                return
        raise ModbusReplyError(ILLEGAL_ADDRESS)


async def stop_accepting(server: asyncio.Server) -> None:
    """Stop ``server`` taking connections without closing it yet, and give the ones it
    accepted a moment ago the loop turns asyncio needs to attach them and start their
    handlers; close it after this.

    Closed at once, a server leaks the socket of a connection it accepted on the loop turn
    before: on Python 3.11 the accept task fails its assertion that the server is open and
    drops the socket unclosed (python/cpython#109564, open)."""
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    for _ in range(ACCEPT_LOOP_TURNS):
        await asyncio.sleep(0)


class ModbusTcpDeviceServer:
    """Serves a set of unit ids on one host:port."""

    def __init__(self, *, host: str, port: int, units: dict[int, SimUnit]) -> None:
        self.host = host
        self.port = port
        self.units = units
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.requests = 0
        self.faults: dict[int, Fault] = {}  # by unit id; set and clear at run time
        self._frozen: dict[tuple[int, bytes], bytes] = {}
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._stopping = True  # until the next start: a handler that starts late aborts
        await stop_accepting(self._server)
        self._server.close()
        # the handlers of connections accepted just now have started (they saw _stopping and
        # aborted); abort the live ones. Aborting the transports ends each handler's read;
        # cancelling the handler tasks instead trips asyncio's stream callback on Python 3.11.
        for _ in range(ACCEPT_LOOP_TURNS):
            await asyncio.sleep(0)
            for writer in list(self._handlers.values()):
                writer.transport.abort()
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def _pdu(self, unit_id: int, pdu: bytes) -> bytes:
        fc = pdu[0]
        unit = self.units.get(unit_id)
        try:
            if unit is None:
                raise ModbusReplyError(GATEWAY_TARGET_FAILED)
            if (fc in (3, 4, 6) and len(pdu) != 5) or (fc == 16 and (
                    len(pdu) < 6 or len(pdu) != 6 + pdu[5])):
                raise ModbusReplyError(ILLEGAL_VALUE)
            if fc in (3, 4):
                address, count = struct.unpack(">HH", pdu[1:5])
                if not 1 <= count <= 125:
                    raise ModbusReplyError(ILLEGAL_VALUE)
                if address + count > 0x10000:
                    raise ModbusReplyError(ILLEGAL_ADDRESS)
                table = Table.HOLDING if fc == 3 else Table.INPUT
                words = unit.read(table, address, count)
                return struct.pack(f">BB{count}H", fc, 2 * count, *words)
            if fc == 6:
                address, value = struct.unpack(">HH", pdu[1:5])
                unit.write(address, [value])
                return pdu[:5]
            if fc == 16:
                address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
                if nbytes != 2 * count or not 1 <= count <= 123:
                    raise ModbusReplyError(ILLEGAL_VALUE)
                words = list(struct.unpack(f">{count}H", pdu[6 : 6 + nbytes]))
                unit.write(address, words)
                return struct.pack(">BHH", fc, address, count)
            raise ModbusReplyError(ILLEGAL_FUNCTION)
        except ModbusReplyError as reply:
            return struct.pack(">BB", fc | 0x80, reply.code)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping:  # accepted while stopping
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            while True:
                header = await reader.readexactly(7)
                tid, pid, length, unit_id = struct.unpack(">HHHB", header)
                if pid != 0 or not 2 <= length <= 254:
                    break
                pdu = await reader.readexactly(length - 1)
                if not pdu:
                    break
                self.requests += 1
                fault = self.faults.get(unit_id)
                if fault is not None and fault.kind is FaultKind.CLOSE:
                    break
                if fault is not None and fault.kind is FaultKind.SILENT:
                    continue
                if fault is not None and fault.kind is FaultKind.SLOW:
                    await asyncio.sleep(fault.delay_s)
                if fault is not None and fault.kind is FaultKind.EXCEPTION:
                    reply = struct.pack(">BB", pdu[0] | 0x80, fault.code)
                elif fault is not None and fault.kind is FaultKind.FROZEN:
                    cached = self._frozen.get((unit_id, pdu))  # writes are not applied
                    reply = cached if cached is not None else struct.pack(
                        ">BB", pdu[0] | 0x80, DEVICE_FAILURE)
                else:
                    reply = self._pdu(unit_id, pdu)
                    if pdu[0] in (3, 4):
                        self._frozen[(unit_id, pdu)] = reply
                writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit_id) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._handlers.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
