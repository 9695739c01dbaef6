"""A device read through its profile: coalesced reads, decoded samples with quality,
verified writes."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from drivers.connection import ILLEGAL_ADDRESS, DeviceError, ExceptionReply, ModbusConnection
from drivers.profile import MAX_READ_REGISTERS, Access, Point, PollClass, Profile, Table
from drivers.registers import (
    TYPE_TABLE,
    RegisterType,
    WordOrder,
    decode,
    encode,
    is_not_implemented,
)
from drivers.samples import SampleQueue
from drivers.telemetry import Quality, Sample

log = logging.getLogger(__name__)

# Read across holes between points only when told to: many devices answer a read that
# touches an unmapped register with exception 2, so by default only adjacent points merge.
MAX_GAP_REGISTERS = 0


class Health(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


class WriteError(DeviceError):
    """A write that did not take: refused, failed, or read back different, until its deadline."""


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


def block_struct(block: ReadBlock, profile: Profile) -> struct.Struct | None:
    """One precompiled big-endian struct for a whole block (holes skipped), or None when a
    point needs the slow path (text, low word first)."""
    fmt = [">"]
    at = block.start
    for p in block.points:
        if p.type is RegisterType.STRING or (
                p.registers > 1 and profile.order_of(p) is not WordOrder.BIG):
            return None
        if p.address > at:
            fmt.append(f"{2 * (p.address - at)}x")
        fmt.append(TYPE_TABLE[p.type].struct_code[1:])
        at = p.address + p.registers
    return struct.Struct("".join(fmt))


@dataclass
class WriteResult:
    """What a write did: the value asked for, the value sent, and whether it was clamped."""

    point: str
    requested: float
    written: float
    clamped: bool
    attempts: int = 1


@dataclass
class Device:
    """A device (one unit id) read through a profile.

    ``now`` is the injected clock: samples are stamped with it at the read. A point the
    device refuses with "illegal data address" is marked unsupported (its samples are
    ``missing``) without marking the device dead; a block refused that way is split into
    single-point reads first. Samples also go to ``sink``, if one is given.
    """

    asset_id: str
    profile: Profile
    connection: ModbusConnection
    unit_id: int
    now: Callable[[], datetime]
    sink: SampleQueue | None = None
    latest: dict[str, Sample] = field(default_factory=dict)
    health: Health = Health.OFFLINE
    unsupported: set[str] = field(default_factory=set)
    clamps: int = 0
    write_failures: int = 0
    _blocks: dict[PollClass, list[ReadBlock]] = field(default_factory=dict, init=False)
    _sf: dict[str, int] = field(default_factory=dict, init=False)
    _since: dict[str, tuple[int | float | str, datetime]] = field(default_factory=dict,
                                                                  init=False)

    def __post_init__(self) -> None:
        for pc in PollClass:
            self._blocks[pc] = plan_reads(p for p in self.profile.points if p.poll == pc)
        self._by_name = {p.name: p for p in self.profile.points}
        self._sf_names = {p.scale_register for p in self.profile.points if p.scale_register}
        self._structs: dict[tuple[Table, int, int], struct.Struct | None] = {}

    # -- reading ----------------------------------------------------------------------------

    def _split(self, poll_class: PollClass, block: ReadBlock) -> list[ReadBlock]:
        singles = [ReadBlock(block.table, p.address, p.registers, (p,)) for p in block.points]
        blocks = self._blocks[poll_class]
        i = blocks.index(block)
        self._blocks[poll_class] = blocks[:i] + singles + blocks[i + 1:]
        return singles

    def _missing(self, p: Point, ts: datetime) -> Sample:
        return Sample(self.asset_id, p.name, None, p.unit, ts, Quality.MISSING)

    def _frozen(self, p: Point, raw: int | float | str, ts: datetime) -> bool:
        if p.frozen_after_s is None:
            return False
        prev = self._since.get(p.name)
        if prev is None or prev[0] != raw:
            self._since[p.name] = (raw, ts)
            return False
        return (ts - prev[1]).total_seconds() > p.frozen_after_s

    def _decode(self, p: Point, raw: int | float | str, ts: datetime) -> Sample:
        if isinstance(raw, str) or is_not_implemented(raw, p.type, p.invalid):
            return self._missing(p, ts)
        sf = 0
        if p.scale_register is not None:
            if p.scale_register not in self._sf:
                return self._missing(p, ts)  # cannot scale without its scale factor
            sf = self._sf[p.scale_register]
        value = float(raw) * p.gain(sf)
        bad = not math.isfinite(value) or (
            (p.valid_min is not None and value < p.valid_min)
            or (p.valid_max is not None and value > p.valid_max))
        quality = Quality.BAD if bad else (
            Quality.STALE if self._frozen(p, raw, ts) else Quality.GOOD)
        return Sample(self.asset_id, p.name, value, p.unit, ts, quality)

    async def _read_block(self, poll_class: PollClass, block: ReadBlock,
                          raws: dict[str, tuple[int | float | str, datetime]]) -> int:
        """Read one block into ``raws``; returns the number of failed requests."""
        if all(p.name in self.unsupported for p in block.points):
            return 0
        try:
            words = await self.connection.read(block.table, block.start, block.count,
                                               self.unit_id)
        except ExceptionReply as exc:
            if exc.code != ILLEGAL_ADDRESS:
                raise
            if len(block.points) > 1:
                failed = 0
                for single in self._split(poll_class, block):
                    failed += await self._read_block(poll_class, single, raws)
                return failed
            p = block.points[0]
            log.warning("%s: point %s (%s %d) is not supported by the device", self.asset_id,
                        p.name, p.table.value, p.address)
            self.unsupported.add(p.name)
            return 0
        ts = self.now()
        key = (block.table, block.start, block.count)
        if key not in self._structs:
            self._structs[key] = block_struct(block, self.profile)
        codec = self._structs[key]
        if codec is not None:  # the fast path: one unpack for the whole block
            values = codec.unpack(struct.pack(f">{block.count}H", *words))
            for p, raw in zip(block.points, values, strict=True):
                raws[p.name] = (raw, ts)
            return 0
        for p in block.points:
            off = p.address - block.start
            raws[p.name] = (decode(words[off : off + p.registers], p.type,
                                   self.profile.order_of(p)), ts)
        return 0

    async def poll(self, poll_class: PollClass = PollClass.FAST) -> dict[str, Sample]:
        """Read every point of a poll class; a failed read gives samples of quality missing."""
        raws: dict[str, tuple[int | float | str, datetime]] = {}
        failed = 0
        blocks = list(self._blocks[poll_class])
        for block in blocks:
            try:
                failed += await self._read_block(poll_class, block, raws)
            except DeviceError as exc:
                log.debug("%s: %s", self.asset_id, exc)
                failed += 1
        # scale factors first, then every value (a value needs its factor of this poll)
        for name in self._sf_names & raws.keys():
            raw = raws[name][0]
            if isinstance(raw, int) and not is_not_implemented(raw, self._by_name[name].type):
                self._sf[name] = raw
        ts_now = self.now()
        out: dict[str, Sample] = {}
        for block in blocks:
            for p in block.points:
                got = raws.get(p.name)
                out[p.name] = (self._decode(p, got[0], got[1]) if got is not None
                               else self._missing(p, ts_now))
        if blocks:
            live = [b for b in blocks if not all(p.name in self.unsupported for p in b.points)]
            self.health = (Health.ONLINE if failed == 0 else
                           Health.OFFLINE if failed >= max(1, len(live)) else Health.DEGRADED)
        self.latest.update(out)
        if self.sink is not None:
            self.sink.put_many(list(out.values()))
        return out

    def value(self, point_name: str) -> float | None:
        """The latest good value of a point (or of a house name the profile aliases), or None."""
        s = self.latest.get(point_name)
        if s is None and point_name in self.profile.aliases:
            alias = self.profile.aliases[point_name]
            v = self.value(alias.point)
            return None if v is None else v * alias.factor
        return s.value if s is not None and s.usable else None

    # -- writing ----------------------------------------------------------------------------

    def _encode_write(self, p: Point, value: float) -> tuple[list[int], float, bool]:
        if p.access is not Access.READ_WRITE:
            raise PermissionError(f"{self.asset_id}: point {p.name} is read-only")
        if not math.isfinite(value):
            raise ValueError(f"{self.asset_id}.{p.name}: refusing to write {value}")
        sf = 0
        if p.scale_register is not None:
            if p.scale_register not in self._sf:
                raise DeviceError(f"{self.asset_id}.{p.name}: its scale factor "
                                  f"{p.scale_register} has not been read yet")
            sf = self._sf[p.scale_register]
        lo, hi = p.writable_range(sf)
        sent = min(max(value, lo), hi)
        clamped = sent != value
        if clamped:
            self.clamps += 1
            log.warning("%s.%s: setpoint %.1f clamped to %.1f (allowed [%.1f, %.1f])",
                        self.asset_id, p.name, value, sent, lo, hi)
        words = encode(sent / p.gain(sf), p.type, self.profile.order_of(p), p.length)
        return words, sent, clamped

    async def write(self, point_name: str, value: float, *, verify: bool = True,
                    deadline_s: float | None = None) -> WriteResult:
        """Write an engineering value to a writable point, clamped to its allowed range.

        With ``verify`` the register is read back and must hold what was sent; a failed or
        mismatched write is retried until ``deadline_s`` (default: 3 × the request timeout)
        and then raises :class:`WriteError`.
        """
        p = self._by_name.get(point_name)
        if p is None:
            raise KeyError(f"profile {self.profile.name} has no point {point_name!r}")
        words, sent, clamped = self._encode_write(p, value)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (deadline_s if deadline_s is not None
                                  else 3 * self.connection.timeout_s)
        attempts = 0
        last: Exception | None = None
        while True:
            attempts += 1
            try:
                await self.connection.write(p.address, words, self.unit_id)
                if not verify:
                    return WriteResult(point_name, value, sent, clamped, attempts)
                back = await self.connection.read(p.table, p.address, p.registers, self.unit_id)
                if back == words:
                    return WriteResult(point_name, value, sent, clamped, attempts)
                last = WriteError(f"{self.asset_id}.{point_name}: read back {back}, "
                                  f"wrote {words}")
            except DeviceError as exc:
                last = exc
            if loop.time() >= deadline:
                self.write_failures += 1
                raise WriteError(f"{self.asset_id}.{point_name} = {sent:.1f} failed after "
                                 f"{attempts} attempt(s): {last}") from last
            await asyncio.sleep(min(0.05 * attempts, 0.5))
