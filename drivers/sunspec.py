"""SunSpec Modbus: model definitions, discovery of a device's model chain, and a profile
built from what the device declares.

A SunSpec device holds the marker ``SunS`` (0x5375 0x6E53) at a base address (40000, 50000
or 0), followed by a chain of models ``[ID][L][L registers]`` that ends with ID 0xFFFF.
The model definitions are pysunspec2's JSON files; only a model's fixed (top-level) group
becomes points, repeating groups are skipped. Values are big-endian, high word first; a
point's scale factor is a separate ``sunssf`` (int16) point: value = raw × 10^sf.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import sunspec2

from drivers.connection import ILLEGAL_ADDRESS, DeviceError, ExceptionReply, ModbusConnection
from drivers.profile import Access, Alias, FaultFlag, Point, PollClass, Profile, Table
from drivers.registers import RegisterType, WordOrder, decode
from drivers.telemetry import Sample

log = logging.getLogger(__name__)

MODELS_DIR = Path(os.path.dirname(sunspec2.__file__)) / "models" / "json"
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
DEFAULT_BASES = (40000, 50000, 0)
MAX_MODELS = 256  # a chain longer than this does not end: refuse it

# SunSpec type -> register type; a type missing here (pad, ipaddr, ipv6addr, eui48) gives
# no point.
TYPE_MAP: dict[str, RegisterType] = {
    "int16": RegisterType.I16,
    "uint16": RegisterType.U16,
    "acc16": RegisterType.U16,
    "enum16": RegisterType.U16,
    "count": RegisterType.U16,
    "bitfield16": RegisterType.BITFIELD16,
    "sunssf": RegisterType.I16,
    "int32": RegisterType.I32,
    "uint32": RegisterType.U32,
    "acc32": RegisterType.U32,
    "enum32": RegisterType.U32,
    "bitfield32": RegisterType.BITFIELD32,
    "float32": RegisterType.F32,
    "int64": RegisterType.I64,
    "uint64": RegisterType.U64,
    "acc64": RegisterType.U64,
    "string": RegisterType.STRING,
}
# The SunSpec spec makes 0 the "not implemented" value of an accumulator. A real counter
# that is still at 0 (a new device) therefore reads as missing until it first counts:
# we follow the spec, as every SunSpec client does.
ACCUMULATORS = frozenset({"acc16", "acc32", "acc64"})

# Nameplate and settings models change rarely: read them once.
ONCE_MODELS = frozenset({1, 120, 121, 702})


@dataclass(frozen=True)
class PointDef:
    """One point of a model's fixed group, as the JSON definition gives it."""

    name: str  # SunSpec name, e.g. "W_SF"
    type: str  # SunSpec type, e.g. "sunssf"
    offset: int  # registers from the model's first data register (after ID and L)
    size: int  # registers
    sf: str | int | None  # scale factor: a point name, a fixed exponent, or none
    units: str
    writable: bool
    label: str

    @property
    def register_type(self) -> RegisterType | None:
        return TYPE_MAP.get(self.type)

    @property
    def invalid(self) -> tuple[int, ...] | None:
        """Raw "not implemented" markers when they differ from the register type's."""
        return (0,) if self.type in ACCUMULATORS else None


@dataclass(frozen=True)
class ModelDef:
    """A SunSpec model: its fixed group's points and length [registers, after ID and L]."""

    id: int
    name: str
    length: int
    points: tuple[PointDef, ...]  # pads included (they take registers)
    # the points of nested groups of fixed count (704's PFWInj...), laid out after the fixed
    # group; None when a nested group's count is set by a point (it has no fixed layout).
    # Repeating groups (count 0) take no registers here.
    tail: tuple[PointDef, ...] | None = ()

    @property
    def full_length(self) -> int | None:
        """L of a device that implements the fixed group, the fixed-count nested groups and
        no repetition [registers]; None when that is not fixed."""
        return None if self.tail is None else self.length + sum(p.size for p in self.tail)

    def point(self, name: str) -> PointDef:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"SunSpec model {self.id} has no point {name!r}")


