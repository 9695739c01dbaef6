"""Simulated series for forecast backtests: a site's PV, wind and load as 15-minute means,
with the weather forecast that was available a day ahead.

For each step, the weather columns (``ghi_w_m2``, ``wind_speed_m_s``, ``temp_air_c``) come
from the simulator's NWP issue of 00:00 UTC the day before (lead 24-48 h): one column per
variable cannot hold every vintage, so every model gets the older, worse forecast, for both
horizons. A backtest on these files is therefore pessimistic for the ultra-short horizon.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from sim.nwp import WeatherForecaster
from sim.weather import Weather
from vpp.config import SiteConfig
from vpp.simbridge import plant_spec

WEATHER_COLUMNS = ("ghi_w_m2", "wind_speed_m_s", "temp_air_c")


def day_ahead_weather(forecaster: WeatherForecaster, start_s: float, end_s: float
                      ) -> pd.DataFrame:
    """The forecast of each 15-minute step issued at 00:00 UTC of the day before it."""
    parts = []
    day = np.floor(start_s / 86400.0) * 86400.0
    while day < end_s:
        f = forecaster.issue(day - 86400.0).set_index("valid_time")
        parts.append(f.loc[(f.index >= pd.Timestamp(day, unit="s", tz="UTC"))
                           & (f.index < pd.Timestamp(day + 86400.0, unit="s", tz="UTC")),
                           list(WEATHER_COLUMNS)])
        day += 86400.0
    out = pd.concat(parts)
    lo, hi = pd.Timestamp(start_s, unit="s", tz="UTC"), pd.Timestamp(end_s, unit="s", tz="UTC")
    return out[(out.index >= lo) & (out.index < hi)]


def simulated_series(config: SiteConfig, *, start: datetime, days: int, seed: int
                     ) -> dict[str, pd.DataFrame]:
    """Per series (each PV and wind asset, and ``load``: the sum of the loads, as demand):
    a frame indexed by UTC step start with ``power_w`` and the weather columns."""
    spec = plant_spec(config)
    t0 = start.timestamp()
    t1 = t0 + days * 86400.0
    weather = Weather(spec, seed=seed, first_day_s=t0 - 86400.0)  # the first day-ahead issue
    frame = weather.frame(t0, t1).resample("15min").mean()
    nwp = day_ahead_weather(WeatherForecaster(weather, spec, seed=seed), t0, t1)
    out = {}
    for a in config.assets:
        if a.kind in ("pv", "wind"):
            out[a.id] = frame[[a.id]].rename(columns={a.id: "power_w"}).join(nwp)
    loads = [a.id for a in config.assets if a.kind == "load"]
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
