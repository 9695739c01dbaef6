"""One Modbus TCP connection per host:port, shared by every unit id behind it."""

from __future__ import annotations

import asyncio
import logging
import random

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.profile import Table

log = logging.getLogger(__name__)

ILLEGAL_ADDRESS = 2


class DeviceError(Exception):
    """A device did not answer, or answered with an error."""


class ExceptionReply(DeviceError):  # noqa: N818 (it is the protocol's name for it)
    """The device answered with a Modbus exception code (2: illegal data address, ...)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ModbusConnection:
    """A TCP connection to a host:port, shared by every unit id behind it (a gateway).

    Requests are serialised on the connection. A failed request closes it; the next one
    reconnects after an exponential backoff with jitter. ``limiter`` bounds how many
    connections are open at once across a poller.
    """

    def __init__(self, *, host: str, port: int, timeout_s: float = 1.0,
                 backoff_max_s: float = 5.0, limiter: asyncio.Semaphore | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self._limiter = limiter
        self._holds_slot = False
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self.requests_ok = 0
        self.requests_failed = 0

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    async def _ensure(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise DeviceError(f"{self.label}: waiting to reconnect")
        if self._limiter is not None:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._limiter.acquire()
            except TimeoutError:
                raise DeviceError(f"{self.label}: no free connection slot") from None
            self._holds_slot = True
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s,
                                      retries=0, reconnect_delay=0)
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            ok = False
            log.debug("connect %s failed: %s", self.label, exc)
        if not ok:
            client.close()
            self._release_slot()
            self._note_failure()
            raise DeviceError(f"{self.label}: cannot connect")
        self._client = client
        return client

    def _release_slot(self) -> None:
        if self._holds_slot and self._limiter is not None:
            self._limiter.release()
        self._holds_slot = False

    def _note_failure(self) -> None:
        self.requests_failed += 1
        self._failures += 1
        delay = min(self.backoff_max_s, 0.1 * 2 ** min(self._failures, 10))
        self._retry_at = asyncio.get_running_loop().time() + delay * random.uniform(0.5, 1.0)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._release_slot()

    async def _request(self, what: str, unit_id: int, call: object) -> object:
        client = await self._ensure()
        try:
            async with asyncio.timeout(self.timeout_s):
                rr = await call(client)  # type: ignore[operator]
        except (TimeoutError, ModbusException, OSError) as exc:
            self._drop()
            self._note_failure()
            raise DeviceError(f"{self.label} unit {unit_id}: {what}: "
                              f"{exc or type(exc).__name__}") from exc
        if rr.isError():  # type: ignore[attr-defined]
            self.requests_failed += 1
            code = getattr(rr, "exception_code", 0)
            raise ExceptionReply(f"{self.label} unit {unit_id}: {what}: exception {code}", code)
        self._failures = 0
        self.requests_ok += 1
        return rr

    async def read(self, table: Table, address: int, count: int, unit_id: int) -> list[int]:
        async def call(c: AsyncModbusTcpClient) -> object:
            if table is Table.HOLDING:
                return await c.read_holding_registers(address, count=count, device_id=unit_id)
            return await c.read_input_registers(address, count=count, device_id=unit_id)

        async with self._lock:
            rr = await self._request(f"read {address}+{count}", unit_id, call)
            regs = list(rr.registers)  # type: ignore[attr-defined]
            if len(regs) != count:
                self._drop()
                self._note_failure()
                raise DeviceError(f"{self.label} unit {unit_id}: read {address}: asked for "
                                  f"{count} registers, got {len(regs)}")
            return regs

    async def write(self, address: int, values: list[int], unit_id: int) -> None:
        async def call(c: AsyncModbusTcpClient) -> object:
            return await c.write_registers(address, values, device_id=unit_id)

        async with self._lock:
            await self._request(f"write {address}", unit_id, call)

    def close(self) -> None:
        self._drop()
