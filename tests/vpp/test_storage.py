"""Storage round trips on both backends: SQLite (WAL) and PostgreSQL, for real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from drivers import Quality, Sample
from forecasting import Forecast
from vpp.dispatch import Schedule, SolveStatus
from vpp.storage import Storage

T0 = datetime(2026, 4, 15, 4, tzinfo=UTC)


def test_backend_and_wal(storage: Storage) -> None:
    if storage.backend == "sqlite":
        with storage.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    else:
        assert storage.backend == "postgresql"


def test_telemetry_and_interval_means(storage: Storage) -> None:
    samples = [Sample("pv1", "active_power_w", 1.5e6, "W", T0, Quality.GOOD),
               Sample("pcc", "export_w", None, "W", T0, Quality.MISSING)]
    assert storage.write_telemetry(samples) == 2
    assert storage.count("telemetry") == 2
    rows = [("pv1", T0 + timedelta(minutes=15 * i), 1e6 * i) for i in range(8)]
    storage.write_interval_means(rows)
    storage.write_interval_means([("pv1", T0, 42.0)])  # rewriting an interval replaces it
    s = storage.read_interval_means("pv1", T0 + timedelta(minutes=15))
    assert len(s) == 7 and s.iloc[0] == 1e6
    assert s.index.tz is not None
    assert storage.read_interval_means("pv1", T0).iloc[0] == 42.0


def test_forecast_vintages_read_as_issued(storage: Storage) -> None:
    idx = pd.date_range(T0, periods=4, freq="15min")
    for k, issued in enumerate([T0, T0 + timedelta(minutes=15)]):
        storage.write_forecast(Forecast("pv1", "pv", issued, "m", idx, {
            0.1: np.full(4, 1.0 + k), 0.5: np.full(4, 2.0 + k), 0.9: np.full(4, 3.0 + k)}))
    first = storage.read_forecast("pv1", T0 + timedelta(minutes=10))
    assert first.attrs["issued_at"] == T0
    assert list(first[0.5]) == [2.0] * 4
    latest = storage.read_forecast("pv1", T0 + timedelta(hours=1))
    assert latest.attrs["issued_at"] == T0 + timedelta(minutes=15)
    assert list(latest[0.9]) == [4.0] * 4
    assert storage.read_forecast("pv1", T0 - timedelta(hours=1)).empty


def test_each_horizon_keeps_its_own_vintages(storage: Storage) -> None:
    """A short-term issue at 08:00 and ultra-short issues every 15 min after it: "as
    issued at T" answers per horizon, with the model that issued it."""
    day = pd.date_range(T0, periods=288, freq="15min")
    storage.write_forecast(Forecast("wf1", "wind", T0, "sarimax-power-curve-nwp", day,
                                    {0.5: np.full(288, 7.0)}, horizon="short"))
    for k in range(3):
        t = T0 + timedelta(minutes=15 * k)
        storage.write_forecast(Forecast("wf1", "wind", t, "persistence",
                                        pd.date_range(t, periods=16, freq="15min"),
                                        {0.5: np.full(16, float(k))}, horizon="ultra-short"))
    at = T0 + timedelta(minutes=20)
    short = storage.read_forecast("wf1", at, horizon="short")
    assert short.attrs["issued_at"] == T0 and len(short) == 288
    assert short.attrs["model"] == "sarimax-power-curve-nwp"
    us = storage.read_forecast("wf1", at, horizon="ultra-short")
    assert us.attrs["issued_at"] == T0 + timedelta(minutes=15) and len(us) == 16
    assert list(us[0.5]) == [1.0] * 16
    assert storage.read_forecast("wf1", at, horizon="medium").empty


