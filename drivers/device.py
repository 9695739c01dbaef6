"""A device read through its profile: coalesced reads, decoded samples with quality,
verified writes."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import repeat
from operator import le, mul

from drivers.connection import ILLEGAL_ADDRESS, DeviceError, ExceptionReply, ModbusConnection
from drivers.profile import MAX_READ_REGISTERS, Access, Point, PollClass, Profile, Table
from drivers.registers import TYPE_TABLE, RegisterType, WordOrder, decode, encode
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


_ANY = (-sys.float_info.max, sys.float_info.max)  # finite: inf and NaN fail the range test


class BlockCodec:
    """A read block's constants, found once: one struct for the whole reply, and per point
    its name, unit, "no value" markers, gain and valid range, so that a poll whose values
    are all plausible is decoded and checked without a Python step per point."""

    __slots__ = ("block", "frozen", "gains", "hi", "invalid", "lo", "names", "points",
                 "scale_factors", "sf_of", "struct", "text", "units")

    def __init__(self, block: ReadBlock, profile: Profile) -> None:
        pts = block.points
        self.block = block
        self.points = pts
        self.names = tuple(p.name for p in pts)
        self.units = tuple(p.unit for p in pts)
        self.struct = block_struct(block, profile)
        self.text = any(p.type is RegisterType.STRING for p in pts)  # always point by point
        self.invalid = tuple(
            frozenset(p.invalid) if p.invalid is not None else
            frozenset() if TYPE_TABLE[p.type].not_implemented is None else
            frozenset((TYPE_TABLE[p.type].not_implemented,)) for p in pts)
        self.lo = [_ANY[0] if p.valid_min is None else p.valid_min for p in pts]
        self.hi = [_ANY[1] if p.valid_max is None else p.valid_max for p in pts]
        self.sf_of = tuple(p.scale_register for p in pts)
        self.gains: tuple[tuple[int, ...], list[float]] | None = None
        self.frozen = tuple((i, p.name, p.frozen_after_s) for i, p in enumerate(pts)
                            if p.frozen_after_s is not None)
        # the block's own points that other points take their scale factor from
        self.scale_factors = tuple(i for i, p in enumerate(pts) if p.type is RegisterType.I16
                                   and any(q.scale_register == p.name for q in profile.points))

    def unpack(self, frame: bytes, profile: Profile) -> tuple[int | float | str, ...]:
        """The raw values of the block's points from a read reply (data at offset 9)."""
        if self.struct is not None:
            return self.struct.unpack_from(frame, 9)  # type: ignore[no-any-return]
        words = struct.unpack_from(f">{self.block.count}H", frame, 9)
        start = self.block.start
        return tuple(decode(list(words[p.address - start : p.address - start + p.registers]),
                            p.type, profile.order_of(p)) for p in self.points)

    def gains_for(self, sf: dict[str, int]) -> list[float]:
        """Engineering value per raw count of each point, with the scale factors in ``sf``
        (NaN where a point's factor is unknown, which fails the range test)."""
        key = tuple(sf.get(n, _NO_SF) if n else 0 for n in self.sf_of)
        if self.gains is None or self.gains[0] != key:
            self.gains = (key, [math.nan if e == _NO_SF else p.gain(e)
                                for p, e in zip(self.points, key, strict=True)])
        return self.gains[1]


_NO_SF = -(1 << 20)  # a scale factor not (yet) known


