"""The one register-type table shared by the drivers (decode) and the simulator (encode).

A Modbus register holds 16 bits. A point of type ``u32`` spans two registers, and so on.
Multi-register values are big-endian inside each register (the Modbus rule); the order of
the registers themselves (``word_order``) differs between vendors: ``big`` puts the most
significant register first (SunSpec, most vendors), ``little`` the least significant.

Keeping the encoder and the decoder on this single table means the simulator and the
drivers cannot drift apart.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class RegisterType(StrEnum):
    """Data types a point can have."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    STRING = "string"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"


class WordOrder(StrEnum):
    """Order of the 16-bit registers of a multi-register value."""

    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True)
class TypeInfo:
    """Width, struct code and value range of a register type."""

    registers: int  # width in 16-bit registers (strings: per point)
    struct_code: str  # big-endian struct format of the whole value
    min_value: float
    max_value: float
    not_implemented: int | None  # raw sentinel many devices use for "no value"


TYPE_TABLE: dict[RegisterType, TypeInfo] = {
    RegisterType.U16: TypeInfo(1, ">H", 0, 0xFFFF, 0xFFFF),
    RegisterType.I16: TypeInfo(1, ">h", -0x8000, 0x7FFF, -0x8000),
    RegisterType.U32: TypeInfo(2, ">I", 0, 0xFFFF_FFFF, 0xFFFF_FFFF),
    RegisterType.I32: TypeInfo(2, ">i", -0x8000_0000, 0x7FFF_FFFF, -0x8000_0000),
    RegisterType.U64: TypeInfo(4, ">Q", 0, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF),
    RegisterType.I64: TypeInfo(
        4, ">q", -0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, -0x8000_0000_0000_0000
    ),
    RegisterType.F32: TypeInfo(2, ">f", -3.4028234663852886e38, 3.4028234663852886e38, None),
    RegisterType.STRING: TypeInfo(0, "", 0, 0, None),
    RegisterType.BITFIELD16: TypeInfo(1, ">H", 0, 0xFFFF, 0xFFFF),
    RegisterType.BITFIELD32: TypeInfo(2, ">I", 0, 0xFFFF_FFFF, 0xFFFF_FFFF),
}


# A SunSpec scale factor (``sunssf``, an i16 power of ten) lies in -10..10; any other value
# is not a factor (and 10^309 does not fit a float).
SCALE_FACTOR_MIN, SCALE_FACTOR_MAX = -10, 10


class RegisterCodecError(ValueError):
    """A value that cannot be encoded in, or decoded from, the given registers."""


def register_count(rtype: RegisterType, string_registers: int = 0) -> int:
    """Number of 16-bit registers a point of this type occupies."""
    if rtype is RegisterType.STRING:
        if string_registers <= 0:
            raise RegisterCodecError("a string point needs a positive 'length' in registers")
        return string_registers
    return TYPE_TABLE[rtype].registers


def _order(words: list[int], word_order: WordOrder) -> list[int]:
    return words if word_order is WordOrder.BIG else words[::-1]


def encode(
    value: float | int | str,
    rtype: RegisterType,
    word_order: WordOrder = WordOrder.BIG,
    string_registers: int = 0,
) -> list[int]:
    """Encode a raw (unscaled) value into 16-bit registers.

    Integers must lie inside the type's range; floats are rounded to the nearest integer
    for integer types. Raises :class:`RegisterCodecError` naming the type and range.
    """
    if rtype is RegisterType.STRING:
        n = register_count(rtype, string_registers)
        data = str(value).encode("utf-8")
        if len(data) > 2 * n:
            raise RegisterCodecError(f"string {value!r} is longer than {2 * n} bytes")
        data = data.ljust(2 * n, b"\x00")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, 2 * n, 2)]
    info = TYPE_TABLE[rtype]
    if rtype is RegisterType.F32:
        raw: float | int = float(value)
    else:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise RegisterCodecError(f"{value} cannot be encoded as {rtype}")
            value = round(value)
        raw = int(value)
        if not info.min_value <= raw <= info.max_value:
            raise RegisterCodecError(
                f"{raw} is outside the range of {rtype} [{int(info.min_value)}, "
                f"{int(info.max_value)}]"
            )
    data = struct.pack(info.struct_code, raw)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return _order(words, word_order)


