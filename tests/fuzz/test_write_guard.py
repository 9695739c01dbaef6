"""The Modbus write guard: writes only to points the profile declares writable, and only
within the range it allows.

Fuzzed in memory first (generated profiles, arbitrary values: NaN, infinities, huge, at the
ends), then held against real simulated devices over Modbus TCP: a device that takes any
register it is sent (no checks of its own) holds nothing the profile forbids, and its
registers are unchanged after every refused write. Last, a source scan: nothing but
``Device.write`` sends a Modbus write.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers import Device, ModbusConnection, PollClass, load_profile
from drivers.capabilities import set_active_power_limit_w, set_battery_power_w
from drivers.device import WriteRefusedError
from drivers.profile import Access, Point, Profile, Table
from drivers.registers import TYPE_TABLE, RegisterType, WordOrder
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit
from tests.conftest import ROOT, shipped_profiles
from tests.fuzz import FUZZ
from tests.fuzz.test_decode_fuzz import SENTINELS, oracle_raw

NUMERIC = [t for t in RegisterType if t is not RegisterType.STRING]
T0 = datetime(2026, 4, 15, tzinfo=UTC)
NOT_FINITE = [math.nan, math.inf, -math.inf]

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([*NOT_FINITE, 0.0, -0.0, 1e300, -1e300, 2.0**64, 2.0**63, 2.0**32,
                     65535.0, 65536.0, -32768.0, 4294967295.0]),
    st.integers(-(2**70), 2**70).map(float))


# -- in memory: what would be sent ---------------------------------------------------------

class Wire:
    """A connection stand-in that keeps the registers written, and reads them back."""

    timeout_s = 0.05

    def __init__(self, regs: dict[int, int] | None = None) -> None:
        self.regs = dict(regs or {})
        self.writes: list[tuple[int, list[int]]] = []

    async def write(self, address: int, words: list[int], unit_id: int) -> None:
        self.writes.append((address, list(words)))
        for i, w in enumerate(words):
            self.regs[address + i] = w

    async def read(self, table: Table, address: int, count: int, unit_id: int) -> list[int]:
        return [self.regs.get(a, 0) for a in range(address, address + count)]


@dataclass
class Target:
    profile: Profile
    point: Point
    sf: int | None

    def __repr__(self) -> str:
        return f"Target({self.point.model_dump(exclude_defaults=True)}, sf={self.sf})"


@st.composite
def targets(draw: st.DrawFn) -> Target:
    rtype = draw(st.sampled_from(NUMERIC))
    info = TYPE_TABLE[rtype]
    scale = draw(st.one_of(st.sampled_from([1.0, 0.1, 0.001, 10.0, -1.0, 1e-4]),
                           st.floats(1e-6, 1e6)))
    sf = draw(st.none() | st.integers(-10, 10))
    gain = scale * 10.0 ** (sf or 0)
    ends = sorted((info.min_value * gain, info.max_value * gain))
    bound = st.none() | st.floats(ends[0], ends[1]) | st.sampled_from(ends)
    lo, hi = draw(bound), draw(bound)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    invalid = None
    if rtype is not RegisterType.F32 and draw(st.booleans()):
        invalid = (int(info.max_value), int(info.min_value) if info.min_value else 0x7FFF)
    point = Point(name="sp", table=Table.HOLDING, address=10, type=rtype,
                  word_order=draw(st.sampled_from([None, *WordOrder])), scale=scale,
                  scale_register=None if sf is None else "sf", access=Access.READ_WRITE,
                  write_min=lo, write_max=hi, invalid=invalid)
    points = [point, Point(name="ro", table=Table.HOLDING, address=0, type=rtype, scale=scale)]
    if sf is not None:
        points.append(Point(name="sf", table=Table.INPUT, address=0, type=RegisterType.I16))
    return Target(Profile(name="fuzz", kind="pv", points=tuple(points)), point, sf)


def _device(t: Target, wire: Wire) -> Device:
    dev = Device(asset_id="pv9", profile=t.profile, connection=wire,  # type: ignore[arg-type]
                 unit_id=1, now=lambda: T0)
    if t.sf is not None:
        dev._sf["sf"] = t.sf  # as a poll of the scale factor would have left it
    return dev


@FUZZ
@given(t=targets(), value=values)
def test_a_write_is_refused_or_lands_inside_the_allowed_range(t: Target, value: float) -> None:
    note(repr(t))
    wire = Wire({10 + i: 0x1234 for i in range(4)})
    before = dict(wire.regs)
    dev = _device(t, wire)
    p = t.point
    lo, hi = p.writable_range(t.sf or 0)
    try:
        res = asyncio.run(dev.write("sp", value))
    except WriteRefusedError as exc:
        assert wire.writes == [] and wire.regs == before  # nothing was sent
        text = str(exc)
        assert "pv9.sp" in text and "nothing written" in text
        if not math.isfinite(value):
            assert str(value) in text and f"allowed [{lo:g}, {hi:g}]" in text
        else:  # only a range no register value fits is refused
            gain = p.gain(t.sf or 0)
            assert hi - lo < 3 * abs(gain) or p.type is RegisterType.F32, (text, lo, hi)
        return
    assert math.isfinite(value), "a NaN or an infinity was written"
    assert len(wire.writes) == 1
    _, words = wire.writes[0]
    raw = oracle_raw(words, p.type, t.profile.order_of(p))
    held = raw * p.gain(t.sf or 0)
    assert lo <= held <= hi, (value, held, lo, hi)
    markers = set(p.invalid) if p.invalid is not None else {SENTINELS[p.type]}
    assert raw not in markers, "a 'no value' marker was written"
    assert res.written == held
    assert res.clamped == (not lo <= value <= hi)
    want = min(max(value, lo), hi)
    step = abs(p.gain(t.sf or 0))
    if p.type is RegisterType.F32:
        assert held == pytest.approx(want, rel=2**-22, abs=step * 2**-148)
    else:  # the nearest count, or the next one in (an end or a marker in the way)
        assert abs(held - want) <= 1.5 * step * (1 + 1e-9) + abs(want) * 1e-15


@FUZZ
@given(t=targets(), value=values)
def test_a_read_only_point_is_never_written(t: Target, value: float) -> None:
    wire = Wire()
    with pytest.raises(PermissionError, match=r"pv9\.ro: the point is read-only"):
        asyncio.run(_device(t, wire).write("ro", value))
    assert wire.writes == []


@FUZZ
@given(scale=st.floats(), write_min=st.none() | st.floats(), write_max=st.none() | st.floats(),
       rtype=st.sampled_from(NUMERIC))
def test_a_profile_range_is_numbers_or_refused(scale: float, write_min: float | None,
                                               write_max: float | None,
                                               rtype: RegisterType) -> None:
    try:
        p = Point(name="sp", table=Table.HOLDING, address=0, type=rtype, access=Access.READ_WRITE,
                  scale=scale, write_min=write_min, write_max=write_max)
    except ValidationError:
        return
    lo, hi = p.writable_range()
    assert math.isfinite(p.scale) and p.scale != 0
    assert not math.isnan(lo) and not math.isnan(hi) and lo <= hi
    if write_min is not None:
        assert lo >= write_min  # a NaN bound must not silently open the range
    if write_max is not None:
        assert hi <= write_max


# -- what the fuzzers found, kept as plain tests -------------------------------------------

def _u32_limit(**kw: Any) -> Target:
    p = Point(name="sp", table=Table.HOLDING, address=10, type=RegisterType.U32,
              access=Access.READ_WRITE, **kw)
    return Target(Profile(name="fuzz", kind="pv", points=(p,)), p, None)


def test_a_clamp_to_the_top_of_u32_does_not_write_the_no_value_marker() -> None:
    # found (minimal: a u16 with no range, 65535 requested): the clamp to the type's end
    # wrote 0xFFFF, SunSpec's "not implemented", which reads back as missing; here the
    # generic PV limit's u32: 5e9 W
    wire = Wire()
    res = asyncio.run(_device(_u32_limit(write_min=0), wire).write("sp", 5e9))
    assert res.clamped and res.written == 4294967294.0
    assert wire.writes == [(10, [0xFFFF, 0xFFFE])]


def test_rounding_to_a_count_never_goes_past_write_max() -> None:
    # found: a u16 with write_max 1.5 asked for 2.0 was sent raw 2 (clamped to 1.5, then
    # rounded up past it)
    p = Point(name="sp", table=Table.HOLDING, address=10, type=RegisterType.U16,
              access=Access.READ_WRITE, write_max=1.5)
    wire = Wire()
    res = asyncio.run(_device(Target(Profile(name="fuzz", kind="pv", points=(p,)), p, None),
                              wire).write("sp", 2.0))
    assert res.clamped and res.written == 1.0
    assert wire.writes == [(10, [1])]
    res = asyncio.run(_device(_u32_limit(scale=2.0, write_max=1003), wire).write("sp", 1003.0))
    assert res.written == 1002.0 and not res.clamped  # 1003 / 2 = 501.5 rounds to 502


def test_a_clamp_to_the_top_of_u64_is_written_not_refused() -> None:
    # found: with no write range, a u64 point clamped 2^64 to float(2^64 - 1) = 2^64, which
    # encode() refused (RegisterCodecError): the write failed instead of being clamped
    p = Point(name="sp", table=Table.HOLDING, address=10, type=RegisterType.U64,
              access=Access.READ_WRITE)
    wire = Wire()
    res = asyncio.run(_device(Target(Profile(name="fuzz", kind="pv", points=(p,)), p, None),
                              wire).write("sp", 2.0**70))
    assert res.clamped
    assert wire.writes == [(10, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE])]  # not the all-ones marker


def test_a_nan_write_bound_in_a_profile_is_refused() -> None:
    # found: scale = .inf loaded; so did write_max = .nan, which max()/min() ignore (the
    # allowed range silently became the type's); and write_min above write_max
    with pytest.raises(ValidationError, match="scale"):
        Point(name="sp", table=Table.HOLDING, address=0, type=RegisterType.U16, scale=math.inf)
    with pytest.raises(ValidationError, match="write_max"):
        Point(name="sp", table=Table.HOLDING, address=0, type=RegisterType.U16,
              access=Access.READ_WRITE, write_max=math.nan)
    with pytest.raises(ValidationError, match="write_min"):
        Point(name="sp", table=Table.HOLDING, address=0, type=RegisterType.U16,
              access=Access.READ_WRITE, write_min=10, write_max=5)


# -- over Modbus TCP: a device that takes anything -----------------------------------------

class Permissive(SimUnit):
    """A device that stores every register it is sent, with no checks of its own (so the
    guard must be ours), and answers reads from what it holds."""

    def __init__(self, profile: Profile, regs: dict[int, int]) -> None:
        super().__init__(profile, dict, lambda point, value: None)
        self.holding = regs
        self.writes: list[tuple[int, list[int]]] = []

    def read(self, table: Table, address: int, count: int) -> list[int]:
        if table is Table.INPUT:
            return [0] * count
        return [self.holding.get(a, 0) for a in range(address, address + count)]

    def write(self, address: int, words: list[int]) -> None:
        self.writes.append((address, list(words)))
        for i, w in enumerate(words):
            self.holding[address + i] = w


def _registers_of(profile: Profile) -> dict[int, int]:
    """Every holding register of the profile, set to a recognisable word."""
    return {p.address + i: 0x0102 for p in profile.points if p.table is Table.HOLDING
            for i in range(p.registers)}


@asynccontextmanager
async def served(profile: Profile) -> AsyncIterator[tuple[Device, Permissive]]:
    unit = Permissive(profile, _registers_of(profile))
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={1: unit})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port, timeout_s=1.0)
    dev = Device(asset_id="dev1", profile=profile, connection=conn, unit_id=1,
                 now=lambda: datetime.now(UTC))
    try:
        yield dev, unit
    finally:
        conn.close()
        await server.stop()


def _writable(profile: Profile) -> list[Point]:
    return [p for p in profile.points if p.access is Access.READ_WRITE]


@pytest.mark.parametrize("name", shipped_profiles())
async def test_refused_writes_leave_the_device_registers_unchanged(name: str) -> None:
    profile = load_profile(name)
    async with served(profile) as (dev, unit):
        await dev.poll(PollClass.ONCE)
        before = dict(unit.holding)
        for p in _writable(profile):
            for value in NOT_FINITE:
                with pytest.raises(WriteRefusedError) as exc:
                    await dev.write(p.name, value)
                lo, hi = p.writable_range()
                assert f"dev1.{p.name}: refusing to write {value}" in str(exc.value)
                assert f"allowed [{lo:g}, {hi:g}]" in str(exc.value)
        for p in profile.points:
            if p.access is not Access.READ_WRITE:
                with pytest.raises(PermissionError, match="read-only"):
                    await dev.write(p.name, 1.0)
        with pytest.raises(KeyError, match="no point"):
            await dev.write("no_such_point", 1.0)
        assert unit.writes == []
        assert unit.holding == before


@pytest.mark.parametrize("name", shipped_profiles())
async def test_a_setpoint_outside_the_range_reaches_the_device_clamped(name: str) -> None:
    profile = load_profile(name)
    async with served(profile) as (dev, unit):
        for p in _writable(profile):
            lo, hi = p.writable_range()
            for value in (lo - 1e6 * abs(p.scale) - 1, hi + 1e6 * abs(p.scale) + 1, -1e300,
                          1e300):
                res = await dev.write(p.name, value)
                assert res.clamped, (p.name, value)
                words = [unit.holding[p.address + i] for i in range(p.registers)]
                held = oracle_raw(words, p.type, profile.order_of(p)) * p.scale
                assert lo <= held <= hi, (p.name, value, held)
                assert held == res.written
        assert dev.clamps == 4 * len(_writable(profile))


async def test_the_controller_write_paths_refuse_nan_before_the_wire() -> None:
    """The capability helpers the controller writes through end in the same guard."""
    for name, write in (("generic-pv", set_active_power_limit_w),
                        ("generic-battery", set_battery_power_w)):
        profile = load_profile(name)
        async with served(profile) as (dev, unit):
            before = dict(unit.holding)
            for value in NOT_FINITE:
                with pytest.raises(WriteRefusedError):
                    await write(dev, value, revert_s=300)
            assert unit.writes == [] and unit.holding == before


@FUZZ
@given(name=st.sampled_from(shipped_profiles()), data=st.data())
def test_over_tcp_every_write_is_refused_unchanged_or_in_range(name: str,
                                                               data: st.DataObject) -> None:
    profile = load_profile(name)
    p = data.draw(st.sampled_from(profile.points), label="point")
    value = data.draw(values, label="value")

    async def go() -> None:
        async with served(profile) as (dev, unit):
            before = dict(unit.holding)
            try:
                await dev.write(p.name, value)
            except (WriteRefusedError, PermissionError):
                assert unit.writes == [] and unit.holding == before
                assert p.access is not Access.READ_WRITE or not math.isfinite(value)
                return
            lo, hi = p.writable_range()
            words = [unit.holding[p.address + i] for i in range(p.registers)]
            assert lo <= oracle_raw(words, p.type, profile.order_of(p)) * p.scale <= hi
            assert [a for a, _ in unit.writes] == [p.address]

    asyncio.run(go())


# -- no other path writes registers --------------------------------------------------------

WRITE_CALLS = re.compile(r"write_registers?\(|\.write_register|connection\.write\(|"
                         r"conn\.write\(|WRITE_MULTIPLE|WRITE_SINGLE|\b0x10\b.*submit")
# where a Modbus write may be built: the client's framing and the guarded writer (the
# simulator's server side answers writes; it sends none, and matches nothing here)
ALLOWED = {"drivers/connection.py", "drivers/device.py"}


def test_only_the_guarded_writer_sends_modbus_writes() -> None:
    found: list[str] = []
    for package in ("drivers", "vpp", "sim", "forecasting"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if WRITE_CALLS.search(line):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "Modbus writes outside Device.write:\n" + "\n".join(found)
    device = (ROOT / "drivers" / "device.py").read_text(encoding="utf-8")
    assert device.count("self.connection.write(") == 1  # in Device.write, after the guard