def test_schedules_keep_failed_solves_too(storage: Storage) -> None:
    ok = Schedule(created_at=T0, start=T0, step_s=900, status=SolveStatus.OPTIMAL,
                  solver="HIGHS", solve_time_s=0.02, objective=12.5,
                  battery_w={"b": np.zeros(4)}, export_worst_w=np.ones(4))
    failed = Schedule(created_at=T0, start=T0, step_s=900, status=SolveStatus.ERROR,
                      solver="HIGHS", solve_time_s=0.01, message="boom")
    storage.write_schedule(ok)
    storage.write_schedule(failed)
    assert storage.count("schedules") == 2


def test_telemetry_is_downsampled_to_1_and_15_minutes_and_old_rows_dropped(
        storage: Storage) -> None:
    asset = f"pv-ds-{storage.backend}"
    t = [T0 + timedelta(seconds=10 * i) for i in range(6 * 40)]  # 40 minutes at 10 s
    values = [float(i) for i in range(len(t))]
    samples = [Sample(asset, "active_power_w", v, "W", ts, Quality.GOOD)
               for ts, v in zip(t, values, strict=True)]
    samples[7] = Sample(asset, "active_power_w", None, "W", t[7], Quality.BAD)  # not averaged
    storage.write_telemetry(samples)
    made = storage.downsample(T0 + timedelta(minutes=40))
    assert made["telemetry_1m"] >= 40
    raw = pd.Series([np.nan if s.value is None else s.value for s in samples],
                    index=pd.DatetimeIndex(t))
    one = storage.read_telemetry(asset, "active_power_w", T0, T0 + timedelta(minutes=40),
                                 "1min")
    assert np.allclose(one.to_numpy(), raw.resample("1min").mean().to_numpy())
    fifteen = storage.read_telemetry(asset, "active_power_w", T0, T0 + timedelta(minutes=40),
                                     "15min")
    # two 15-minute buckets made (the third is not complete), then the raw tail after them
    expected = raw.resample("15min").mean()
    assert np.allclose(fifteen.iloc[:2].to_numpy(), expected.iloc[:2].to_numpy())
    assert fifteen.index[2] == T0 + timedelta(minutes=30)  # the first raw sample after them
    again = storage.downsample(T0 + timedelta(minutes=40))  # made again, not doubled
    assert again["telemetry_1m"] == made["telemetry_1m"]
    one_again = storage.read_telemetry(asset, "active_power_w", T0,
                                       T0 + timedelta(minutes=40), "1min")
    assert len(one_again) == len(one)
    # years later: raw and 1-minute rows are gone, 15-minute ones kept
    storage.downsample(T0 + timedelta(days=400))
    assert storage.read_telemetry(asset, "active_power_w", T0, T0 + timedelta(hours=1)).empty
    kept = storage.read_telemetry(asset, "active_power_w", T0, T0 + timedelta(hours=1),
                                  "15min")
    assert len(kept) >= 2


def test_a_site_keeps_each_resolution_as_long_as_it_says(storage: Storage) -> None:
    asset = f"pv-keep-{storage.backend}"
    storage.keep_days = {"raw": 1.0, "1min": 3.0, "15min": 10.0}  # as [storage] keep_*_days
    t = [T0 + timedelta(minutes=i) for i in range(60)]
    storage.write_telemetry([Sample(asset, "active_power_w", float(i), "W", ts, Quality.GOOD)
                             for i, ts in enumerate(t)])
    storage.downsample(T0 + timedelta(hours=1, minutes=20))
    hour = (asset, "active_power_w", T0, T0 + timedelta(hours=1))
    assert len(storage.read_telemetry(*hour)) == 60
    storage.downsample(T0 + timedelta(days=2))  # raw gone, 1-minute means kept
    assert storage.read_telemetry(*hour).empty
    assert len(storage.read_telemetry(*hour, "1min")) == 60
    storage.downsample(T0 + timedelta(days=5))  # 1-minute gone, 15-minute kept
    assert storage.read_telemetry(*hour, "1min").empty
    assert len(storage.read_telemetry(*hour, "15min")) == 4
    storage.downsample(T0 + timedelta(days=11))
    assert storage.read_telemetry(*hour, "15min").empty
