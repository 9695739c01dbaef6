"""One series on a regular grid, with what its models need: the clear-sky envelope (PV),
the power curve (wind), the site's calendar (load) and weather-forecast columns.

A ``SeriesData`` covers history and the steps to forecast: ``y_w`` is NaN where nothing is
known (gaps, and every future step). An *origin* ``i`` is an issue at ``index[i]``: its
forecast may use ``y_w[:i]`` and the weather forecasts anywhere, and its step ``h``
(1-based) is the interval starting at ``index[i + h - 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal

import chinese_calendar
import numpy as np
import pandas as pd
import pvlib

Kind = Literal["pv", "wind", "load"]
KINDS: tuple[Kind, ...] = ("pv", "wind", "load")
STEPS_PER_DAY = 96  # 15-minute steps
PV_DAYLIGHT_RATIO = 0.05  # clear-sky power below this share of capacity counts as night
PV_INDEX_MAX = 1.3  # clear-sky index ceiling (cloud-edge brightening, cold cells)

# weather-forecast columns the models understand (names as the simulator's NWP file)
GHI_COL, WIND_COL, TEMP_COL = "ghi_w_m2", "wind_speed_m_s", "temp_air_c"
WEATHER_COLUMNS = (GHI_COL, WIND_COL, TEMP_COL)


@dataclass(frozen=True, kw_only=True)
class PowerCurve:
    """A wind plant's power curve: cubic from cut-in to rated speed, flat, zero past cut-out."""

    rated_power_w: float
    cut_in_m_s: float = 3.0
    rated_speed_m_s: float = 12.0
    cut_out_m_s: float = 25.0

    def power_w(self, wind_speed_m_s: np.ndarray) -> np.ndarray:
        v = np.asarray(wind_speed_m_s, dtype=float)
        frac = (v**3 - self.cut_in_m_s**3) / (self.rated_speed_m_s**3 - self.cut_in_m_s**3)
        frac = np.where(v < self.cut_in_m_s, 0.0, np.clip(frac, 0.0, 1.0))
        out: np.ndarray = np.where(v >= self.cut_out_m_s, 0.0, frac) * self.rated_power_w
        return out


@dataclass(frozen=True, kw_only=True)
class Site:
    latitude: float
    longitude: float
    altitude_m: float = 0.0
    tz: str = "Asia/Shanghai"


@dataclass(frozen=True, kw_only=True)
class SeriesData:
    """A series [W] on a regular UTC grid, with its inputs. Load is demand (positive)."""

    name: str
    kind: Kind
    capacity_w: float  # installed capacity (PV, wind); for load the peak demand scale
    index: pd.DatetimeIndex
    y_w: np.ndarray
    site: Site
    exog: pd.DataFrame = field(default_factory=pd.DataFrame)  # weather forecasts, on index
    clear_sky_w: np.ndarray | None = None  # PV: interval-mean clear-sky power [W]
    curve: PowerCurve | None = None  # wind
    _memo: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")
        if not self.capacity_w > 0:
            raise ValueError(f"capacity_w must be > 0 W, got {self.capacity_w}")
        if len(self.y_w) != len(self.index):
            raise ValueError(f"y_w has {len(self.y_w)} values for {len(self.index)} stamps")
        if self.kind == "pv" and self.clear_sky_w is None:
            raise ValueError("a PV series needs its clear-sky power (clear_sky_w)")

    @property
    def step_s(self) -> int:
        return int((self.index[1] - self.index[0]).total_seconds()) if len(self.index) > 1 \
            else 900

    def __len__(self) -> int:
        return len(self.index)

    def has(self, col: str) -> bool:
        return col in self.exog.columns and bool(np.isfinite(self.exog[col].to_numpy()).any())

    def exog_col(self, col: str) -> np.ndarray:
        return np.asarray(self.exog[col].to_numpy(dtype=float))

    def daylight(self) -> np.ndarray:
        """True where the sun is up enough to count (PV); everywhere for wind and load."""
        if self.kind != "pv":
            return np.ones(len(self), dtype=bool)
        assert self.clear_sky_w is not None
        return np.asarray(self.clear_sky_w >= PV_DAYLIGHT_RATIO * self.capacity_w)

    def scale_w(self) -> np.ndarray:
        """The unit the models work in, per step [W]: clear-sky power for PV (NaN at
        night), capacity for wind, the demand scale for load."""
        if self.kind == "pv":
            assert self.clear_sky_w is not None
            return np.where(self.daylight(), self.clear_sky_w, np.nan)
        return np.full(len(self), self.capacity_w)

    def target(self) -> np.ndarray:
        """The normalised series the models fit: clear-sky index, capacity factor, or
        demand over its scale."""
        with np.errstate(invalid="ignore", divide="ignore"):
            z = self.y_w / self.scale_w()
        if self.kind == "pv":
            z = np.clip(z, 0.0, PV_INDEX_MAX)
        return np.asarray(z, dtype=float)

    def local_index(self) -> pd.DatetimeIndex:
        return self.index.tz_convert(self.site.tz)

    def nonworking(self) -> np.ndarray:
        """1 on weekends and China's public holidays, 0 on working days (incl. the
        adjusted working days), by the site's local date."""
        if "nonworking" not in self._memo:
            self._memo["nonworking"] = self._nonworking()
        return self._memo["nonworking"]

    def _nonworking(self) -> np.ndarray:
        days = self.local_index().date
        memo: dict[date, float] = {}
        for d in set(days):
            try:
                memo[d] = 0.0 if chinese_calendar.is_workday(d) else 1.0
            except NotImplementedError:  # outside the calendar's years: weekends only
                memo[d] = 1.0 if d.weekday() >= 5 else 0.0
        return np.array([memo[d] for d in days])

    def clear_sky_ghi_w_m2(self) -> np.ndarray:
        if "ghi_cs" not in self._memo:
            loc = pvlib.location.Location(self.site.latitude, self.site.longitude,
                                          altitude=self.site.altitude_m)
            mid = self.index + pd.Timedelta(seconds=self.step_s / 2)
            self._memo["ghi_cs"] = np.asarray(
                loc.get_clearsky(mid, model="ineichen")["ghi"].to_numpy(dtype=float))
        return self._memo["ghi_cs"]
