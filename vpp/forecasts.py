"""The site's forecasts on schedule: one ``SeriesForecaster`` per series (each PV and wind
asset, and ``load``: the site's demand), two products.

* **ultra-short**: the next 4 h at 15 min, issued every ``forecasting.issue_interval_s``;
* **short-term**: ``forecasting.short_term_horizon_h`` ahead (72 h by default), issued once
  a day at ``forecasting.short_term_issue_time`` (site-local), and at start.

With ``forecasting.weather_file`` set, the models may use the weather forecast (as
``vpp.weather.NwpArchive`` lines it up). Models are refitted (and chosen again) every
``forecasting.refit_interval_s``. Everything here runs in the controller's forecast
process (``run_forecasts``) on copies of the history; nothing touches the network or the
disk. The plan takes the ultra-short forecast for its first 4 h and the short-term one
after (``combined``).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from forecasting import (
    HORIZON_STEPS,
    Forecast,
    PowerCurve,
    PvPlantGeometry,
    SeriesData,
    SeriesForecaster,
    Site,
    clear_sky_power_w,
    interval_clear_sky_power_w,
)
from vpp.config import LoadAsset, PvAsset, SiteConfig, WindAsset
from vpp.weather import NwpArchive

log = logging.getLogger(__name__)

ULTRA_SHORT, SHORT = "ultra-short", "short"


class SiteForecasts:
    """Fits and issues the site's series; pure computation over the history it is given."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        fc = config.forecasting
        s = config.site
        self.site = Site(latitude=s.latitude, longitude=s.longitude, altitude_m=s.altitude_m,
                         tz=s.timezone)
        self.step_s = fc.step_s
        self.geometry: dict[str, PvPlantGeometry] = {}
        self.kinds: dict[str, str] = {}
        self.capacity_w: dict[str, float] = {}
        self.curves: dict[str, PowerCurve] = {}
        for a in config.of_kind("pv"):
            assert isinstance(a, PvAsset)
            self.geometry[a.id] = PvPlantGeometry(
                latitude=s.latitude, longitude=s.longitude, altitude_m=s.altitude_m,
                tilt_deg=a.tilt_deg, azimuth_deg=a.azimuth_deg, dc_power_w=a.dc_power_w,
                rated_power_w=a.rated_power_w)
            self.kinds[a.id], self.capacity_w[a.id] = "pv", a.rated_power_w
        for w in config.of_kind("wind"):
            assert isinstance(w, WindAsset)
            self.kinds[w.id], self.capacity_w[w.id] = "wind", w.rated_power_w
            self.curves[w.id] = PowerCurve(rated_power_w=w.rated_power_w,
                                           cut_in_m_s=w.cut_in_m_s,
                                           rated_speed_m_s=w.rated_speed_m_s,
                                           cut_out_m_s=w.cut_out_m_s)
        loads = config.of_kind("load")
        if loads:
            peak = sum(float(ld.peak_w or (ld.flexible.max_w if ld.flexible else 0.0))
                       for ld in loads if isinstance(ld, LoadAsset))
            self.kinds["load"], self.capacity_w["load"] = "load", max(peak, 1.0)
        self.forecasters = {n: SeriesForecaster(n, fc.quantiles, fc.calibration_days)
                            for n in self.kinds}
        self.issued: dict[str, dict[str, Forecast]] = {ULTRA_SHORT: {}, SHORT: {}}

    def series_data(self, name: str, history: pd.Series, now: datetime, steps: int,
                    weather: NwpArchive | None = None) -> tuple[SeriesData, int]:
        """The series on a regular grid up to ``now`` plus ``steps`` to come, and the
        origin (the position of the first step to forecast)."""
        origin_t = pd.Timestamp(now).floor(f"{self.step_s}s")
        days = self.config.forecasting.history_days
        start = origin_t - pd.Timedelta(days=days)
        grid = pd.date_range(start, origin_t + pd.Timedelta(seconds=self.step_s * (steps - 1)),
                             freq=f"{self.step_s}s")
        y = history.reindex(grid).to_numpy(dtype=float, copy=True)
        origin = int(grid.searchsorted(origin_t))
        y[origin:] = np.nan
        kind = self.kinds[name]
        cs = interval_clear_sky_power_w(grid, self.step_s, self.geometry[name]) \
            if kind == "pv" else None
        exog = weather.exog(grid, now) if weather is not None else pd.DataFrame(index=grid)
        return SeriesData(name=name, kind=kind,  # type: ignore[arg-type]
                          capacity_w=self.capacity_w[name], index=grid, y_w=y, site=self.site,
                          exog=exog, clear_sky_w=cs, curve=self.curves.get(name)), origin

    def fit(self, history: dict[str, pd.Series], now: datetime,
            weather: NwpArchive | None = None) -> dict[str, dict[str, str]]:
        """Refit and choose every series' models; the choices per series and horizon."""
        out = {}
        for name, f in self.forecasters.items():
            data, origin = self.series_data(name, history[name], now, 1, weather)
            out[name] = f.fit(data, origin)
        return out

    def issue(self, history: dict[str, pd.Series], now: datetime, horizon: str,
              steps: int, weather: NwpArchive | None = None) -> dict[str, Forecast]:
        """Issue ``horizon`` for every series (``steps`` of 15 min)."""
        out = {}
        for name, f in self.forecasters.items():
            data, origin = self.series_data(name, history[name], now, steps, weather)
            model, qp = f.quantile_paths(data, np.array([origin]), steps, horizon)
            out[name] = Forecast(series=name, kind=self.kinds[name], issued_at=now, model=model,
                                 index=data.index[origin : origin + steps],
                                 quantiles={q: v[0] for q, v in qp.items()}, horizon=horizon)
        self.issued[horizon] = out
        return out

    def short_term_due(self, last: datetime | None, now: datetime) -> bool:
        """True at start and once a day from the configured local time."""
        if last is None:
            return True
        tz = ZoneInfo(self.site.tz)
        hh, mm = (int(x) for x in self.config.forecasting.short_term_issue_time.split(":"))
        local = now.astimezone(tz)
        today = datetime.combine(local.date(), time(hh, mm), tz)
        latest = today if local >= today else today - timedelta(days=1)
        return last < latest

    def combined(self) -> dict[str, Forecast]:
        """Per series: the ultra-short forecast, then the short-term one beyond it."""
        out: dict[str, Forecast] = {}
        for name in self.forecasters:
            us, st = self.issued[ULTRA_SHORT].get(name), self.issued[SHORT].get(name)
            if us is None or st is None:
                one = us or st
                if one is not None:
                    out[name] = one
                continue
            tail = st.index > us.index[-1]
            model = us.model if us.model == st.model else f"{us.model} + {st.model}"
            out[name] = Forecast(
                series=name, kind=us.kind, issued_at=us.issued_at, model=model,
                index=us.index.append(st.index[tail]),
                quantiles={q: np.concatenate([us.q(q), st.q(q)[tail]]) for q in us.quantiles},
                horizon="combined")
        return out


