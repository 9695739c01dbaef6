"""One Modbus TCP connection per host:port, shared by every unit id behind it.

The client speaks Modbus TCP itself (MBAP framing, function codes 3, 4 and 16) on an
asyncio ``Protocol``. pymodbus' client did the same at 140-150 µs of CPU per request here,
more than the whole budget of a poll (``docs/performance.md``); a gateway with hundreds of
unit ids polled every second cannot afford that. pymodbus stays the independent peer in
the tests: its server answers this client and its client reads the simulator.

One request is in flight per connection (many gateways and devices cannot take more); the
others wait in a FIFO and are sent as each reply arrives. Replies are matched by
transaction id, so a reply that comes after its request timed out is discarded and never
taken for a newer request's.

The core is callback-based (:meth:`ModbusConnection.submit`: a reply is handed on from
``data_received`` with no task in between), which is what the polling engine runs on;
:meth:`~ModbusConnection.read` and :meth:`~ModbusConnection.write` are the awaitable API on
top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from collections import deque
from collections.abc import Callable

from drivers.profile import Table

log = logging.getLogger(__name__)

ILLEGAL_ADDRESS = 2
READ_HOLDING = 3
READ_INPUT = 4
WRITE_MULTIPLE = 16
MAX_WRITE_REGISTERS = 123  # the protocol's limit for one write (FC 16)
# consecutive timeouts after which the connection is taken as dead and reconnected
TIMEOUTS_BEFORE_RECONNECT = 3

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit id
_READ = struct.Struct(">HHHBBHH")  # MBAP + function code, address, count
_WRITE_HEAD = struct.Struct(">HHHBBHHB")  # MBAP + function code, address, count, bytes
_HH = struct.Struct(">HH")

# what a request hands its reply to: (reply frame, None) or (None, the error); once
Deliver = Callable[[bytes | None, "DeviceError | None"], None]


class DeviceError(Exception):
    """A device did not answer, or answered with an error."""


class ExceptionReply(DeviceError):  # noqa: N818 (it is the protocol's name for it)
    """The device answered with a Modbus exception code (2: illegal data address, ...)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Request:
    __slots__ = ("address", "deadline", "deliver", "expect", "frame", "function", "tid",
                 "unit_id")

    def __init__(self, tid: int, unit_id: int, function: int, address: int, frame: bytes,
                 expect: int, deliver: Deliver) -> None:
        self.tid = tid
        self.unit_id = unit_id
        self.function = function
        self.address = address
        self.frame = frame
        self.expect = expect  # length of a good reply frame [bytes]
        self.deliver = deliver
        self.deadline = 0.0

    def what(self) -> str:
        verb = "write" if self.function == WRITE_MULTIPLE else "read"
        return f"unit {self.unit_id}: {verb} {self.address}"


