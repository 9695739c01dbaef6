"""Weather forecasts from the simulator: 72 h at 15 min, error growing with lead time,
seeded, published as a file rewritten whole."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from sim import SimClock
from sim.nwp import COLUMNS, WeatherForecaster, publish, read_forecast, write_forecast
from sim.weather import Weather
from vpp.config import SiteConfig
from vpp.simbridge import plant_spec

DAY0 = datetime(2026, 4, 10, tzinfo=UTC)


def _forecaster(demo_config: SiteConfig, seed: int = 4) -> WeatherForecaster:
    spec = plant_spec(demo_config)
    return WeatherForecaster(Weather(spec, seed=9, first_day_s=DAY0.timestamp()), spec,
                             seed=seed)


def test_an_issue_covers_72_hours_at_15_minutes(demo_config: SiteConfig) -> None:
    fc = _forecaster(demo_config)
    t = DAY0.timestamp() + 6 * 3600
    df = fc.issue(t)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 72 * 4
    assert df["lead_h"].iloc[0] == 0.0 and df["lead_h"].iloc[-1] == pytest.approx(71.75)
    assert (df["ghi_w_m2"] >= 0).all() and (df["wind_speed_m_s"] >= 0).all()
    night = df["valid_time"].dt.tz_convert("Asia/Shanghai").dt.hour.isin([0, 1, 2, 3])
    assert (df.loc[night, "ghi_w_m2"] == 0).all()  # no sun at night, by construction
    assert df.loc[~night, "ghi_w_m2"].max() > 500


def test_same_seed_and_issue_time_same_forecast(demo_config: SiteConfig) -> None:
    t = DAY0.timestamp() + 12 * 3600
    a, b = _forecaster(demo_config).issue(t), _forecaster(demo_config).issue(t)
    assert a.equals(b)
    assert not a.equals(_forecaster(demo_config, seed=5).issue(t))


def test_the_error_grows_with_lead_time(demo_config: SiteConfig) -> None:
    fc = _forecaster(demo_config)
    early: dict[str, list[float]] = {"wind_speed_m_s": [], "temp_air_c": [], "ghi_w_m2": []}
    late: dict[str, list[float]] = {k: [] for k in early}
    for i in range(24):  # six days of issues, every 6 h
        t = DAY0.timestamp() + i * 6 * 3600
        df = fc.issue(t)
        truth = fc.truth(df["valid_time"].iloc[0].timestamp(), len(df))
        for col in early:
            err = df[col].to_numpy() - truth[col].to_numpy()
            lead = df["lead_h"].to_numpy()
            early[col].extend(err[lead < 6])
            late[col].extend(err[lead >= 48])

    def rmse(v: list[float]) -> float:
        return float(np.sqrt(np.mean(np.square(v))))

    for col in early:
        assert rmse(late[col]) > 1.5 * rmse(early[col]), col
    assert rmse(early["temp_air_c"]) < 1.0 < rmse(late["temp_air_c"])


def test_the_file_is_rewritten_whole_and_read_back(tmp_path: Path,
                                                   demo_config: SiteConfig) -> None:
    fc = _forecaster(demo_config)
    path = tmp_path / "forecast.csv"
    first = fc.issue(DAY0.timestamp())
    write_forecast(first, path)
    back = read_forecast(path)
    assert len(back) == len(first)
    assert back["valid_time"].iloc[0] == first["valid_time"].iloc[0]
    assert str(back["valid_time"].dt.tz) == "UTC"
    np.testing.assert_allclose(back["wind_speed_m_s"], first["wind_speed_m_s"])
    write_forecast(fc.issue(DAY0.timestamp() + 6 * 3600), path)
    assert read_forecast(path)["issued_at"].iloc[0].hour == 6
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a weather forecast file"):
        read_forecast(tmp_path / "bad.csv")


async def test_publish_issues_on_schedule(tmp_path: Path, demo_config: SiteConfig) -> None:
    """At ×7200 a 6 h issue interval is 3 s of wall time. The clock is held at 05:59:58
    until the first issue is read: 2 simulated s are 0.3 ms of wall time, less than an
    issue takes to write."""
    fc = _forecaster(demo_config)
    clock = SimClock(start=datetime(2026, 4, 11, 5, 59, 58, tzinfo=UTC), speed=7200.0)
    clock.hold()
    path = tmp_path / "forecast.csv"
    task = asyncio.create_task(publish(fc, clock, path))
    try:
        for _ in range(500):
            if path.exists():
                break
            await asyncio.sleep(0.02)
        assert read_forecast(path)["issued_at"].iloc[0] == datetime(2026, 4, 11, 0,
                                                                    tzinfo=UTC)
        clock.release()
        for _ in range(200):  # the 06:00 issue follows a few simulated seconds later
            await asyncio.sleep(0.02)
            if read_forecast(path)["issued_at"].iloc[0].hour == 6:
                break
        assert read_forecast(path)["issued_at"].iloc[0].hour == 6
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
