"""Simulated series for forecast backtests: a site's PV, wind and load as 15-minute means,
with the weather forecast that was available a day ahead.

One column per weather variable (``ghi_w_m2``, ``wind_speed_m_s``, ``temp_air_c``) cannot
hold every vintage, so the file holds, for each step, the one forecast that every issue
of the product backtested on it could have had:

* ``day-ahead`` (for short-term backtests): the simulator's NWP issue of 00:00 UTC the day
  before (lead 24-48 h), which a short-term issue at 08:00 local (UTC+8) has;
* ``intraday`` (for ultra-short backtests): the latest 6-hourly issue at least 4 h before
  the step (lead 4-10 h), which every ultra-short issue in the 4 h before it has.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.series import WEATHER_COLUMNS
from sim.nwp import WeatherForecaster
from sim.weather import Weather
from vpp.config import SiteConfig
from vpp.simbridge import plant_spec

VINTAGES = ("day-ahead", "intraday")
INTRADAY_MIN_LEAD_S = 4 * 3600.0


def available_weather(forecaster: WeatherForecaster, start_s: float, end_s: float,
                      vintage: str = "day-ahead") -> pd.DataFrame:
    """Each 15-minute step's weather forecast as ``vintage`` (module docstring) has it."""
    if vintage not in VINTAGES:
        raise ValueError(f"vintage {vintage!r} is not one of {VINTAGES}")
    every = forecaster.nwp.issue_every_h * 3600.0
    steps = pd.date_range(pd.Timestamp(start_s, unit="s", tz="UTC"),
                          pd.Timestamp(end_s, unit="s", tz="UTC"), freq="15min",
                          inclusive="left")
    t = np.asarray((steps - pd.Timestamp(0, tz="UTC")).total_seconds(), dtype=float)
    if vintage == "day-ahead":
        issue = np.floor(t / 86400.0) * 86400.0 - 86400.0
    else:
        issue = np.floor((t - INTRADAY_MIN_LEAD_S) / every) * every
    parts = []
    for i in np.unique(issue):
        f = forecaster.issue(float(i)).set_index("valid_time")
        parts.append(f.reindex(steps[issue == i])[list(WEATHER_COLUMNS)])
    out = pd.concat(parts)
    lo, hi = pd.Timestamp(start_s, unit="s", tz="UTC"), pd.Timestamp(end_s, unit="s", tz="UTC")
    return out[(out.index >= lo) & (out.index < hi)]


def simulated_series(config: SiteConfig, *, start: datetime, days: int, seed: int,
                     vintage: str = "day-ahead") -> dict[str, pd.DataFrame]:
    """Per series (each PV and wind asset, and ``load``: the sum of the loads, as demand):
    a frame indexed by UTC step start with ``power_w`` and the weather columns."""
    spec = plant_spec(config)
    t0 = start.timestamp()
    t1 = t0 + days * 86400.0
    weather = Weather(spec, seed=seed, first_day_s=t0 - 86400.0)  # the first day-ahead issue
    frame = weather.frame(t0, t1).resample("15min").mean()
    nwp = available_weather(WeatherForecaster(weather, spec, seed=seed), t0, t1, vintage)
    out = {}
    for a in config.assets:
        if a.kind in ("pv", "wind"):
            out[a.id] = frame[[a.id]].rename(columns={a.id: "power_w"}).join(nwp)
    loads = [a.id for a in config.base_loads()]  # flexible loads are planned, not forecast
    if loads:
        out["load"] = (-frame[loads].sum(axis=1)).to_frame("power_w").join(nwp)
    return out


def write_series(series: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """One CSV per series: ``timestamp`` (ISO 8601, UTC), ``power_w``, weather columns."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in series.items():
        p = out_dir / f"{name}.csv"
        d = df.copy()
        d.index = d.index.map(lambda t: t.isoformat())
        d.index.name = "timestamp"
        d.round(3).to_csv(p)
        paths.append(p)
    return paths
