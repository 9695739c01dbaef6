"""Forecasters: ordered quantiles, physical bounds, zero PV at night, honest fallbacks."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from forecasting import (
    LoadForecaster,
    PvForecaster,
    PvPlantGeometry,
    WindForecaster,
    interval_clear_sky_power_w,
)
from sim.weather import Weather
from vpp.simbridge import plant_spec

Q = (0.1, 0.5, 0.9)
GEO = PvPlantGeometry(latitude=38.47, longitude=106.27, altitude_m=1110, tilt_deg=30,
                      azimuth_deg=180, dc_power_w=70e6, rated_power_w=60e6)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    from tests.conftest import DEMO_CONFIG
    from vpp.config import load_config
    spec = plant_spec(load_config(DEMO_CONFIG))
    t0 = datetime(2026, 4, 5, tzinfo=UTC).timestamp()
    w = Weather(spec, seed=3, first_day_s=t0)
    return w.frame(t0, t0 + 10 * 86400).resample("15min").mean()


def _check(fc, cap: float | None) -> None:  # type: ignore[no-untyped-def]
    lo, mid, hi = (fc.q(q) for q in Q)
    assert np.all(lo <= mid + 1e-9) and np.all(mid <= hi + 1e-9)
    assert np.all(lo >= 0)
    if cap is not None:
        assert np.all(hi <= cap + 1e-6)


def test_pv_forecast(history: pd.DataFrame) -> None:
    issue = pd.Timestamp("2026-04-13T02:00Z")  # 10:00 local
    f = PvForecaster("pv1", 60e6, lambda idx: interval_clear_sky_power_w(idx, 900, GEO))
    hist = history["pv1"][history.index < issue]
    f.fit(hist)
    fc = f.forecast(hist, issue.to_pydatetime(), 96, Q)
    assert fc.model == "sarimax-clear-sky-index"
    _check(fc, 60e6)
    local_hour = fc.index.tz_convert("Asia/Shanghai").hour
    night = (local_hour < 5) | (local_hour >= 21)
    assert np.all(fc.q(0.9)[night] == 0)
    assert fc.q(0.5)[~night].max() > 10e6
    actual = history["pv1"].reindex(fc.index).to_numpy()
    mae = np.nanmean(np.abs(actual - fc.q(0.5)))
    persistence = np.nanmean(np.abs(actual - hist.iloc[-1]))
    assert mae < persistence  # beats plain persistence over a day


def test_wind_and_load_forecasts(history: pd.DataFrame) -> None:
    issue = pd.Timestamp("2026-04-13T02:00Z")
    w = WindForecaster("wf1", 30e6)
    hist = history["wf1"][history.index < issue]
    w.fit(hist)
    _check(w.forecast(hist, issue.to_pydatetime(), 48, Q), 30e6)
    ld = LoadForecaster("load")
    demand = -history["load"][history.index < issue]
    ld.fit(demand)
    fc = ld.forecast(demand, issue.to_pydatetime(), 96, Q)
    _check(fc, None)
    actual = (-history["load"]).reindex(fc.index).to_numpy()
    inside = np.mean((actual >= fc.q(0.1)) & (actual <= fc.q(0.9)))
    assert inside > 0.5
    assert np.nanmean(np.abs(actual - fc.q(0.5))) / np.nanmean(actual) < 0.1


def test_without_history_the_fallback_says_so() -> None:
    empty = pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC"))
    issue = datetime(2026, 4, 13, 2, tzinfo=UTC)
    f = PvForecaster("pv1", 60e6, lambda idx: interval_clear_sky_power_w(idx, 900, GEO))
    f.fit(empty)
    fc = f.forecast(empty, issue, 16, Q)
    assert fc.model == "clear-sky-climatology"
    _check(fc, 60e6)
    w = WindForecaster("wf1", 30e6)
    w.fit(empty)
    assert w.forecast(empty, issue, 16, Q).model == "persistence"
    with pytest.raises(KeyError, match="quantiles"):
        fc.q(0.25)
