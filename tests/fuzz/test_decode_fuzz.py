"""Register decoding under arbitrary register words, for every point a profile can declare.

Profiles are generated (types, word orders, scales, SunSpec scale-factor registers, "no
value" markers, physical ranges) and a device answers every read with arbitrary words.
The values and qualities ``Device`` gives are compared with an oracle written here from the
Modbus and SunSpec rules (not with ``drivers.registers``): a poll never raises, a good value
is always finite and inside its range, a marker, NaN or an unknown scale factor is missing.
In-range values encoded with the shared table come back within the scale's resolution.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

from drivers import Device, PollClass, Quality
from drivers.profile import Point, Profile, Table
from drivers.registers import (
    TYPE_TABLE,
    RegisterCodecError,
    RegisterType,
    WordOrder,
    decode,
    encode,
)
from tests.fuzz import FUZZ

NUMERIC = [t for t in RegisterType if t is not RegisterType.STRING]
SIGNED = {RegisterType.I16, RegisterType.I32, RegisterType.I64}
T0 = datetime(2026, 4, 15, tzinfo=UTC)

# words a device sends more often than chance would: sentinels, NaN and infinity halves
SPECIAL_WORDS = [0x0000, 0xFFFF, 0x8000, 0x7FFF, 0x7FC0, 0x7F80, 0xFF80, 0xFFC0, 0x0001]
words16 = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(SPECIAL_WORDS))
scales = st.one_of(
    st.sampled_from([1.0, 0.1, 0.01, 0.001, 0.0001, 10.0, 1000.0, -1.0, -0.1]),
    st.floats(1e-6, 1e6).flatmap(lambda s: st.sampled_from([s, -s])))


# -- the oracle ----------------------------------------------------------------------------

def oracle_raw(words: list[int], rtype: RegisterType, order: WordOrder) -> int | float:
    """The raw value of ``words``: registers high first after ``order``; two's complement
    for signed types; IEEE 754 single for f32."""
    ws = words if order is WordOrder.BIG else words[::-1]
    n = 0
    for w in ws:
        n = (n << 16) | w
    bits = 16 * len(ws)
    if rtype is RegisterType.F32:
        return float(struct.unpack(">f", n.to_bytes(4, "big"))[0])
    if rtype in SIGNED and n >= 1 << (bits - 1):
        n -= 1 << bits
    return n


SENTINELS: dict[RegisterType, int | None] = {  # SunSpec's "not implemented" values
    RegisterType.U16: 0xFFFF, RegisterType.I16: -0x8000, RegisterType.U32: 0xFFFF_FFFF,
    RegisterType.I32: -0x8000_0000, RegisterType.U64: 0xFFFF_FFFF_FFFF_FFFF,
    RegisterType.I64: -0x8000_0000_0000_0000, RegisterType.F32: None,
    RegisterType.BITFIELD16: 0xFFFF, RegisterType.BITFIELD32: 0xFFFF_FFFF,
}


def oracle(p: Point, raw: int | float, sf: int | None) -> tuple[float | None, Quality]:
    """What a point with raw value ``raw`` (and scale factor ``sf``, None: unknown) reads."""
    markers = set(p.invalid) if p.invalid is not None else {SENTINELS[p.type]} - {None}
    if raw != raw or raw in markers:  # NaN or "no value"
        return None, Quality.MISSING
    exponent = 0
    if p.scale_register is not None:
        if sf is None or not -10 <= sf <= 10:
            return None, Quality.MISSING  # a factor unknown, or outside SunSpec's -10..10
        exponent = sf
    value = raw * p.scale * 10.0**exponent
    lo = -math.inf if p.valid_min is None else p.valid_min
    hi = math.inf if p.valid_max is None else p.valid_max
    ok = math.isfinite(value) and lo <= value <= hi
    return value, Quality.GOOD if ok else Quality.BAD


# -- a device that answers with given registers ----------------------------------------------

class Registers:
    """A connection stand-in: every read is answered at once from ``regs``."""

    timeout_s = 0.1

    def __init__(self, regs: dict[tuple[Table, int], int]) -> None:
        self.regs = regs

    def submit_read(self, table: Table, address: int, count: int, unit_id: int,
                    deliver: Any) -> None:
        words = [self.regs.get((table, a), 0) for a in range(address, address + count)]
        deliver(bytes(9) + struct.pack(f">{count}H", *words), None)


def poll(profile: Profile, regs: dict[tuple[Table, int], int]) -> dict[str, Any]:
    dev = Device(asset_id="fz", profile=profile, connection=Registers(regs),  # type: ignore[arg-type]
                 unit_id=1, now=lambda: T0)
    out: list[Any] = []
    dev.start_poll(PollClass.FAST, out.append)  # the stand-in answers synchronously
    assert len(out) == 1
    assert not isinstance(out[0], Exception), out[0]
    return dict(out[0])


@dataclass
class Case:
    profile: Profile
    regs: dict[tuple[Table, int], int]
    sf_point: str | None

    def __repr__(self) -> str:  # what a failure prints: the points and their words
        points = [p.model_dump(exclude_defaults=True) for p in self.profile.points]
        return (f"Case(word_order={self.profile.word_order.value}, points={points}, "
                f"regs={self.regs})")


@st.composite
def point_specs(draw: st.DrawFn, name: str, with_sf: bool) -> dict[str, Any]:
    rtype = draw(st.sampled_from([*NUMERIC, RegisterType.STRING]))
    spec: dict[str, Any] = {"name": name, "table": draw(st.sampled_from(list(Table))),
                            "type": rtype}
    if rtype is RegisterType.STRING:
        spec["length"] = draw(st.integers(1, 4))
        return spec
    spec["word_order"] = draw(st.sampled_from([None, *WordOrder]))
    spec["scale"] = draw(scales)
    if with_sf and draw(st.booleans()):
        spec["scale_register"] = "sf"
    info = TYPE_TABLE[rtype]
    if rtype is not RegisterType.F32 and draw(st.booleans()):
        spec["invalid"] = tuple(draw(st.lists(
            st.integers(int(info.min_value), int(info.max_value)), min_size=1, max_size=3)))
    bound = st.none() | st.floats(-1e12, 1e12)
    lo, hi = draw(bound), draw(bound)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    spec["valid_min"], spec["valid_max"] = lo, hi
    return spec


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 4))
    with_sf = draw(st.booleans())
    specs = [draw(point_specs(f"p{i}", with_sf)) for i in range(n)]
    if with_sf:  # the SunSpec scale factor: an i16 power of ten, in a block of its own or not
        specs.insert(draw(st.integers(0, n)), {"name": "sf", "table": "holding",
                                               "type": RegisterType.I16})
    at = {Table.HOLDING: 0, Table.INPUT: 0}
    points = []
    for spec in specs:
        table = Table(spec["table"])
        at[table] += draw(st.sampled_from([0, 0, 1, 5]))  # adjacent (one block) or a hole
        p = Point(address=at[table], **spec)
        at[table] += p.registers
        points.append(p)
    profile = Profile(name="fuzz", kind="meter", word_order=draw(st.sampled_from(list(WordOrder))),
                      points=tuple(points))
    regs = {(p.table, p.address + i): draw(words16) for p in points for i in range(p.registers)}
    return Case(profile, regs, "sf" if with_sf else None)


@FUZZ
@given(case=cases())
def test_decoding_never_raises_and_never_passes_nan_or_inf_as_good(case: Case) -> None:
    note(repr(case))
    samples = poll(case.profile, case.regs)
    assert set(samples) == {p.name for p in case.profile.points}
    sf: int | None = None
    if case.sf_point is not None:
        p = case.profile.point(case.sf_point)
        raw = oracle_raw([case.regs[(p.table, p.address)]], RegisterType.I16, WordOrder.BIG)
        sf = None if raw == SENTINELS[RegisterType.I16] else int(raw)
    for p in case.profile.points:
        s = samples[p.name]
        if s.quality is Quality.GOOD:
            assert s.value is not None and math.isfinite(s.value), s
        if p.type is RegisterType.STRING:
            assert (s.value, s.quality) == (None, Quality.MISSING)
            continue
        words = [case.regs[(p.table, p.address + i)] for i in range(p.registers)]
        raw = oracle_raw(words, p.type, case.profile.order_of(p))
        value, quality = oracle(p, raw, sf)
        assert s.quality is quality, (p, words, raw, sf, s)
        if quality is Quality.GOOD:
            assert s.value == pytest.approx(value, rel=1e-12), (p, words, s)


@FUZZ
@given(data=st.data(), rtype=st.sampled_from(NUMERIC), order=st.sampled_from(list(WordOrder)),
       scale=scales, sf=st.none() | st.integers(-10, 10))
def test_in_range_values_round_trip_within_the_scale_resolution(
        data: st.DataObject, rtype: RegisterType, order: WordOrder, scale: float,
        sf: int | None) -> None:
    info = TYPE_TABLE[rtype]
    gain = scale * 10.0 ** (sf or 0)
    lo, hi = sorted((info.min_value * gain, info.max_value * gain))
    value = data.draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False), label="value")
    raw_wanted = value / gain
    if rtype is RegisterType.F32:
        assume(abs(raw_wanted) <= info.max_value)
    else:  # the float of a 64-bit type's end rounds beyond it: the range is the integers'
        assume(info.min_value <= round(raw_wanted) <= info.max_value)
    words = encode(raw_wanted, rtype, order)
    raw = oracle_raw(words, rtype, order)
    assume(raw != SENTINELS[rtype])  # the value that means "no value" cannot be sent
    points = [Point(name="v", table=Table.HOLDING, address=0, type=rtype, word_order=order,
                    scale=scale, scale_register=None if sf is None else "sf")]
    regs = {(Table.HOLDING, i): w for i, w in enumerate(words)}
    if sf is not None:
        points.append(Point(name="sf", table=Table.INPUT, address=0, type=RegisterType.I16))
        regs[(Table.INPUT, 0)] = encode(sf, RegisterType.I16)[0]
    s = poll(Profile(name="fuzz", kind="meter", points=tuple(points)), regs)["v"]
    assert s.quality is Quality.GOOD, s
    assert s.value is not None
    if rtype is RegisterType.F32:  # single precision: 24 bits of mantissa
        assert s.value == pytest.approx(value, rel=2**-23, abs=abs(gain) * 2**-149)
    else:  # rounded to the nearest count: half a count off at most (and float error)
        assert abs(s.value - value) <= abs(gain) * 0.5 * (1 + 1e-9) + abs(value) * 1e-15


@FUZZ
@given(words=st.lists(st.integers(-(1 << 20), 1 << 20), max_size=6),
       rtype=st.sampled_from(list(RegisterType)), order=st.sampled_from(list(WordOrder)))
def test_decode_raises_only_its_own_error(words: list[int], rtype: RegisterType,
                                          order: WordOrder) -> None:
    try:
        decode(words, rtype, order)
    except RegisterCodecError:
        ok = len(words) != TYPE_TABLE[rtype].registers or any(not 0 <= w <= 0xFFFF for w in words)
        assert ok or rtype is RegisterType.STRING, (words, rtype)


# -- what the fuzzers found, kept as plain tests -------------------------------------------

def _sf_profile() -> Profile:
    return Profile(name="fuzz", kind="meter", points=(
        Point(name="sf", table=Table.HOLDING, address=0, type=RegisterType.I16),
        Point(name="p2", table=Table.HOLDING, address=1, type=RegisterType.U16,
              scale_register="sf")))


def test_a_scale_factor_of_309_reads_missing_instead_of_failing_the_poll() -> None:
    # found: sf = 309 made 10.0 ** 309 raise OverflowError out of the poll
    s = poll(_sf_profile(), {(Table.HOLDING, 0): 309, (Table.HOLDING, 1): 0})
    assert (s["p2"].value, s["p2"].quality) == (None, Quality.MISSING)
    assert s["sf"].quality is Quality.GOOD  # the register itself is a number


def test_a_scale_factor_outside_sunspec_range_is_not_used() -> None:
    # hardened with it: sf = 11 scaled a value by 10^11; SunSpec factors lie in -10..10
    profile = _sf_profile()
    assert poll(profile, {(Table.HOLDING, 0): 2, (Table.HOLDING, 1): 7})["p2"].value == 700.0
    s = poll(profile, {(Table.HOLDING, 0): 11, (Table.HOLDING, 1): 7})["p2"]
    assert (s.value, s.quality) == (None, Quality.MISSING)


def test_decode_refuses_words_wider_than_16_bits() -> None:
    # found: decode([-1], ...) raised OverflowError from int.to_bytes
    with pytest.raises(RegisterCodecError, match="16 bits"):
        decode([65536], RegisterType.U16)
    with pytest.raises(RegisterCodecError, match="16 bits"):
        decode([-1, 0], RegisterType.STRING)
