"""Series from files (CSV or Parquet) for backtests, cleaned, with a report of what was
wrong and what was done about it.

The file has a timestamp column (ISO 8601; with an offset, or naive and then read in the
site's timezone), a power column [W] and optionally weather-forecast columns. Problems
are reported and handled, never crashed on:

* unreadable stamps: dropped and counted;
* naive stamps on DST days: the repeated autumn hour is resolved by order where it can
  be, otherwise its stamps are dropped; stamps inside the spring gap are dropped;
* duplicated stamps: the first kept;
* finer than 15 minutes, or stamped off the quarter hours: averaged into 15-minute
  intervals; coarser: an error;
* gaps: left unknown (the models' filter carries through them) and counted;
* PV and wind below zero down to −5 % of capacity (inverter self-consumption at night):
  set to 0; beyond −5 % or above 105 % of capacity: out of range, set unknown;
* load below zero, or above three times its 99th percentile: set unknown;
* a frozen sensor (8 or more equal non-zero values in a row, 2 h, below the rating
  for PV and wind, where clipping holds them flat): set unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecasting.series import (
    STEPS_PER_DAY,
    WEATHER_COLUMNS,
    Kind,
    PowerCurve,
    SeriesData,
    Site,
)
from forecasting.solar import PvPlantGeometry, interval_clear_sky_power_w

STEP_S = 900
FROZEN_RUN = 8


class DataError(ValueError):
    """The data cannot be used at all; the message says why and what would do."""


@dataclass
class DataReport:
    source: str
    rows: int = 0
    unreadable_stamps: int = 0
    naive_stamps: bool = False
    dst_days: list[str] = field(default_factory=list)
    dst_dropped: int = 0
    duplicates: int = 0
    resampled_from_s: float | None = None
    steps: int = 0
    missing_steps: int = 0
    gaps: int = 0
    longest_gap_h: float = 0.0
    negative_set_zero: int = 0
    out_of_range: int = 0
    frozen_runs: int = 0
    frozen_points: int = 0
    weather_columns: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.source}: {self.rows} rows, {self.steps} steps of 15 min "
               f"({self.steps / STEPS_PER_DAY:.1f} days)"]
        if self.unreadable_stamps:
            out.append(f"{self.unreadable_stamps} unreadable timestamps dropped")
        if self.dst_days:
            how = "naive stamps read in the site timezone" if self.naive_stamps else "offsets given"
            out.append(f"DST change on {', '.join(self.dst_days)} ({how})"
                       + (f"; {self.dst_dropped} ambiguous or missing stamps dropped"
                          if self.dst_dropped else ""))
        if self.duplicates:
            out.append(f"{self.duplicates} duplicated timestamps: the first of each kept")
        if self.resampled_from_s:
            out.append(f"resampled from {self.resampled_from_s:g} s steps to 15-minute means "
                       "on the quarter hours")
        if self.gaps:
            out.append(f"{self.gaps} gaps, {self.missing_steps} missing steps, longest "
                       f"{self.longest_gap_h:.2f} h: left unknown")
        if self.negative_set_zero:
            out.append(f"{self.negative_set_zero} small negative values (night) set to 0")
        if self.out_of_range:
            out.append(f"{self.out_of_range} out-of-range values (spikes) set unknown")
        if self.frozen_runs:
            out.append(f"{self.frozen_runs} frozen-sensor runs ({self.frozen_points} values, "
                       f"{FROZEN_RUN}+ equal in a row) set unknown")
        out.append("weather columns: " + (", ".join(self.weather_columns) or "none"))
        return out

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".gz"):
            return pd.read_csv(path)
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from exc
    raise DataError(f"{path}: unknown format {suffix!r}; use .csv or .parquet")


def _stamps(raw: pd.Series, tz: str, report: DataReport) -> pd.DatetimeIndex:
    """UTC stamps from ISO 8601 text (NaT where unreadable or not on the clock)."""
    as_text = raw.astype(str)
    has_offset = as_text.str.contains(r"(?:[+-]\d\d:?\d\d|Z)$", regex=True)
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    if has_offset.any():
        out[has_offset] = pd.to_datetime(as_text[has_offset], utc=True, errors="coerce",
                                         format="ISO8601")
    naive = ~has_offset
    if naive.any():
        report.naive_stamps = True
        t = pd.to_datetime(as_text[naive], errors="coerce", format="ISO8601")
        idx = pd.DatetimeIndex(t)
        try:
            loc = idx.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
        except Exception:  # the repeated hour cannot be ordered: drop it
            loc = idx.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
        report.dst_dropped = int(pd.isna(loc).sum() - pd.isna(idx).sum())
        out[naive] = loc.tz_convert("UTC")
    report.unreadable_stamps = int(out.isna().sum()) - report.dst_dropped
    return pd.DatetimeIndex(out)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist(), strict=True))


def clean(power_w: pd.Series, *, kind: Kind, capacity_w: float, report: DataReport
          ) -> pd.Series:
    """Range checks and frozen-sensor detection on a regular series, in place of the
    report's counters (see the module docstring)."""
    y = power_w.to_numpy(dtype=float).copy()
    if kind in ("pv", "wind"):
        small_neg = (y < 0) & (y >= -0.05 * capacity_w)
        bad = (y < -0.05 * capacity_w) | (y > 1.05 * capacity_w)
        report.negative_set_zero = int(small_neg.sum())
        y[small_neg] = 0.0
    else:
        finite = y[np.isfinite(y)]
        top = 3.0 * np.quantile(finite, 0.99) if finite.size else np.inf
        bad = (y < 0) | (y > top)
    report.out_of_range = int(bad.sum())
    y[bad] = np.nan
    same = np.zeros(len(y), dtype=bool)
    same[1:] = (y[1:] == y[:-1]) & np.isfinite(y[1:]) & (np.abs(y[1:]) > 1e-3 * capacity_w)
    if kind in ("pv", "wind"):  # held at the rating (clipping, rated wind) is not frozen
        same &= y < 0.97 * capacity_w
    for start, n in _runs(same):
        if n + 1 >= FROZEN_RUN:
            report.frozen_runs += 1
            report.frozen_points += n + 1
            y[start - 1 : start + n] = np.nan
    return pd.Series(y, index=power_w.index)


