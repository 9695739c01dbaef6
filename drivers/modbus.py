"""Async Modbus TCP device access: connections, coalesced reads, decoded samples, clamped writes."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.profile import MAX_READ_REGISTERS, Access, Point, PollClass, Profile, Table
from drivers.registers import decode, encode, is_not_implemented
from drivers.telemetry import Quality, Sample

log = logging.getLogger(__name__)

# Read across holes between points only when told to: many devices answer a read that
# touches an unmapped register with exception 2, so by default only adjacent points merge.
MAX_GAP_REGISTERS = 0


class DeviceError(Exception):
    """A device did not answer, or answered with an error."""


class Health(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


@dataclass(frozen=True)
class ReadBlock:
    """One request: a contiguous register range of one table, with the points inside it."""

    table: Table
    start: int
    count: int
    points: tuple[Point, ...]


def plan_reads(points: Iterable[Point], *, max_registers: int = MAX_READ_REGISTERS,
               max_gap: int = MAX_GAP_REGISTERS) -> list[ReadBlock]:
    """Coalesce points into as few reads as the protocol allows.

    Points of one table are merged while the block stays within ``max_registers`` and the
    hole between two points is at most ``max_gap`` registers.
    """
    points = list(points)
    blocks: list[ReadBlock] = []
    for table in Table:
        pts = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        current: list[Point] = []
        start = end = 0
        for p in pts:
            p_end = p.address + p.registers
            if current and p.address - end <= max_gap and p_end - start <= max_registers:
                current.append(p)
                end = max(end, p_end)
                continue
            if current:
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            current, start, end = [p], p.address, p_end
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks


class ModbusConnection:
    """One TCP connection to a host:port, shared by every unit id behind it.

    Requests are serialised on the connection; a failed request closes it, and the next one
    reconnects after an exponential backoff with jitter.
    """

    def __init__(self, *, host: str, port: int, timeout_s: float = 1.0,
                 backoff_max_s: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
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
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise DeviceError(f"{self.label}: waiting to reconnect")
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            ok = False
            log.debug("connect %s failed: %s", self.label, exc)
        if not ok:
            client.close()
            self._note_failure()
            raise DeviceError(f"{self.label}: cannot connect")
        self._client = client
        return client

    def _note_failure(self) -> None:
        self.requests_failed += 1
        self._failures += 1
        delay = min(self.backoff_max_s, 0.1 * 2 ** min(self._failures, 10))
        self._retry_at = asyncio.get_running_loop().time() + delay * random.uniform(0.5, 1.0)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, table: Table, address: int, count: int, unit_id: int) -> list[int]:
        async with self._lock:
            client = await self._ensure()
            try:
                async with asyncio.timeout(self.timeout_s):
                    if table is Table.HOLDING:
                        rr = await client.read_holding_registers(address, count=count,
                                                                 device_id=unit_id)
                    else:
                        rr = await client.read_input_registers(address, count=count,
                                                               device_id=unit_id)
            except (TimeoutError, ModbusException, OSError) as exc:
                self._drop()
                self._note_failure()
                raise DeviceError(f"{self.label} unit {unit_id}: read {address}: {exc}") from exc
            if rr.isError():
                self.requests_failed += 1
                raise DeviceError(f"{self.label} unit {unit_id}: read {address}: {rr}")
            if len(rr.registers) != count:
                self._drop()
                self._note_failure()
                raise DeviceError(f"{self.label} unit {unit_id}: read {address}: asked for "
                                  f"{count} registers, got {len(rr.registers)}")
            self._failures = 0
            self.requests_ok += 1
            return list(rr.registers)

    async def write(self, address: int, values: list[int], unit_id: int) -> None:
        async with self._lock:
            client = await self._ensure()
            try:
                async with asyncio.timeout(self.timeout_s):
                    rr = await client.write_registers(address, values, device_id=unit_id)
            except (TimeoutError, ModbusException, OSError) as exc:
                self._drop()
                self._note_failure()
                raise DeviceError(f"{self.label} unit {unit_id}: write {address}: {exc}") from exc
            if rr.isError():
                self.requests_failed += 1
                raise DeviceError(f"{self.label} unit {unit_id}: write {address}: {rr}")
            self._failures = 0
            self.requests_ok += 1

    def close(self) -> None:
        self._drop()


@dataclass
class WriteResult:
    """What a write did: the value asked for, the value sent, and whether it was clamped."""

    point: str
    requested: float
    written: float
    clamped: bool


@dataclass
class Device:
    """A device (one unit id) read through a profile.

    ``now`` is the injected clock: samples are stamped with it at the read.
    """

    asset_id: str
    profile: Profile
    connection: ModbusConnection
    unit_id: int
    now: Callable[[], datetime]
    latest: dict[str, Sample] = field(default_factory=dict)
    health: Health = Health.OFFLINE
    clamps: int = 0
    _blocks: dict[PollClass, list[ReadBlock]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for pc in PollClass:
            self._blocks[pc] = plan_reads(p for p in self.profile.points if p.poll == pc)

    def _decode(self, p: Point, words: list[int], ts: datetime) -> Sample:
        raw = decode(words, p.type, self.profile.order_of(p))
        if isinstance(raw, str) or is_not_implemented(raw, p.type):
            return Sample(self.asset_id, p.name, None, p.unit, ts, Quality.MISSING)
        value = float(raw) * p.scale
        bad = not math.isfinite(value) or (
            (p.valid_min is not None and value < p.valid_min)
            or (p.valid_max is not None and value > p.valid_max)
        )
        quality = Quality.BAD if bad else Quality.GOOD
        return Sample(self.asset_id, p.name, value, p.unit, ts, quality)

    async def poll(self, poll_class: PollClass = PollClass.FAST) -> dict[str, Sample]:
        """Read every point of a poll class; failed blocks give samples of quality missing."""
        out: dict[str, Sample] = {}
        failed = 0
        blocks = self._blocks[poll_class]
        for block in blocks:
            try:
                words = await self.connection.read(block.table, block.start, block.count,
                                                   self.unit_id)
            except DeviceError as exc:
                log.debug("%s: %s", self.asset_id, exc)
                failed += 1
                ts = self.now()
                for p in block.points:
                    out[p.name] = Sample(self.asset_id, p.name, None, p.unit, ts, Quality.MISSING)
                continue
            ts = self.now()
            for p in block.points:
                off = p.address - block.start
                out[p.name] = self._decode(p, words[off : off + p.registers], ts)
        if blocks:
            self.health = (Health.ONLINE if failed == 0
                           else Health.OFFLINE if failed == len(blocks) else Health.DEGRADED)
        self.latest.update(out)
        return out

    async def write(self, point_name: str, value: float) -> WriteResult:
        """Write an engineering value to a writable point, clamped to its allowed range."""
        p = self.profile.point(point_name)
        if p.access is not Access.READ_WRITE:
            raise PermissionError(f"{self.asset_id}: point {point_name} is read-only")
        if not math.isfinite(value):
            raise ValueError(f"{self.asset_id}.{point_name}: refusing to write {value}")
        lo, hi = p.writable_range()
        sent = min(max(value, lo), hi)
        clamped = sent != value
        if clamped:
            self.clamps += 1
            log.warning("%s.%s: setpoint %.1f clamped to %.1f (allowed [%.1f, %.1f])",
                        self.asset_id, point_name, value, sent, lo, hi)
        words = encode(sent / p.scale, p.type, self.profile.order_of(p), p.length)
        await self.connection.write(p.address, words, self.unit_id)
        return WriteResult(point_name, value, sent, clamped)

    def value(self, point_name: str) -> float | None:
        """The latest good value of a point, or None."""
        s = self.latest.get(point_name)
        return s.value if s is not None and s.usable else None