@dataclass(frozen=True)
class ModelBlock:
    """One model found on a device."""

    model_id: int
    address: int  # first data register, after ID and L
    length: int  # L [registers]


def _sf(raw: Any) -> str | int | None:
    if raw is None or isinstance(raw, int):
        return raw
    try:
        return int(raw)
    except ValueError:
        return str(raw)


@cache
def model_def(model_id: int) -> ModelDef:
    """The definition of a SunSpec model (cached); KeyError when pysunspec2 has none."""
    path = MODELS_DIR / f"model_{model_id}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyError(f"no SunSpec definition for model {model_id}") from None
    group = data["group"]
    raw_points = group["points"]
    if [p["name"] for p in raw_points[:2]] != ["ID", "L"]:
        raise ValueError(f"SunSpec model {model_id}: the fixed group must start with ID, L")
    def defs(raw: list[dict[str, Any]], at: int, prefix: str = "") -> list[PointDef]:
        out = []
        for p in raw:
            size = int(p["size"])
            out.append(PointDef(
                name=prefix + p["name"], type=p["type"], offset=at, size=size,
                sf=_sf(p.get("sf")), units=p.get("units", ""),
                writable=p.get("access") == "RW", label=p.get("label", "")))
            at += size
        return out

    points = defs(raw_points[2:], 0)
    length = sum(p.size for p in points)
    tail: list[PointDef] | None = []
    for g in group.get("groups", ()):
        count = 1 if g.get("count") is None else g["count"]
        if count == 0:
            continue  # repeating: none laid out
        if not isinstance(count, int) or g.get("groups") or tail is None:
            tail = None
            continue
        for _ in range(count):
            at = length + sum(p.size for p in tail)
            tail += defs(g["points"], at, prefix=f"{g['name']}.")
    return ModelDef(id=model_id, name=group["name"], length=length, points=tuple(points),
                    tail=None if tail is None else tuple(tail))


# -- discovery ----------------------------------------------------------------------------

async def _walk(connection: ModbusConnection, unit_id: int, address: int) -> list[ModelBlock]:
    blocks: list[ModelBlock] = []
    while len(blocks) < MAX_MODELS:
        if address > 0xFFFF:
            raise DeviceError(f"{connection.label} unit {unit_id}: SunSpec chain runs past "
                              "register 65535 without the end marker")
        try:
            (model_id,) = await connection.read(Table.HOLDING, address, 1, unit_id)
        except ExceptionReply as exc:
            if exc.code != ILLEGAL_ADDRESS or not blocks:
                raise
            log.warning("%s unit %d: SunSpec chain ends at %d without the end marker",
                        connection.label, unit_id, address)
            return blocks
        if model_id == END_MODEL_ID:
            return blocks
        # the length is read on its own: some devices give no L after the end marker
        (length,) = await connection.read(Table.HOLDING, address + 1, 1, unit_id)
        blocks.append(ModelBlock(model_id, address + 2, length))
        address += 2 + length
    raise DeviceError(f"{connection.label} unit {unit_id}: more than {MAX_MODELS} SunSpec "
                      "models; the chain does not end")


async def discover(connection: ModbusConnection, unit_id: int, *,
                   bases: Iterable[int] = DEFAULT_BASES) -> list[ModelBlock]:
    """Find the ``SunS`` marker at one of ``bases`` and walk the model chain.

    Raises DeviceError naming every base tried when no marker is found.
    """
    tried: list[str] = []
    for base in bases:
        try:
            words = await connection.read(Table.HOLDING, base, 2, unit_id)
        except DeviceError as exc:
            tried.append(f"{base} ({exc})")
            continue
        if tuple(words) == SUNS_MARKER:
            return await _walk(connection, unit_id, base + 2)
        tried.append(f"{base} (read {words[0]:#06x} {words[1]:#06x})")
    raise DeviceError(f"{connection.label} unit {unit_id}: no SunSpec marker 'SunS' "
                      f"(0x5375 0x6E53) at base {', '.join(tried)}")


# -- profile ------------------------------------------------------------------------------

