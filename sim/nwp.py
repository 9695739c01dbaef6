"""The weather forecasts a county receives (a numerical-weather-prediction product):
global horizontal irradiance, wind speed and air temperature for the next 72 h at
15-minute steps, re-issued on a schedule, with seeded errors that grow with lead time.

The forecast of an issue is the simulated weather itself (15-minute means, smoothed as
forecasts are) plus an error that is autocorrelated across lead times and whose spread
grows from ``*_sd_0`` at lead 0 to ``*_sd_72`` at 72 h (as the square root of the lead).
The same seed and issue time give the same forecast.

Interface (``docs/simulator.md``): a CSV file rewritten atomically at each issue, one row
per step: ``issued_at``, ``valid_time`` (ISO 8601, UTC), ``lead_h``, ``ghi_w_m2``,
``wind_speed_m_s``, ``temp_air_c``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib

from sim.clock import TimeSource, sleep_until_s
from sim.spec import PlantSpec
from sim.weather import MINUTES_PER_DAY, Weather

log = logging.getLogger(__name__)

COLUMNS = ("issued_at", "valid_time", "lead_h", "ghi_w_m2", "wind_speed_m_s", "temp_air_c")


@dataclass(frozen=True, kw_only=True)
class NwpSpec:
    """When forecasts are issued and how wrong they are."""

    issue_every_h: float = 6.0  # issued at 00, 06, 12, 18 UTC
    horizon_h: float = 72.0
    step_s: float = 900.0
    k_sd_0: float = 0.05  # clear-sky index error [1] at lead 0 ...
    k_sd_72: float = 0.25  # ... and at 72 h
    wind_sd_0: float = 0.08  # log wind-speed error [1]
    wind_sd_72: float = 0.35
    temp_sd_0_k: float = 0.5
    temp_sd_72_k: float = 2.5
    error_memory_h: float = 6.0  # autocorrelation time of the error across lead times


class WeatherForecaster:
    """Issues weather forecasts of a plant's site from its simulated weather."""

    def __init__(self, weather: Weather, spec: PlantSpec, *, seed: int,
                 nwp: NwpSpec | None = None) -> None:
        self.weather = weather
        self.spec = spec
        self.seed = seed
        self.nwp = nwp or NwpSpec()
        self._site = pvlib.location.Location(spec.latitude, spec.longitude,
                                             altitude=spec.altitude_m)

    def _truth(self, start_s: float, steps: int) -> pd.DataFrame:
        """The simulated weather as 15-minute means from ``start_s`` [POSIX s]."""
        step_min = int(self.nwp.step_s // 60)
        minutes = steps * step_min
        k: list[float] = []
        wind: list[float] = []
        temp: list[float] = []
        t = start_s
        while len(k) < minutes:
            day = self.weather.day_for(t)
            i = int((t - day.t0_s) // 60)
            take = min(MINUTES_PER_DAY - i, minutes - len(k))
            k.extend(day.clear_sky_index[i : i + take])
            wind.extend(day.wind_speed_m_s[i : i + take])
            temp.extend(day.temp_air_c[i : i + take])
            t += take * 60.0
        index = pd.date_range(pd.Timestamp(start_s, unit="s", tz="UTC"), periods=steps,
                              freq=f"{int(self.nwp.step_s)}s")

        def mean15(a: list[float]) -> np.ndarray:
            out: np.ndarray = np.asarray(a, dtype=float).reshape(steps, step_min).mean(axis=1)
            return out

        return pd.DataFrame({"k": mean15(k), "wind": mean15(wind), "temp": mean15(temp)},
                            index=index)

    def _errors(self, issued_at_s: float, lead_h: np.ndarray) -> np.ndarray:
        """Three error series (k, log wind, temperature) over the lead times."""
        n = self.nwp
        rng = np.random.default_rng([self.seed, 0x4E5750, int(issued_at_s)])
        phi = math.exp(-n.step_s / 3600.0 / n.error_memory_h)
        z = np.empty((3, len(lead_h)))
        z[:, 0] = rng.standard_normal(3)
        shocks = rng.standard_normal((3, len(lead_h)))
        for i in range(1, len(lead_h)):
            z[:, i] = phi * z[:, i - 1] + math.sqrt(1 - phi * phi) * shocks[:, i]
        growth = np.sqrt(np.clip(lead_h / 72.0, 0.0, None))
        sd = np.array([[n.k_sd_0, n.k_sd_72], [n.wind_sd_0, n.wind_sd_72],
                       [n.temp_sd_0_k, n.temp_sd_72_k]])
        out: np.ndarray = (sd[:, :1] + (sd[:, 1:] - sd[:, :1]) * growth) * z
        return out

    def issue(self, issued_at_s: float) -> pd.DataFrame:
        """The forecast issued at ``issued_at_s`` [POSIX s], for the steps after it."""
        n = self.nwp
        steps = int(n.horizon_h * 3600 // n.step_s)
        start = math.ceil(issued_at_s / n.step_s) * n.step_s
        truth = self._truth(start, steps)
        issued = pd.Timestamp(issued_at_s, unit="s", tz="UTC")
        lead_h = np.asarray((truth.index - issued).total_seconds(), dtype=float) / 3600.0
        e_k, e_w, e_t = self._errors(issued_at_s, lead_h)
        # forecasts do not resolve single clouds: the index is smoothed over two hours
        k = truth["k"].rolling(8, center=True, min_periods=1).mean().to_numpy()
        k_fc = np.clip(k + e_k, 0.05, 1.0)
        ghi_cs = self._site.get_clearsky(truth.index, model="ineichen")["ghi"].to_numpy()
        return pd.DataFrame({
            "issued_at": issued,
            "valid_time": truth.index,
            "lead_h": np.round(lead_h, 4),
            "ghi_w_m2": np.round(np.nan_to_num(ghi_cs * k_fc).clip(min=0.0), 2),
            "wind_speed_m_s": np.round(truth["wind"].to_numpy() * np.exp(e_w), 3),
            "temp_air_c": np.round(truth["temp"].to_numpy() + e_t, 2),
        })

    def truth(self, start_s: float, steps: int) -> pd.DataFrame:
        """What actually happened, on the forecast's steps: ``ghi_w_m2``,
        ``wind_speed_m_s``, ``temp_air_c`` (for grading forecasts against it)."""
        t = self._truth(start_s, steps)
        ghi_cs = self._site.get_clearsky(t.index, model="ineichen")["ghi"].to_numpy()
        return pd.DataFrame({"ghi_w_m2": np.nan_to_num(ghi_cs * t["k"].to_numpy()),
                             "wind_speed_m_s": t["wind"].to_numpy(),
                             "temp_air_c": t["temp"].to_numpy()}, index=t.index)

    def last_issue_s(self, now_s: float) -> float:
        every = self.nwp.issue_every_h * 3600.0
        return math.floor(now_s / every) * every


def write_forecast(frame: pd.DataFrame, path: Path) -> None:
    """Rewrite the forecast file atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    out = frame.copy()
    out["issued_at"] = out["issued_at"].map(lambda t: t.isoformat())
    out["valid_time"] = out["valid_time"].map(lambda t: t.isoformat())
    out.to_csv(tmp, index=False, columns=list(COLUMNS))
    os.replace(tmp, path)


def read_forecast(path: Path) -> pd.DataFrame:
    """The forecast file as written: times as timezone-aware UTC timestamps."""
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a weather forecast file (missing {missing})")
    for c in ("issued_at", "valid_time"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df


async def publish(forecaster: WeatherForecaster, clock: TimeSource, path: Path) -> None:
    """Issue at once (the latest scheduled issue), then at every issue time; runs until
    cancelled."""
    every = forecaster.nwp.issue_every_h * 3600.0
    t = forecaster.last_issue_s(clock.time())
    while True:
        frame = await asyncio.to_thread(forecaster.issue, t)
        await asyncio.to_thread(write_forecast, frame, path)
        log.info("weather forecast issued at %s written to %s",
                 pd.Timestamp(t, unit="s", tz="UTC").isoformat(), path)
        t += every
        await sleep_until_s(clock, t)
