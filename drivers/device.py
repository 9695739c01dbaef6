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
from operator import le, mul

from drivers.connection import ILLEGAL_ADDRESS, DeviceError, ExceptionReply, ModbusConnection
from drivers.profile import MAX_READ_REGISTERS, Access, Point, PollClass, Profile, Table
from drivers.registers import (
    SCALE_FACTOR_MAX,
    SCALE_FACTOR_MIN,
    TYPE_TABLE,
    RegisterType,
    WordOrder,
    decode,
    encode,
    nearest_raw,
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


class WriteRefusedError(WriteError, ValueError):
    """A write the profile does not allow, refused before anything is sent: a value that is
    not a finite number, or a point no register value of which lies in its allowed range.
    (A read-only point is refused with :class:`PermissionError`.)"""


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

    __slots__ = ("all_good", "block", "fixed_gains", "frozen", "gains", "hi", "invalid", "lo",
                 "names", "points", "scale_factors", "sf_of", "struct", "text", "units")

    def __init__(self, block: ReadBlock, profile: Profile) -> None:
        pts = block.points
        self.block = block
        self.points = pts
        self.names = tuple(p.name for p in pts)
        self.units = tuple(p.unit for p in pts)
        self.struct = block_struct(block, profile)
        self.text = any(p.type is RegisterType.STRING for p in pts)  # always point by point
        self.invalid = tuple(_markers(p) for p in pts)
        self.lo = [_ANY[0] if p.valid_min is None else p.valid_min for p in pts]
        self.hi = [_ANY[1] if p.valid_max is None else p.valid_max for p in pts]
        self.sf_of = tuple(p.scale_register for p in pts)
        # a block none of whose points has a scale-factor register has constant gains
        self.fixed_gains = None if any(self.sf_of) else [p.gain() for p in pts]
        self.gains: tuple[tuple[int, ...], list[float]] | None = None
        self.all_good = (Quality.GOOD,) * len(pts)
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
        if self.fixed_gains is not None:
            return self.fixed_gains
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
        self._names = names

    def _read_names(self) -> Collection[str]:
        if self._names is not None:
            return self._names
        last = self._dev._last
        return [n for n, (codec, _) in self._dev._where.items() if codec in last]

    def __getitem__(self, name: str) -> Sample:
        d = self._dev
        where = d._where.get(name)
        rec = None if where is None else d._last.get(where[0])
        if rec is None or (self._names is not None and name not in self._names):
            raise KeyError(name)
        codec, i = where  # type: ignore[misc]
        values, quals, ts = rec
        return Sample(d.asset_id, name, values[i], codec.units[i], ts, quals[i])

    def __iter__(self) -> Iterator[str]:
        return iter(self._read_names())

    def __len__(self) -> int:
        return len(self._read_names())


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
        # where each point's newest value is: its block, and its index there; a block's
        # newest read is kept whole (values, qualities, read time), one entry per block
        self._where: dict[str, tuple[BlockCodec, int]] = {
            n: (c, i) for codecs in self._blocks.values() for c in codecs
            for i, n in enumerate(c.names)}
        self._last: dict[BlockCodec, tuple[Sequence[float | None], Sequence[Quality],
                                           datetime]] = {}

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
        for single in singles:
            self._where[single.names[0]] = (single, 0)
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

    # A poll runs on the connection's callbacks: each reply is decoded where it arrives and
    # the next block's request is sent from there, with no task woken per block. ``poll()``
    # is the awaitable API over it; ``start_poll()`` is what the polling engine uses.

    def start_poll(self, poll_class: PollClass, done: Callable[[Latest | Exception], None],
                   ) -> None:
        """Start reading every point of a poll class; ``done`` gets this poll's samples (or
        the exception of a bug: a device's failure is a quality, never an exception)."""
        _PollRun(self, poll_class, done).step()

    async def poll(self, poll_class: PollClass = PollClass.FAST) -> Latest:
        """Read every point of a poll class; returns this poll's samples. A failed read
        gives samples of quality missing; nothing is passed on as good unless it was read
        now, is no "no value" marker and lies inside its physical range."""
        future: asyncio.Future[Latest] = asyncio.get_running_loop().create_future()

        def done(result: Latest | Exception) -> None:
            if future.done():
                return
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.start_poll(poll_class, done)
        return await future

    def _finish(self, reads: list[_Read], codecs: list[BlockCodec], failed: int) -> Latest:
        """Decode and check what a poll read, and keep it as the latest values."""
        sf = self._sf  # scale factors first: a value needs its factor of this poll
        for codec, raw, _ in reads:
            if raw is not None:
                for i in codec.scale_factors:
                    r = raw[i]
                    if isinstance(r, int) and r not in codec.invalid[i]:
                        if SCALE_FACTOR_MIN <= r <= SCALE_FACTOR_MAX:
                            sf[codec.names[i]] = r
                        else:  # not a factor (10^309 overflows): its values read missing
                            sf.pop(codec.names[i], None)
        names: list[str] = []
        for codec, raw, ts in reads:
            n = len(codec.names)
            quals: Sequence[Quality]
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
                        quals = codec.all_good
                    else:  # out of range, NaN, or a scale factor not known
                        values, quals = self._check(codec, raw, gains)
                for i, name, after_s in codec.frozen:
                    if quals[i] is Quality.GOOD and self._frozen(name, after_s, raw[i], ts):
                        quals = list(quals)
                        quals[i] = Quality.STALE
            self._last[codec] = (values, quals, ts)
            names.extend(codec.names)
            if self.sink is not None:
                self.sink.put_block(self.asset_id, codec.names, codec.units, values, quals, ts)
        if failed == 0:
            self.health = Health.ONLINE if codecs else self.health
        else:
            live = sum(1 for c in codecs if not all(n in self.unsupported for n in c.names))
            self.health = Health.OFFLINE if failed >= max(1, live) else Health.DEGRADED
        return Latest(self, names)

    def value(self, point_name: str) -> float | None:
        """The latest good value of a point (or of a house name the profile aliases), or None."""
        where = self._where.get(point_name)
        if where is None:
            alias = self.profile.aliases.get(point_name)
            if alias is None:
                return None
            v = self.value(alias.point)
            return None if v is None else v * alias.factor
        rec = self._last.get(where[0])
        if rec is None:
            return None
        i = where[1]
        return rec[0][i] if rec[1][i] is Quality.GOOD else None

    # -- writing ----------------------------------------------------------------------------

    def _encode_write(self, p: Point, value: float) -> tuple[list[int], float, bool]:
        """The registers to send for ``value`` [the point's unit], the engineering value they
        hold, and whether ``value`` was clamped.

        The write guard: only a ``rw`` point (else :class:`PermissionError`), only a finite
        number (else :class:`WriteRefusedError`, naming the asset, point, value and allowed
        range), clamped into the profile's range (logged and counted), then rounded to a
        register value whose engineering value is inside that range too and is no "no
        value" marker. Nothing is sent when it raises.
        """
        where = f"{self.asset_id}.{p.name}"
        if p.access is not Access.READ_WRITE:
            raise PermissionError(f"{where}: the point is read-only in profile "
                                  f"{self.profile.name}; nothing written")
        sf = 0
        if p.scale_register is not None:
            if p.scale_register not in self._sf:
                raise DeviceError(f"{where}: its scale factor "
                                  f"{p.scale_register} has not been read yet")
            sf = self._sf[p.scale_register]
        lo, hi = p.writable_range(sf)
        allowed = f"allowed [{lo:g}, {hi:g}]{' ' + p.unit if p.unit else ''}"
        if not math.isfinite(value):
            raise WriteRefusedError(f"{where}: refusing to write {value}: not a finite "
                                    f"number; {allowed}; nothing written")
        sent = min(max(value, lo), hi)
        clamped = sent != value
        words, written = self._fit(p, sent, sf, lo, hi, allowed)
        if clamped:
            self.clamps += 1
            log.warning("%s: setpoint %g clamped to %g (%s)", where, value, written, allowed)
        return words, written, clamped

    def _fit(self, p: Point, target: float, sf: int, lo: float, hi: float,
             allowed: str) -> tuple[list[int], float]:
        """Registers for ``target`` (inside [lo, hi]): the nearest raw value whose
        engineering value (raw × gain, as it is read back) stays inside [lo, hi] and is not
        one of the point's "no value" markers."""
        g = p.gain(sf)
        raw: int | float | None = None
        if p.type is not RegisterType.STRING and math.isfinite(g) and g != 0 and lo <= hi:
            raw = nearest_raw(target, g, lo, hi, p.type, _markers(p))
        if raw is None:
            raise WriteRefusedError(f"{self.asset_id}.{p.name}: no {p.type} register value "
                                    f"× {g:g} lies in the range ({allowed}); nothing written")
        return encode(raw, p.type, self.profile.order_of(p), p.length), raw * g

    async def write(self, point_name: str, value: float, *, verify: bool = True,
                    deadline_s: float | None = None) -> WriteResult:
        """Write an engineering value to a writable point, clamped to its allowed range
        (the write guard: :meth:`_encode_write`).

        With ``verify`` the register is read back and must hold what was sent; a failed or
        mismatched write is retried until ``deadline_s`` (default: 3 × the request timeout)
        and then raises :class:`WriteError`.
        """
        p = self._by_name.get(point_name)
        if p is None:
            raise KeyError(f"{self.asset_id}: profile {self.profile.name} has no point "
                           f"{point_name!r}; nothing written")
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


def _markers(p: Point) -> frozenset[int]:
    """The raw values that mean "no value" for a point: its own, else its type's sentinel."""
    if p.invalid is not None:
        return frozenset(p.invalid)
    sentinel = TYPE_TABLE[p.type].not_implemented
    return frozenset() if sentinel is None else frozenset((sentinel,))


_Read = tuple[BlockCodec, tuple[int | float | str, ...] | None, datetime]


class _PollRun:
    """One poll of one device, block after block, driven by the connection's callbacks."""

    __slots__ = ("codec", "codecs", "dev", "done", "failed", "i", "poll_class", "reads")

    def __init__(self, dev: Device, poll_class: PollClass,
                 done: Callable[[Latest | Exception], None]) -> None:
        self.dev = dev
        self.poll_class = poll_class
        self.done = done
        self.codecs = list(dev._blocks[poll_class])
        self.i = 0
        self.failed = 0
        self.reads: list[_Read] = []
        self.codec: BlockCodec | None = None

    def step(self) -> None:
        """Send the next block's read, or finish."""
        dev = self.dev
        try:
            while self.i < len(self.codecs):
                codec = self.codecs[self.i]
                if dev.unsupported and all(n in dev.unsupported for n in codec.names):
                    self.reads.append((codec, None, dev.now()))
                    self.i += 1
                    continue
                self.codec = codec
                b = codec.block
                dev.connection.submit_read(b.table, b.start, b.count, dev.unit_id, self.reply)
                return
            result: Latest | Exception = dev._finish(self.reads, self.codecs, self.failed)
        except Exception as exc:  # a bug: the caller must hear of it, not wait for ever
            log.exception("%s: poll failed", dev.asset_id)
            result = exc
        self.done(result)

    def reply(self, frame: bytes | None, error: DeviceError | None) -> None:
        dev, codec = self.dev, self.codec
        assert codec is not None
        try:
            if frame is not None:
                self.reads.append((codec, codec.unpack(frame, dev.profile), dev.now()))
                self.i += 1
            elif isinstance(error, ExceptionReply) and error.code == ILLEGAL_ADDRESS:
                if len(codec.points) > 1:  # split the block; read its points one by one
                    self.codecs[self.i : self.i + 1] = dev._split(self.poll_class, codec)
                else:
                    p = codec.points[0]
                    log.warning("%s: point %s (%s %d) is not supported by the device",
                                dev.asset_id, p.name, p.table.value, p.address)
                    dev.unsupported.add(p.name)
                    self.reads.append((codec, None, dev.now()))
                    self.i += 1
            else:
                log.debug("%s: %s", dev.asset_id, error)
                self.failed += 1
                self.reads.append((codec, None, dev.now()))
                self.i += 1
        except Exception as exc:  # a bug: report it and end this poll
            log.exception("%s: poll failed", dev.asset_id)
            self.done(exc)
            return
        self.step()