def load_series(path: Path, *, kind: Kind, capacity_w: float, site: Site,
                time_col: str = "timestamp", power_col: str = "power_w",
                exog: tuple[str, ...] | None = None, name: str | None = None,
                tilt_deg: float | None = None, azimuth_deg: float = 180.0,
                dc_ac_ratio: float = 1.15, curve: PowerCurve | None = None
                ) -> tuple[SeriesData, DataReport]:
    """Read, regularise and clean a file into a ``SeriesData`` and its report."""
    df = read_table(path)
    report = DataReport(source=path.name, rows=len(df))
    for col, what, opt in ((time_col, "timestamp", "--time-col"),
                           (power_col, "power [W]", "--power-col")):
        if col not in df.columns:
            raise DataError(f"{path.name}: no {what} column {col!r}; the columns are "
                            f"{list(df.columns)} (choose one with {opt})")
    wanted = [c for c in WEATHER_COLUMNS if c in df.columns] if exog is None else list(exog)
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(f"{path.name}: weather columns {missing} not found; the columns are "
                        f"{list(df.columns)}")
    unknown = [c for c in wanted if c not in WEATHER_COLUMNS]
    if unknown:
        raise DataError(f"{path.name}: weather columns {unknown} are not understood; the "
                        f"models use {list(WEATHER_COLUMNS)}")
    report.weather_columns = wanted
    values = df[[power_col, *wanted]].apply(pd.to_numeric, errors="coerce")
    stamps = _stamps(df[time_col], site.tz, report)
    values.index = stamps
    values = values[~pd.isna(stamps)]
    if values.empty:
        raise DataError(f"{path.name}: no readable timestamp in column {time_col!r} "
                        "(ISO 8601 expected, e.g. 2026-04-05T10:15:00+08:00)")
    values = values.sort_index(kind="stable")
    dup = values.index.duplicated(keep="first")
    report.duplicates = int(dup.sum())
    values = values[~dup]
    local = values.index.tz_convert(site.tz)
    offsets = pd.Series(local.map(lambda t: t.utcoffset()), index=local)
    change = offsets.ne(offsets.shift()) & offsets.shift().notna()
    report.dst_days = sorted({str(t.date()) for t in offsets.index[change.to_numpy()]})
    step = float(np.median(np.diff(values.index.asi8)) / 1e9) if len(values) > 1 else STEP_S
    if step > STEP_S:
        raise DataError(f"{path.name}: the data steps every {step:g} s; forecasting needs "
                        f"15-minute ({STEP_S} s) data or finer")
    start = values.index[0].floor(f"{STEP_S}s")
    end = values.index[-1].floor(f"{STEP_S}s")
    grid = pd.date_range(start, end, freq=f"{STEP_S}s")
    on_grid = bool((values.index == values.index.floor(f"{STEP_S}s")).all())
    if step < STEP_S or not on_grid:  # finer, or stamped off the quarter hours
        report.resampled_from_s = step
        values = values.resample(f"{STEP_S}s").mean()
    values = values.reindex(grid)
    report.steps = len(grid)
    power = clean(values[power_col], kind=kind, capacity_w=capacity_w, report=report)
    gaps = _runs(~np.isfinite(values[power_col].to_numpy(dtype=float)))
    report.gaps = len(gaps)
    report.missing_steps = sum(n for _, n in gaps)
    report.longest_gap_h = max((n for _, n in gaps), default=0) * STEP_S / 3600.0
    cs = None
    if kind == "pv":
        geo = PvPlantGeometry(latitude=site.latitude, longitude=site.longitude,
                              altitude_m=site.altitude_m,
                              tilt_deg=abs(site.latitude) if tilt_deg is None else tilt_deg,
                              azimuth_deg=azimuth_deg, dc_power_w=capacity_w * dc_ac_ratio,
                              rated_power_w=capacity_w)
        cs = interval_clear_sky_power_w(grid, STEP_S, geo)
    data = SeriesData(name=name or path.stem, kind=kind, capacity_w=capacity_w, index=grid,
                      y_w=power.to_numpy(dtype=float), site=site,
                      exog=values[wanted] if wanted else pd.DataFrame(index=grid),
                      clear_sky_w=cs,
                      curve=curve or (PowerCurve(rated_power_w=capacity_w)
                                      if kind == "wind" else None))
    return data, report