def _model_points(mdef: ModelDef, block: ModelBlock, prefix: str) -> list[Point]:
    # the device's declared length wins: an older, shorter version lacks the last points
    fits = {p.name: p for p in mdef.points
            if p.register_type is not None and p.offset + p.size <= block.length}
    poll = PollClass.ONCE if mdef.id in ONCE_MODELS else PollClass.FAST
    out: list[Point] = []
    for p in fits.values():
        rtype = p.register_type
        assert rtype is not None
        scale, scale_register = 1.0, None
        if isinstance(p.sf, int):
            scale = 10.0 ** p.sf
        elif p.sf is not None:
            sf = fits.get(p.sf)
            if sf is None or sf.type != "sunssf":
                log.debug("model %d point %s: scale factor %s absent; point skipped",
                          mdef.id, p.name, p.sf)
                continue
            scale_register = prefix + p.sf.lower()
        out.append(Point(
            name=prefix + p.name.lower(), table=Table.HOLDING, address=block.address + p.offset,
            type=rtype, length=p.size if rtype is RegisterType.STRING else 0, scale=scale,
            scale_register=scale_register, unit=p.units,
            access=Access.READ_WRITE if p.writable else Access.READ, invalid=p.invalid,
            poll=poll, description=p.label))
    return out


def build_profile(blocks: Iterable[ModelBlock], *, kind: str, name: str = "sunspec") -> Profile:
    """A profile of every fixed-group point of the discovered models.

    Points are named ``m<id>_<point>`` in lower case (``m103_w``, ``m103_w_sf``); a second
    instance of a model gets ``m<id>_2_<point>``. Models without a definition are skipped.
    """
    points: list[Point] = []
    seen: dict[int, int] = {}
    model_ids: list[str] = []
    for block in blocks:
        try:
            mdef = model_def(block.model_id)
        except KeyError:
            log.warning("SunSpec model %d at %d has no definition; skipped", block.model_id,
                        block.address)
            continue
        n = seen[block.model_id] = seen.get(block.model_id, 0) + 1
        prefix = f"m{block.model_id}_" if n == 1 else f"m{block.model_id}_{n}_"
        points.extend(_model_points(mdef, block, prefix))
        model_ids.append(str(block.model_id))
    # 701's inverter state FAULT (6) is the device saying it is tripped
    fault = (FaultFlag(point=INV_STATE, values=(INV_STATE_FAULT,))
             if any(p.name == INV_STATE for p in points) else None)
    return Profile(name=name, kind=kind, word_order=WordOrder.BIG, points=tuple(points),
                   aliases=_aliases(points), fault=fault,
                   description=f"SunSpec models {', '.join(model_ids)}")


def _aliases(points: list[Point]) -> dict[str, Alias]:
    """House names for the points present: the first model in STANDARD_NAMES wins."""
    present = {p.name: p for p in points}
    out: dict[str, Alias] = {}
    for (model_id, point), house in [*STANDARD_NAMES.items(), *CONTROL_NAMES.items()]:
        name = point_name(model_id, point)
        if house not in out and name in present:
            out[house] = Alias(point=name, factor=0.01 if house in _PERCENT else 1.0)
    return out


def point_name(model_id: int, point: str) -> str:
    """The profile name of a SunSpec point: ``point_name(103, "W") == "m103_w"``."""
    return f"m{model_id}_{point.lower()}"


async def read_strings(connection: ModbusConnection, unit_id: int, profile: Profile,
                       names: Iterable[str] | None = None) -> dict[str, str]:
    """The text points of a profile (``Device.poll`` reports text as missing), one read
    each; a text that is all NULs (SunSpec's "not implemented") is left out."""
    wanted = None if names is None else set(names)
    out: dict[str, str] = {}
    for p in profile.points:
        if p.type is not RegisterType.STRING or (wanted is not None and p.name not in wanted):
            continue
        words = await connection.read(p.table, p.address, p.registers, unit_id)
        text = decode(words, p.type)
        if isinstance(text, str) and text:
            out[p.name] = text
    return out


# -- standard names -----------------------------------------------------------------------

_INVERTERS = (101, 102, 103, 111, 112, 113)
INV_STATE, INV_STATE_FAULT = "m701_invst", 6
_METERS = (201, 202, 203, 204, 211, 212, 213, 214)