def decode(
    registers: list[int],
    rtype: RegisterType,
    word_order: WordOrder = WordOrder.BIG,
) -> int | float | str:
    """Decode 16-bit registers into the raw (unscaled) value.

    Raises :class:`RegisterCodecError` for the wrong number of registers, or a register
    outside 0..0xFFFF."""
    if rtype is RegisterType.STRING:
        data = _bytes(registers)
        return data.rstrip(b"\x00").decode("utf-8", errors="replace")
    info = TYPE_TABLE[rtype]
    if len(registers) != info.registers:
        raise RegisterCodecError(f"{rtype} needs {info.registers} registers, got {len(registers)}")
    data = _bytes(_order(list(registers), word_order))
    return struct.unpack(info.struct_code, data)[0]  # type: ignore[no-any-return]


def _bytes(registers: list[int]) -> bytes:
    try:
        return b"".join(int(w).to_bytes(2, "big") for w in registers)
    except OverflowError:  # a negative word, or one wider than 16 bits
        raise RegisterCodecError(f"registers hold 16 bits (0..65535), got "
                                 f"{list(registers)}") from None


def is_not_implemented(raw: int | float | str, rtype: RegisterType,
                       markers: tuple[int, ...] | None = None) -> bool:
    """True when the raw value means "no value": a NaN float, or the type's sentinel.

    ``markers``, when given, replace the type's sentinel (vendors have their own, e.g.
    Huawei's 0x7FFF and 0x7FFFFFFF).
    """
    if isinstance(raw, float) and math.isnan(raw):
        return True
    if markers is not None:
        return raw in markers
    sentinel = TYPE_TABLE[rtype].not_implemented
    return sentinel is not None and raw == sentinel


def nearest_raw(target: float, gain: float, lo: float, hi: float, rtype: RegisterType,
                markers: frozenset[int] = frozenset()) -> int | float | None:
    """The raw value to write for the engineering value ``target`` = raw × ``gain``: the
    one nearest it whose engineering value (a float, as it is read back) lies in
    [``lo``, ``hi``] and that is none of ``markers`` ("no value"); None if there is none.

    Rounding to a count can step past an end of the range, and from 2^53 on one count moves
    the float by none or by many: the counts inside are found by bisection then.
    """
    info = TYPE_TABLE[rtype]
    if rtype is RegisterType.F32:
        return _nearest_f32(target, gain, lo, hi)
    tmin, tmax = int(info.min_value), int(info.max_value)
    raw = min(max(round(target / gain), tmin), tmax)
    if lo <= raw * gain <= hi and raw not in markers:
        return raw  # nearly always
    if gain > 0:
        first = _first(lambda r: r * gain >= lo, tmin, tmax)
        last = _first(lambda r: r * gain > hi, tmin, tmax) - 1
    else:
        first = _first(lambda r: r * gain <= hi, tmin, tmax)
        last = _first(lambda r: r * gain < lo, tmin, tmax) - 1
    base = min(max(raw, first), last)
    for k in range(len(markers) + 1):  # the nearest count that is no marker
        fits = [r for r in (base - k, base + k) if first <= r <= last and r not in markers]
        if fits:
            return min(fits, key=lambda r: abs(r * gain - target))
    return None


def _nearest_f32(target: float, gain: float, lo: float, hi: float) -> float | None:
    info = TYPE_TABLE[RegisterType.F32]
    raw = _f32(min(max(target / gain, info.min_value), info.max_value))
    inward = (1 if target < lo / 2 + hi / 2 else -1) * (1 if gain > 0 else -1)
    for _ in range(3):  # single precision may round a step outside: step back in
        if lo <= raw * gain <= hi and math.isfinite(raw):
            return raw
        raw = _f32_step(raw, inward)
    return None


def _first(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """The least integer in [lo, hi] for which ``holds`` (false, then true, as it grows),
    or hi + 1."""
    while lo <= hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid - 1
        else:
            lo = mid + 1
    return lo


def _f32(x: float) -> float:
    """``x`` rounded to single precision."""
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def _f32_step(x: float, direction: int) -> float:
    """The next single-precision value after ``x`` upwards (``direction`` 1) or down (-1)."""
    bits = struct.unpack(">i", struct.pack(">f", x))[0]
    if x == 0:
        bits = 1 if direction > 0 else -0x7FFF_FFFF  # the smallest subnormals
    else:
        bits += direction if x > 0 else -direction
    return float(struct.unpack(">f", struct.pack(">i", bits))[0])