class _Link(asyncio.Protocol):
    """The TCP stream: cuts it into MBAP frames and hands each to its connection."""

    def __init__(self, owner: ModbusConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclass of asyncio.Transport, hence no isinstance check
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.buf and len(data) >= 8:  # the common case: one whole reply in one segment
            tid, proto, length, _ = _MBAP.unpack_from(data)
            if len(data) == 6 + length and proto == 0:
                self.owner._reply(self, tid, data)
                return
        buf = self.buf
        buf += data
        while len(buf) >= 8:
            tid, proto, length, _ = _MBAP.unpack_from(buf)
            if proto != 0 or not 2 <= length <= 254:
                self.owner._broken(self, f"not a Modbus TCP frame (protocol {proto}, "
                                         f"length {length})")
                return
            end = 6 + length
            if len(buf) < end:
                return
            frame = bytes(buf[:end])
            del buf[:end]
            self.owner._reply(self, tid, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, exc)


class ModbusConnection:
    """A TCP connection to a host:port, shared by every unit id behind it (a gateway).

    Requests are serialised on the connection, each with its own ``timeout_s`` from the
    moment it is sent; one timeout fails only its request, three in a row drop the
    connection. A lost connection fails every request waiting on it; the next request
    reconnects after an exponential backoff with jitter (at most ``backoff_max_s``).
    ``limiter`` bounds how many connections are open at once across a poller.
    """

    def __init__(self, *, host: str, port: int, timeout_s: float = 1.0,
                 backoff_max_s: float = 5.0, limiter: asyncio.Semaphore | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self._limiter = limiter
        self._holds_slot = False
        self._link: _Link | None = None
        self._connector: asyncio.Task[None] | None = None
        self._tid = 0
        self._inflight: _Request | None = None
        self._watch: asyncio.TimerHandle | None = None  # fires at the in-flight deadline
        self._waiting: deque[_Request] = deque()
        self._failures = 0
        self._timeouts = 0
        self._retry_at = 0.0
        self.requests_ok = 0
        self.requests_failed = 0
        self.stray_replies = 0

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.transport is not None and \
            not link.transport.is_closing()

    # -- connecting ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Open the link, then send what waits; on failure fail what waits."""
        loop = asyncio.get_running_loop()
        try:
            if self._limiter is not None and not self._holds_slot:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await self._limiter.acquire()
                except TimeoutError:
                    raise DeviceError(f"{self.label}: no free connection slot") from None
                self._holds_slot = True
            try:
                async with asyncio.timeout(self.timeout_s):
                    _, link = await loop.create_connection(lambda: _Link(self), self.host,
                                                           self.port)
            except (TimeoutError, OSError) as exc:
                self._release_slot()
                self._note_failure()
                raise DeviceError(f"{self.label}: cannot connect: "
                                  f"{exc or type(exc).__name__}") from None
        except Exception as exc:  # every failure fails the waiting requests
            self._fail_all(exc if isinstance(exc, DeviceError) else
                           DeviceError(f"{self.label}: cannot connect: {exc!r}"))
            return
        finally:
            self._connector = None
        self._link = link
        self._timeouts = 0
        self._next()

    def _release_slot(self) -> None:
        if self._holds_slot and self._limiter is not None:
            self._limiter.release()
        self._holds_slot = False

    def _note_failure(self) -> None:
        self.requests_failed += 1
        self._failures += 1
        delay = min(self.backoff_max_s, 0.1 * 2 ** min(self._failures, 10))
        self._retry_at = asyncio.get_running_loop().time() + delay * random.uniform(0.5, 1.0)

    def _fail_all(self, error: DeviceError) -> None:
        """Fail the in-flight request and every waiting one (their callbacks run soon, not
        now, so that none of them can submit into a connection half torn down)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        pending = ([self._inflight] if self._inflight is not None else []) + list(self._waiting)
        self._inflight = None
        self._waiting.clear()
        if pending:
            loop = asyncio.get_running_loop()
            for req in pending:
                loop.call_soon(req.deliver, None, error)

    def _drop(self, reason: str) -> None:
        """Close the link and fail every request on it."""
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()
        self._release_slot()
        self._fail_all(DeviceError(f"{self.label}: {reason}"))

    # -- the link's callbacks -----------------------------------------------------------------

    def _lost(self, link: _Link, exc: Exception | None) -> None:
        if link is self._link:
            self._note_failure()
            self._drop(f"connection lost ({exc or 'closed by the peer'})")

    def _broken(self, link: _Link, reason: str) -> None:
        if link is self._link:
            log.warning("%s: %s; reconnecting", self.label, reason)
            self._note_failure()
            self._drop(reason)

    def _reply(self, link: _Link, tid: int, frame: bytes) -> None:
        req = self._inflight
        if req is None or tid != req.tid or link is not self._link:
            self.stray_replies += 1  # the answer to a request that already timed out
            log.debug("%s: discarded a reply with transaction id %d", self.label, tid)
            return
        fc = frame[7]
        if frame[6] != req.unit_id or fc & 0x7F != req.function:
            self._broken(link, f"{req.what()}: reply for unit {frame[6]}, function {fc}")
            return
        if fc & 0x80:
            code = frame[8] if len(frame) > 8 else 0
            self.requests_failed += 1
            self._next()
            req.deliver(None, ExceptionReply(f"{self.label} {req.what()}: exception {code}",
                                             code))
            return
        if len(frame) != req.expect or (req.function != WRITE_MULTIPLE
                                        and frame[8] != req.expect - 9):
            self._broken(link, f"{req.what()}: a reply of {len(frame)} bytes, "
                               f"{req.expect} expected")
            return
        self._failures = 0
        self._timeouts = 0
        self.requests_ok += 1
        self._next()
        req.deliver(frame, None)

    def _check(self) -> None:
        """The in-flight deadline watch: expire the request, or wait for its deadline."""
        self._watch = None
        req = self._inflight
        if req is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < req.deadline - 1e-3:  # timers may fire a clock tick early
            self._watch = loop.call_at(req.deadline, self._check)
            return
        self._timeouts += 1
        self.requests_failed += 1
        error = DeviceError(f"{self.label} {req.what()}: no reply in {self.timeout_s:g} s")
        if self._timeouts >= TIMEOUTS_BEFORE_RECONNECT:
            self._note_failure()
            self._drop(f"{self._timeouts} requests in a row timed out")
        else:
            self._next()
        req.deliver(None, error)

    # -- sending ------------------------------------------------------------------------------

    def _send(self, req: _Request) -> None:
        link = self._link
        assert link is not None
        assert link.transport is not None
        self._inflight = req
        link.transport.write(req.frame)
        loop = asyncio.get_running_loop()
        req.deadline = loop.time() + self.timeout_s
        if self._watch is None:  # one timer per connection, not one per request
            self._watch = loop.call_at(req.deadline, self._check)

    def _next(self) -> None:
        """The in-flight request is over: send the next one waiting."""
        self._inflight = None
        if self._waiting and self._link is not None:
            self._send(self._waiting.popleft())

    def submit(self, unit_id: int, function: int, address: int, frame: bytearray, expect: int,
               deliver: Deliver) -> None:
        """Queue a request (``frame``: its transaction id is filled in here); ``deliver``
        gets the reply frame or the error, once. Never blocks."""
        if self._link is None and self._connector is None:
            loop = asyncio.get_running_loop()
            if loop.time() < self._retry_at:
                loop.call_soon(deliver, None, DeviceError(f"{self.label}: waiting to "
                                                          "reconnect"))
                return
            self._connector = loop.create_task(self._connect(), name=f"connect.{self.label}")
        tid = self._tid = self._tid % 0xFFFF + 1
        frame[0] = tid >> 8
        frame[1] = tid & 0xFF
        req = _Request(tid, unit_id, function, address, bytes(frame), expect, deliver)
        if self._inflight is None and self._link is not None:
            self._send(req)
        else:
            self._waiting.append(req)

    def submit_read(self, table: Table, address: int, count: int, unit_id: int,
                    deliver: Deliver) -> None:
        """Read registers [address, address + count); their big-endian bytes start at offset
        9 of the frame handed to ``deliver``."""
        fc = READ_HOLDING if table is Table.HOLDING else READ_INPUT
        self.submit(unit_id, fc, address,
                    bytearray(_READ.pack(0, 0, 6, unit_id, fc, address, count)),
                    9 + 2 * count, deliver)

    # -- the awaitable API --------------------------------------------------------------------

    @staticmethod
    def _future() -> tuple[asyncio.Future[bytes], Deliver]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def deliver(frame: bytes | None, error: DeviceError | None) -> None:
            if future.done():  # its caller gave up (cancelled)
                return
            if error is not None:
                future.set_exception(error)
            else:
                assert frame is not None
                future.set_result(frame)

        return future, deliver

    async def read_bytes(self, table: Table, address: int, count: int, unit_id: int) -> bytes:
        """Registers [address, address + count) as the reply frame: their big-endian bytes
        start at offset 9 (``frame[9:]``)."""
        future, deliver = self._future()
        self.submit_read(table, address, count, unit_id, deliver)
        return await future

    async def read(self, table: Table, address: int, count: int, unit_id: int) -> list[int]:
        """Registers [address, address + count) as 16-bit integers."""
        frame = await self.read_bytes(table, address, count, unit_id)
        return list(struct.unpack_from(f">{count}H", frame, 9))

    async def write(self, address: int, values: list[int], unit_id: int) -> None:
        """Write holding registers from ``address`` (function 16)."""
        n = len(values)
        if not 1 <= n <= MAX_WRITE_REGISTERS:
            raise ValueError(f"a write takes 1..{MAX_WRITE_REGISTERS} registers, got {n}")
        frame = bytearray(_WRITE_HEAD.pack(0, 0, 7 + 2 * n, unit_id, WRITE_MULTIPLE, address, n,
                                           2 * n))
        frame += struct.pack(f">{n}H", *values)
        future, deliver = self._future()
        self.submit(unit_id, WRITE_MULTIPLE, address, frame, 12, deliver)
        reply = await future
        if _HH.unpack_from(reply, 8) != (address, n):
            raise DeviceError(f"{self.label} unit {unit_id}: write {address}: the reply does "
                              "not echo the address and count")

    def close(self) -> None:
        """Close the connection and fail what waits on it (a later request reopens it)."""
        if self._connector is not None:
            self._connector.cancel()
            self._connector = None
        with contextlib.suppress(RuntimeError):  # no running loop: nothing is waiting
            self._drop("closed")
        self._link = None
        self._release_slot()