# (model, SunSpec point) -> the house's standard name. When several models give the same
# name, the first listed wins (7xx/8xx before the legacy 1xx models).
STANDARD_NAMES: dict[tuple[int, str], str] = {
    # AC power, + generation / - absorption (model 701 says so; 10x/11x inverters agree)
    (701, "W"): "active_power_w",
    **{(m, "W"): "active_power_w" for m in _INVERTERS},
    (701, "Hz"): "frequency_hz",
    **{(m, "Hz"): "frequency_hz" for m in _INVERTERS},
    (701, "TotWhInj"): "energy_export_wh",
    (701, "TotWhAbs"): "energy_import_wh",
    **{(m, "WH"): "energy_export_wh" for m in _INVERTERS},
    (702, "WMaxRtg"): "rated_power_w",
    (120, "WRtg"): "rated_power_w",
    (702, "WChaRteMaxRtg"): "max_charge_w",
    (702, "WDisChaRteMaxRtg"): "max_discharge_w",
    (120, "MaxChaRte"): "max_charge_w",
    (120, "MaxDisChaRte"): "max_discharge_w",
    (802, "WHRtg"): "capacity_wh",
    (713, "WHRtg"): "capacity_wh",
    (120, "WHRtg"): "capacity_wh",
    # state of charge [%] -> ratio
    (802, "SoC"): "soc",
    (713, "SoC"): "soc",
    (124, "ChaState"): "soc",
    # meters: W as the meter reports it (+ import at a PCC meter wired the SunSpec way);
    # the site decides the sign, so it is not export_w here
    **{(m, "W"): "import_w" for m in _METERS},
    **{(m, "Hz"): "frequency_hz" for m in _METERS},
    **{(m, "TotWhExp"): "energy_export_wh" for m in _METERS},
    **{(m, "TotWhImp"): "energy_import_wh" for m in _METERS},
}
_PERCENT = frozenset({"soc"})  # SunSpec gives these in percent; the house uses a ratio

# The controls the controller drives, by house name (see drivers/capabilities.py)
# (704, the DER controls, before the legacy 123: its reversion values make a lapse safe)
CONTROL_NAMES: dict[tuple[int, str], str] = {
    (704, "WMaxLimPct"): "active_power_limit_pct",
    (704, "WMaxLimPctEna"): "active_power_limit_enable",
    (704, "WMaxLimPctRvrtTms"): "active_power_limit_revert_s",
    (704, "WMaxLimPctRvrt"): "fallback_limit_pct",
    (704, "WMaxLimPctEnaRvrt"): "fallback_limit_enable",
    (702, "WMax"): "wmax_w",
    # a storage system's power setpoint [W, + discharge] and its reversion (704)
    (704, "WSet"): "power_setpoint_w",
    (704, "WSetEna"): "power_setpoint_enable",
    (704, "WSetMod"): "power_setpoint_mode",
    (704, "WSetRvrtTms"): "power_setpoint_revert_s",
    (704, "WSetRvrt"): "fallback_setpoint_w",
    (704, "WSetEnaRvrt"): "fallback_setpoint_enable",
    (123, "WMaxLimPct"): "active_power_limit_pct",
    (123, "WMaxLim_Ena"): "active_power_limit_enable",
    (123, "WMaxLimPct_RvrtTms"): "active_power_limit_revert_s",
    (123, "WMaxLimPct_WinTms"): "active_power_limit_window_s",
    (123, "WMaxLimPct_RmpTms"): "active_power_limit_ramp_s",
    (121, "WMax"): "wmax_w",
    (122, "WAval"): "available_power_w",
}


def standard_values(profile_samples: Mapping[str, Sample]) -> dict[str, float]:
    """House values [SI units; soc as ratio 0..1] from the good samples of a SunSpec
    profile (first instance of each model)."""
    out: dict[str, float] = {}
    for (model_id, point), house in STANDARD_NAMES.items():
        s = profile_samples.get(point_name(model_id, point))
        if house in out or s is None or not s.usable or s.value is None:
            continue
        out[house] = s.value / 100.0 if house in _PERCENT else s.value
    return out