@dataclass(frozen=True)
class ForecastRun:
    """What one forecasting round returns to the controller."""

    state: SiteForecasts  # with its fitted models, for the next round
    issued: list[Forecast]
    combined: dict[str, Forecast]
    envelope: dict[str, pd.Series]  # PV clear-sky power at 1-minute steps [W]
    log_records: list[logging.LogRecord]  # the round's log (model choices, models left out)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # picklable as text
        record.exc_info = None
        self.records.append(record)


def run_forecasts(sf: SiteForecasts, now: datetime, *, fit: bool, short_term: bool,
                  history: dict[str, pd.Series], weather: NwpArchive | None) -> ForecastRun:
    """One round: refit if asked, issue ultra-short (and short-term if due). Runs in the
    controller's forecast process, so that no fit holds the control loop's interpreter."""
    keep = _Keep()
    logger = logging.getLogger("forecasting")
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        return _round(sf, now, fit=fit, short_term=short_term, history=history,
                      weather=weather, keep=keep)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)


def _round(sf: SiteForecasts, now: datetime, *, fit: bool, short_term: bool,
           history: dict[str, pd.Series], weather: NwpArchive | None, keep: _Keep
           ) -> ForecastRun:
    fc = sf.config.forecasting
    if fit:
        sf.fit(history, now, weather)
    issued = list(sf.issue(history, now, ULTRA_SHORT, HORIZON_STEPS[ULTRA_SHORT],
                           weather).values())
    if short_term:
        steps = round(fc.short_term_horizon_h * 3600 / fc.step_s)
        issued += list(sf.issue(history, now, SHORT, steps, weather).values())
    env = clear_sky_envelope(sf.geometry, now, fc.short_term_horizon_h)
    return ForecastRun(sf, issued, sf.combined(), env, keep.records)


def clear_sky_envelope(geometry: dict[str, PvPlantGeometry], now: datetime,
                       hours: float) -> dict[str, pd.Series]:
    """Each PV plant's clear-sky power [W] at 1-minute steps from ``now`` for ``hours``:
    the most it can deliver (the real-time loop's potential)."""
    t0 = pd.Timestamp(now).floor("1min")
    idx = pd.date_range(t0, t0 + pd.Timedelta(hours=hours), freq="1min")
    return {pid: pd.Series(clear_sky_power_w(idx, geo), index=idx)
            for pid, geo in geometry.items()}


def warm_up() -> None:
    """Import the models' libraries in the forecast process ahead of the first round."""
    import statsmodels.api
    import statsmodels.tsa.statespace.sarimax  # noqa: F401


def die_with_parent(parent_pid: int, *, every_s: float = 1.0) -> None:
    """The forecast process's initializer: end it once the controller that started it is
    gone. A controller killed with SIGKILL never shuts its pool down, and the worker, which
    holds both ends of its own call queue, would wait for work for ever."""

    def watch() -> None:
        tick = threading.Event()  # never set: a sleep
        while os.getppid() == parent_pid:
            tick.wait(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


__all__ = ["HORIZON_STEPS", "SHORT", "ULTRA_SHORT", "ForecastRun", "SiteForecasts",
           "clear_sky_envelope", "die_with_parent", "run_forecasts", "warm_up"]
