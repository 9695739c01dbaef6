"""Device profiles: register maps as data files, validated when loaded.

A profile (``drivers/profiles/<name>.yaml``) lists a device family's points. Point names
are the house's standard names (``active_power_w``, ``soc``...) so that capabilities can
be derived from them; see ``docs/drivers.md``.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.registers import TYPE_TABLE, RegisterType, WordOrder, register_count

PROFILE_DIR = Path(__file__).parent / "profiles"
MAX_READ_REGISTERS = 125  # the protocol's limit for one read (FC 3/4)


class Table(StrEnum):
    HOLDING = "holding"
    INPUT = "input"


class Access(StrEnum):
    READ = "r"
    READ_WRITE = "rw"


class PollClass(StrEnum):
    """How often a point is read: fast (power, SOC, PCC), slow (counters), once (nameplate)."""

    FAST = "fast"
    SLOW = "slow"
    ONCE = "once"


class Capability(StrEnum):
    """What the controller may ask of a device; derived from its points."""

    READS_ACTIVE_POWER = "reads_active_power"
    SETS_ACTIVE_POWER_LIMIT = "sets_active_power_limit"
    ACCEPTS_POWER_SETPOINT = "accepts_power_setpoint"
    HAS_SOC = "has_soc"
    READS_EXPORT = "reads_export"


_CAPABILITY_POINTS: dict[Capability, tuple[str, Access]] = {
    Capability.READS_ACTIVE_POWER: ("active_power_w", Access.READ),
    Capability.SETS_ACTIVE_POWER_LIMIT: ("active_power_limit_w", Access.READ_WRITE),
    Capability.ACCEPTS_POWER_SETPOINT: ("power_setpoint_w", Access.READ_WRITE),
    Capability.HAS_SOC: ("soc", Access.READ),
    Capability.READS_EXPORT: ("export_w", Access.READ),
}


class Point(BaseModel):
    """One value on a device: where it lives, how to decode it, and what it means."""

    # NaN or infinity in a range would make max()/min() ignore the bound: numbers only
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    table: Table
    address: int = Field(ge=0, le=0xFFFF)
    type: RegisterType
    length: int = Field(default=0, ge=0, description="string points: registers")
    word_order: WordOrder | None = None
    scale: float = 1.0
    scale_register: str | None = Field(
        default=None, description="i16 point holding a power-of-ten exponent (SunSpec sunssf)")
    unit: str = ""
    access: Access = Access.READ
    write_min: float | None = None
    write_max: float | None = None
    valid_min: float | None = None
    valid_max: float | None = None
    invalid: tuple[int, ...] | None = Field(
        default=None, description="raw values meaning 'no value'; replace the type's sentinel")
    frozen_after_s: float | None = Field(
        default=None, gt=0, description="a raw value unchanged this long is flagged stale")
    poll: PollClass = PollClass.FAST
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.scale == 0:
            raise ValueError(f"point {self.name}: scale 0 is not allowed (value = raw × scale)")
        if self.type is RegisterType.STRING and self.length <= 0:
            raise ValueError(f"point {self.name}: a string point needs 'length' > 0 registers")
        has_range = self.write_min is not None or self.write_max is not None
        if self.access is Access.READ and has_range:
            raise ValueError(f"point {self.name}: write_min/write_max need access 'rw'")
        if self.access is Access.READ_WRITE and self.table is Table.INPUT:
            raise ValueError(f"point {self.name}: input registers cannot be written")
        if has_range and self.type is not RegisterType.STRING:
            if (self.write_min is not None and self.write_max is not None
                    and self.write_min > self.write_max):
                raise ValueError(f"point {self.name}: write_min {self.write_min:g} is above "
                                 f"write_max {self.write_max:g}")
            lo, hi = self.writable_range()
            if self.scale_register is None and lo > hi:
                info = TYPE_TABLE[self.type]
                ends = sorted((info.min_value * self.scale, info.max_value * self.scale))
                raise ValueError(f"point {self.name}: write_min/write_max lie outside what a "
                                 f"{self.type} × {self.scale:g} holds [{ends[0]:g}, "
                                 f"{ends[1]:g}]")
        end = self.address + self.registers
        if end > 0x10000:
            raise ValueError(f"point {self.name}: registers {self.address}..{end - 1} exceed 65535")
        return self

    @property
    def registers(self) -> int:
        return register_count(self.type, self.length)

    def gain(self, sf_exponent: int = 0) -> float:
        """Engineering value per raw count: scale × 10^sf."""
        return self.scale * 10.0 ** sf_exponent

    def writable_range(self, sf_exponent: int = 0) -> tuple[float, float]:
        """Allowed engineering values for a write: the profile's range within the type's."""
        info = TYPE_TABLE[self.type]
        g = self.gain(sf_exponent)
        lo_raw, hi_raw = sorted((info.min_value * g, info.max_value * g))
        lo = lo_raw if self.write_min is None else max(lo_raw, self.write_min)
        hi = hi_raw if self.write_max is None else min(hi_raw, self.write_max)
        return lo, hi


class Alias(BaseModel):
    """A house name served by another point: value = point's value × factor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    point: str
    factor: float = 1.0


