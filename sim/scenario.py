"""Scenarios: what happens to a plant over a run, as a validated TOML file.

A scenario names the plant it runs on (a site configuration), when it starts and for how
long, the seed, the weather regime per period, the load level, the export cap over time
(as the grid company instructs it, with notice) and the faults to inject at given times.
Times are hours from the scenario's start (``at_h``), so a scenario reads the same in any
timezone; the start itself is ISO 8601 with an offset. See ``docs/simulator.md``.
"""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.profile import validation_lines

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class Regime(StrEnum):
    CLEAR = "clear"
    BROKEN = "broken"
    OVERCAST = "overcast"


REGIME_INDEX = {Regime.CLEAR: 0, Regime.BROKEN: 1, Regime.OVERCAST: 2}


class FaultType(StrEnum):
    """What can be done to a device during a run."""

    OFFLINE = "offline"  # answers nothing (a dead device, or the PCC meter lost)
    SLOW = "slow"  # answers after delay_s
    DROP = "drop"  # closes every connection that sends it a request
    FROZEN = "frozen"  # repeats the reply it gave when the fault began
    EXCEPTION = "exception"  # answers every request with a Modbus exception (code)
    GARBAGE = "garbage"  # a point reads ``value`` (NaN, out of range) or its sentinel
    TRIP = "trip"  # a battery trips: 0 W, status fault, setpoints ignored
    COOLING = "cooling"  # a battery's cooling fails: under load it heats until its BMS trips


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WeatherPeriod(_Model):
    """From ``from_h`` on (until the next period), the cloud regime and the mean wind."""

    from_h: float = Field(ge=0)
    regime: Regime | None = None
    mean_wind_m_s: float | None = Field(default=None, ge=0, le=40)


class Weather(_Model):
    cloudiness: float = Field(default=0.3, ge=0, le=1,
                              description="0 clear every day .. 1 overcast most of the time; "
                                          "used outside the periods that force a regime")
    mean_wind_m_s: float = Field(default=7.0, ge=0, le=40)
    periods: tuple[WeatherPeriod, ...] = ()

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        starts = [p.from_h for p in self.periods]
        if starts != sorted(starts) or len(set(starts)) != len(starts):
            raise ValueError(f"weather.periods must have increasing from_h, got {starts}")
        return self


class CapChange(_Model):
    """The grid company's instruction: from ``at_h`` the export cap is ``export_cap_w``;
    the controller hears of it ``notice_s`` before."""

    at_h: float = Field(ge=0)
    export_cap_w: float = Field(gt=0)
    notice_s: float = Field(default=900.0, ge=0, le=86400)


class FaultAction(_Model):
    """A fault to do to a device, now (at run time) or as part of a scenario."""

    duration_s: float | None = Field(default=None, gt=0,
                                     description="how long; omitted: until the run ends")
    device: str
    kind: FaultType
    delay_s: float = Field(default=2.0, gt=0, le=60, description="slow: reply delay")
    code: int = Field(default=4, ge=1, le=255, description="exception: the code sent")
    point: str | None = Field(default=None, description="garbage: the point")
    value: float | None = Field(default=None,
                                description="garbage: the value served (NaN allowed); "
                                            "omitted: the type's 'not implemented' sentinel")

    @model_validator(mode="after")
    def _point_for_garbage(self) -> Self:
        if self.kind is FaultType.GARBAGE and self.point is None:
            raise ValueError(f"fault on {self.device}: kind 'garbage' needs 'point'")
        if self.kind is not FaultType.GARBAGE and (self.point or self.value is not None):
            raise ValueError(f"fault on {self.device}: 'point' and 'value' are for kind "
                             "'garbage' only")
        return self


class Fault(FaultAction):
    """A fault of a scenario, beginning ``at_h`` hours after its start."""

    at_h: float = Field(ge=0)


class Scenario(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    config: str | None = Field(
        default=None, description="site configuration (relative to this file, or 'demo' for "
                                  "the demo county); --config overrides it")
    start: datetime
    duration_h: float = Field(gt=0, le=24 * 14)
    warmup_s: float = Field(default=600.0, ge=0, le=86400,
                            description="the controller runs this long before the start; "
                                        "the report covers [start, start + duration_h)")
    seed: int = 1
    speed: float = Field(default=600.0, gt=0, le=10_000,
                         description="time acceleration for 'vpp sim run'")
    load_scale: float = Field(default=1.0, gt=0, le=5,
                              description="multiplies every load's peak")
    weather: Weather = Field(default_factory=Weather)
    cap: tuple[CapChange, ...] = ()
    faults: tuple[Fault, ...] = ()

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError(f"start {v.isoformat()} needs a UTC offset, e.g. "
                             "2026-04-15T00:00:00+08:00")
        return v

    @model_validator(mode="after")
    def _within(self) -> Self:
        for what, hours in ([("cap", c.at_h) for c in self.cap]
                            + [("fault", f.at_h) for f in self.faults]
                            + [("weather period", p.from_h) for p in self.weather.periods]):
            if hours >= self.duration_h:
                raise ValueError(f"{what} at {hours} h is not within the scenario's "
                                 f"duration_h = {self.duration_h}")
        caps = [c.at_h for c in self.cap]
        if caps != sorted(caps):
            raise ValueError(f"cap changes must be in time order, got at_h {caps}")
        return self

    def at(self, hours: float) -> datetime:
        return self.start + timedelta(hours=hours)

    @property
    def end(self) -> datetime:
        return self.at(self.duration_h)


class ScenarioError(ValueError):
    """A scenario that cannot be read or does not validate."""


def load_scenario_file(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"scenario {path} is invalid:\n"
                            + "\n".join(validation_lines(exc))) from exc


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


@cache
def load_scenario(name: str) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    path = scenario_path(name)
    if not path.exists():
        raise ScenarioError(f"unknown scenario {name!r}; shipped scenarios are "
                            f"{', '.join(shipped_scenarios())}, or give a path to a .toml file")
    return load_scenario_file(path)


def scenario_path(name: str) -> Path:
    """The file of a scenario given by path, or of a shipped one given by name."""
    path = Path(name)
    return path if path.suffix == ".toml" and path.exists() else SCENARIO_DIR / f"{name}.toml"
