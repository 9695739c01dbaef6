"""A simulated SunSpec device: a model chain laid out from base 40000, served as a unit of
:class:`sim.modbus_server.ModbusTcpDeviceServer`.

The image is ``SunS``, then each model's ``[ID][L][data]``, then the end marker
``[0xFFFF][0]``. Values are engineering values keyed by the profile's point names
(``m103_w``); a point's raw value is value / 10^sf with sf taken from the same values
(default 0). A point without a value holds its type's "not implemented" sentinel; text
points come from a separate mapping. The fixed group and nested groups of fixed count are
laid out (the latter hold "not implemented"); repeating groups get no instance, and a model
with a group whose count a point sets is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from drivers.profile import Access, Point, Table
from drivers.registers import (
    TYPE_TABLE,
    RegisterCodecError,
    RegisterType,
    WordOrder,
    decode,
    encode,
)
from drivers.sunspec import (
    END_MODEL_ID,
    SUNS_MARKER,
    TYPE_MAP,
    ModelBlock,
    build_profile,
    model_def,
)
from sim.modbus_server import (
    DEVICE_FAILURE,
    ILLEGAL_ADDRESS,
    ILLEGAL_VALUE,
    ModbusReplyError,
    SimUnit,
)

SUNSPEC_BASE = 40000


def layout(model_ids: Iterable[int], base: int = SUNSPEC_BASE) -> list[ModelBlock]:
    """Where each model's data goes when the chain starts at ``base``."""
    blocks: list[ModelBlock] = []
    address = base + len(SUNS_MARKER)
    for mid in model_ids:
        length = model_def(mid).full_length
        if length is None:
            raise ValueError(f"model {mid}: nested groups whose count a point sets are not "
                             "simulated")
        blocks.append(ModelBlock(mid, address + 2, length))
        address += 2 + length
    return blocks


def _sentinel(sunspec_type: str, size: int) -> list[int]:
    """The not-implemented value of a SunSpec type, as registers."""
    rtype = TYPE_MAP.get(sunspec_type)
    if rtype is None or rtype is RegisterType.STRING or sunspec_type.startswith("acc"):
        return [0] * size  # pad, text, accumulators, addresses
    if rtype is RegisterType.F32:
        return encode(math.nan, rtype)
    raw = TYPE_TABLE[rtype].not_implemented
    assert raw is not None
    return encode(raw, rtype)


class SunSpecSimUnit(SimUnit):
    """A SunSpec device behind a unit id.

    ``values()`` gives engineering values by point name; ``text`` the text points
    (``m1_mn``...); ``on_write(point, value)`` receives writes to RW points, scaled.
    """

    def __init__(self, model_ids: Iterable[int], values: Callable[[], dict[str, float]],
                 on_write: Callable[[str, float], None], *, text: Mapping[str, str] | None = None,
                 kind: str = "pv", base: int = SUNSPEC_BASE) -> None:
        self.blocks = layout(model_ids, base)
        super().__init__(build_profile(self.blocks, kind=kind, name="sunspec-sim"), values,
                         on_write)
        self.base = base
        self.text = dict(text or {})
        words = list(SUNS_MARKER)
        for b in self.blocks:
            words += [b.model_id, b.length]
            mdef = model_def(b.model_id)
            for d in (*mdef.points, *(mdef.tail or ())):
                words += _sentinel(d.type, d.size)
        words += [END_MODEL_ID, 0]
        self._blank = words
        self._at = {p.address: p for p in self.profile.points}
        self._users: dict[str, list[str]] = {}  # scale factor -> the points it scales
        for p in self.profile.points:
            if p.scale_register is not None:
                self._users.setdefault(p.scale_register, []).append(p.name)

    def _exponent(self, p: Point, vals: Mapping[str, float]) -> int:
        return 0 if p.scale_register is None else round(vals.get(p.scale_register, 0))

    def _registers(self) -> list[int]:
        vals = self.values()
        regs = list(self._blank)
        for p in self.profile.points:
            if p.type is RegisterType.STRING:
                if p.name not in self.text:
                    continue
                words = encode(self.text[p.name], p.type, WordOrder.BIG, p.length)
            elif p.name in vals:
                words = encode(vals[p.name] / p.gain(self._exponent(p, vals)), p.type)
            elif any(name in vals for name in self._users.get(p.name, ())):
                words = [0]  # a scale factor nobody set, of a point that has a value
            else:
                continue
            regs[p.address - self.base : p.address - self.base + len(words)] = words
        return regs

    def read(self, table: Table, address: int, count: int) -> list[int]:
        """Registers [address, address + count) of the holding table; anything outside the
        image is refused with exception 2."""
        start = address - self.base
        if table is not Table.HOLDING or start < 0 or start + count > len(self._blank):
            raise ModbusReplyError(ILLEGAL_ADDRESS)
        try:
            regs = self._registers()
        except RegisterCodecError as exc:
            raise ModbusReplyError(DEVICE_FAILURE) from exc
        return regs[start : start + count]

    def write(self, address: int, words: list[int]) -> None:
        """Write whole RW points (one or several adjacent); each reaches ``on_write``."""
        vals = self.values()
        done: list[tuple[str, float]] = []
        i = 0
        while i < len(words):
            p = self._at.get(address + i)
            if p is None or p.access is not Access.READ_WRITE or i + p.registers > len(words):
                raise ModbusReplyError(ILLEGAL_ADDRESS)
            raw = decode(words[i : i + p.registers], p.type)
            if isinstance(raw, str):
                raise ModbusReplyError(ILLEGAL_VALUE)
            done.append((p.name, float(raw) * p.gain(self._exponent(p, vals))))
            i += p.registers
        for name, value in done:
            self.on_write(name, value)