class Heartbeat(BaseModel):
    """A watchdog point the controller writes periodically; if the writes stop, the device
    falls back to its own safe limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    point: str
    interval_s: float = Field(default=10.0, gt=0)


class FaultFlag(BaseModel):
    """A point whose values say the device is in fault (tripped): it cannot be controlled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    point: str
    values: tuple[int, ...] = Field(min_length=1)


class Profile(BaseModel):
    """A device family's register map."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str = Field(pattern=r"^(pv|wind|battery|load|meter)$")
    description: str = ""
    products: tuple[str, ...] = ()
    word_order: WordOrder = WordOrder.BIG
    heartbeat: Heartbeat | None = None
    fault: FaultFlag | None = None
    aliases: dict[str, Alias] = Field(
        default_factory=dict, description="house names served by other points (SunSpec)")
    points: tuple[Point, ...]

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [p.name for p in self.points]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"profile {self.name}: duplicate point names {sorted(dup)}")
        by_name = {p.name: p for p in self.points}
        for p in self.points:
            if p.scale_register is None:
                continue
            sf = by_name.get(p.scale_register)
            if sf is None or sf.type is not RegisterType.I16:
                raise ValueError(f"profile {self.name}: point {p.name}: scale_register "
                                 f"{p.scale_register!r} must name an i16 point of this profile")
        for house, alias in self.aliases.items():
            if alias.point not in by_name:
                raise ValueError(f"profile {self.name}: alias {house} names no point "
                                 f"{alias.point!r}")
        if self.fault is not None and self.fault.point not in by_name:
            raise ValueError(f"profile {self.name}: fault point {self.fault.point!r} is not a "
                             "point of this profile")
        if self.heartbeat is not None:
            hb = by_name.get(self.heartbeat.point)
            if hb is None or hb.access is not Access.READ_WRITE:
                raise ValueError(f"profile {self.name}: heartbeat point "
                                 f"{self.heartbeat.point!r} must be a writable point")
        for table in Table:
            spans = sorted((p.address, p.address + p.registers, p.name)
                           for p in self.points if p.table == table)
            for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
                if start_b < end_a:
                    raise ValueError(
                        f"profile {self.name}: points {name_a} and {name_b} overlap in the "
                        f"{table} table at register {start_b}"
                    )
        return self

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"profile {self.name} has no point {name!r}")

    def order_of(self, point: Point) -> WordOrder:
        return point.word_order or self.word_order

    @property
    def capabilities(self) -> frozenset[Capability]:
        have = {(p.name, p.access) for p in self.points}
        by_name = {p.name: p for p in self.points}
        have |= {(house, by_name[a.point].access) for house, a in self.aliases.items()}
        # a limit in percent of the rated power (SunSpec WMaxLimPct) sets a limit too
        if ("active_power_limit_pct", Access.READ_WRITE) in have:
            have.add(("active_power_limit_w", Access.READ_WRITE))
        caps = set()
        for cap, (name, access) in _CAPABILITY_POINTS.items():
            readable_rw = access is Access.READ and (name, Access.READ_WRITE) in have
            if (name, access) in have or readable_rw:
                caps.add(cap)
        return frozenset(caps)


class ProfileError(ValueError):
    """A profile that cannot be found or does not validate."""


def validation_lines(exc: ValidationError) -> list[str]:
    """One line per problem of a data file: the field's path, what is wrong, the value."""
    return [f"  {'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']} "
            f"(got {e.get('input')!r})" for e in exc.errors()]


def load_profile_file(path: Path) -> Profile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profile {path.name}: {exc}") from exc
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"profile {path.name} is invalid:\n"
                           + "\n".join(validation_lines(exc))) from exc


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False for names no file can have (too long, a NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def shipped_profiles() -> list[str]:
    """Names of the profiles that ship with the package."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@cache
def load_profile(name: str) -> Profile:
    """Load a shipped profile by name, or a profile file by path."""
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and _is_file(path):
        return load_profile_file(path)
    candidate = PROFILE_DIR / f"{name}.yaml"
    if not _is_file(candidate):
        raise ProfileError(
            f"unknown profile {name!r}; shipped profiles are {', '.join(shipped_profiles())}, "
            "or give a path to a .yaml file"
        )
    return load_profile_file(candidate)
