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
    """Decode 16-bit registers into the raw (unscaled) value."""
    if rtype is RegisterType.STRING:
        data = b"".join(int(w).to_bytes(2, "big") for w in registers)
        return data.rstrip(b"\x00").decode("utf-8", errors="replace")
    info = TYPE_TABLE[rtype]
    if len(registers) != info.registers:
        raise RegisterCodecError(f"{rtype} needs {info.registers} registers, got {len(registers)}")
    words = _order(list(registers), word_order)
    data = b"".join(int(w).to_bytes(2, "big") for w in words)
    return struct.unpack(info.struct_code, data)[0]  # type: ignore[no-any-return]


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
