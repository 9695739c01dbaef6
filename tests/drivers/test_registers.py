"""Encode/decode round trips of every register type and word order (the shared table)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.registers import (
    TYPE_TABLE,
    RegisterCodecError,
    RegisterType,
    WordOrder,
    decode,
    encode,
    is_not_implemented,
)

INT_TYPES = [t for t in RegisterType if t not in (RegisterType.F32, RegisterType.STRING)]


@pytest.mark.parametrize("rtype", INT_TYPES)
@pytest.mark.parametrize("order", list(WordOrder))
@given(data=st.data())
def test_integer_round_trip(rtype: RegisterType, order: WordOrder, data: st.DataObject) -> None:
    info = TYPE_TABLE[rtype]
    value = data.draw(st.integers(int(info.min_value), int(info.max_value)))
    words = encode(value, rtype, order)
    assert len(words) == info.registers
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, rtype, order) == value


@pytest.mark.parametrize("order", list(WordOrder))
@given(value=st.floats(width=32, allow_nan=False))
def test_float_round_trip(order: WordOrder, value: float) -> None:
    assert decode(encode(value, RegisterType.F32, order), RegisterType.F32, order) == value


@given(text=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=16))
def test_string_round_trip(text: str) -> None:
    words = encode(text, RegisterType.STRING, string_registers=8)
    assert len(words) == 8
    assert decode(words, RegisterType.STRING) == text


def test_word_order_is_register_order() -> None:
    # 0x12345678 as u32: big word order puts the high register first
    assert encode(0x12345678, RegisterType.U32, WordOrder.BIG) == [0x1234, 0x5678]
    assert encode(0x12345678, RegisterType.U32, WordOrder.LITTLE) == [0x5678, 0x1234]
    assert decode([0xFFFF, 0xFFFE], RegisterType.I32) == -2


def test_out_of_range_names_type_and_range() -> None:
    with pytest.raises(RegisterCodecError, match=r"70000 is outside the range of u16 \[0, 65535\]"):
        encode(70000, RegisterType.U16)
    with pytest.raises(RegisterCodecError, match="cannot be encoded"):
        encode(math.nan, RegisterType.I32)


def test_sentinels() -> None:
    assert is_not_implemented(0x8000 - 0x10000, RegisterType.I16)
    assert is_not_implemented(0xFFFF, RegisterType.U16)
    nan = struct.unpack(">f", struct.pack(">I", 0x7FC00000))[0]
    assert is_not_implemented(nan, RegisterType.F32)
    assert not is_not_implemented(0, RegisterType.I16)