class Latest(Mapping[str, Sample]):
    """The newest sample of each point of a device (or of one poll), built when asked for."""

    __slots__ = ("_dev", "_names")

    def __init__(self, dev: Device, names: Collection[str] | None = None) -> None:
        self._dev = dev
        self._names: Collection[str] = dev._value.keys() if names is None else names

    def __getitem__(self, name: str) -> Sample:
        d = self._dev
        if name not in self._names or name not in d._value:
            raise KeyError(name)
        return Sample(d.asset_id, name, d._value[name], d._unit[name], d._ts[name],
                      d._quality[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


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
    health: Health = Health.OFFLINE
    unsupported: set[str] = field(default_factory=set)
    clamps: int = 0
    write_failures: int = 0
    _blocks: dict[PollClass, list[BlockCodec]] = field(default_factory=dict, init=False)
    _sf: dict[str, int] = field(default_factory=dict, init=False)
    _since: dict[str, tuple[int | float | str, datetime]] = field(default_factory=dict,
                                                                  init=False)

    def __post_init__(self) -> None:
        for pc in PollClass:
            self._blocks[pc] = [
                BlockCodec(b, self.profile)
                for b in plan_reads(p for p in self.profile.points if p.poll == pc)]
        self._by_name = {p.name: p for p in self.profile.points}
        self._unit = {p.name: p.unit for p in self.profile.points}
        self._value: dict[str, float | None] = {}
        self._quality: dict[str, Quality] = {}
        self._ts: dict[str, datetime] = {}

    @property
    def latest(self) -> Latest:
        """The newest sample of every point read so far."""
        return Latest(self)

    # -- reading ----------------------------------------------------------------------------

    def _split(self, poll_class: PollClass, codec: BlockCodec) -> list[BlockCodec]:
        b = codec.block
        singles = [BlockCodec(ReadBlock(b.table, p.address, p.registers, (p,)), self.profile)
                   for p in b.points]
        codecs = self._blocks[poll_class]
        i = codecs.index(codec)
        self._blocks[poll_class] = codecs[:i] + singles + codecs[i + 1:]
        return singles

    def _frozen(self, name: str, after_s: float, raw: int | float | str, ts: datetime) -> bool:
        prev = self._since.get(name)
        if prev is None or prev[0] != raw:
            self._since[name] = (raw, ts)
            return False
        return (ts - prev[1]).total_seconds() > after_s

    @staticmethod
    def _check(codec: BlockCodec, raw: tuple[int | float | str, ...],
               gains: list[float]) -> tuple[list[float | None], list[Quality]]:
        """Values and qualities of one block's raw values, point by point."""
        values: list[float | None] = []
        quals: list[Quality] = []
        for i, r in enumerate(raw):
            g = gains[i]
            if isinstance(r, str) or r in codec.invalid[i] or r != r or g != g:
                values.append(None)  # text, a "no value" marker, NaN, or no scale factor
                quals.append(Quality.MISSING)
                continue
            v = r * g
            values.append(v)
            quals.append(Quality.GOOD if codec.lo[i] <= v <= codec.hi[i] else Quality.BAD)
        return values, quals

    async def _read(self, poll_class: PollClass, codec: BlockCodec,
                    out: list[tuple[BlockCodec, tuple[int | float | str, ...] | None,
                                    datetime]]) -> int:
        """Read one block into ``out``; returns the number of failed requests."""
        if self.unsupported and all(n in self.unsupported for n in codec.names):
            out.append((codec, None, self.now()))
            return 0
        b = codec.block
        try:
            frame = await self.connection.read_bytes(b.table, b.start, b.count, self.unit_id)
        except ExceptionReply as exc:
            if exc.code != ILLEGAL_ADDRESS:
                log.debug("%s: %s", self.asset_id, exc)
                out.append((codec, None, self.now()))
                return 1
            if len(b.points) > 1:
                failed = 0
                for single in self._split(poll_class, codec):
                    failed += await self._read(poll_class, single, out)
                return failed
            p = b.points[0]
            log.warning("%s: point %s (%s %d) is not supported by the device", self.asset_id,
                        p.name, p.table.value, p.address)
            self.unsupported.add(p.name)
            out.append((codec, None, self.now()))
            return 0
        except DeviceError as exc:
            log.debug("%s: %s", self.asset_id, exc)
            out.append((codec, None, self.now()))
            return 1
        out.append((codec, codec.unpack(frame, self.profile), self.now()))
        return 0

    async def poll(self, poll_class: PollClass = PollClass.FAST) -> Latest:
        """Read every point of a poll class; returns this poll's samples. A failed read
        gives samples of quality missing; nothing is passed on as good unless it was read
        now, is no "no value" marker and lies inside its physical range."""
        reads: list[tuple[BlockCodec, tuple[int | float | str, ...] | None, datetime]] = []
        failed = 0
        codecs = self._blocks[poll_class]
        for codec in codecs:
            failed += await self._read(poll_class, codec, reads)
        sf = self._sf  # scale factors first: a value needs its factor of this poll
        for codec, raw, _ in reads:
            if raw is not None:
                for i in codec.scale_factors:
                    r = raw[i]
                    if isinstance(r, int) and r not in codec.invalid[i]:
                        sf[codec.names[i]] = r
        names: list[str] = []
        for codec, raw, ts in reads:
            n = len(codec.names)
            if raw is None:
                values: Sequence[float | None] = [None] * n
                quals = [Quality.MISSING] * n
            else:
                gains = codec.gains_for(sf)
                if codec.text or any(map(frozenset.__contains__, codec.invalid, raw)):
                    values, quals = self._check(codec, raw, gains)
                else:
                    scaled: list[float] = list(map(mul, raw, gains))  # type: ignore[arg-type]
                    values = scaled
                    if all(map(le, codec.lo, scaled)) and all(map(le, scaled, codec.hi)):
                        quals = [Quality.GOOD] * n
                    else:  # out of range, NaN, or a scale factor not known
                        values, quals = self._check(codec, raw, gains)
                for i, name, after_s in codec.frozen:
                    if quals[i] is Quality.GOOD and self._frozen(name, after_s, raw[i], ts):
                        quals[i] = Quality.STALE
            self._value.update(zip(codec.names, values, strict=True))
            self._quality.update(zip(codec.names, quals, strict=True))
            self._ts.update(zip(codec.names, repeat(ts, n), strict=True))
            names.extend(codec.names)
            if self.sink is not None:
                self.sink.put_block(self.asset_id, codec.names, codec.units, values, quals, ts)
        if codecs:
            live = [c for c in codecs
                    if not all(n in self.unsupported for n in c.names)]
            self.health = (Health.ONLINE if failed == 0 else
                           Health.OFFLINE if failed >= max(1, len(live)) else Health.DEGRADED)
        return Latest(self, names)

    def value(self, point_name: str) -> float | None:
        """The latest good value of a point (or of a house name the profile aliases), or None."""
        q = self._quality.get(point_name)
        if q is None:
            alias = self.profile.aliases.get(point_name)
            if alias is None:
                return None
            v = self.value(alias.point)
            return None if v is None else v * alias.factor
        return self._value[point_name] if q is Quality.GOOD else None

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
