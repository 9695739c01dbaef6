"""Live forecast accuracy (vpp.accuracy): graded at the product's lead, by the grid's rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from forecasting.grading import north_china
from forecasting.models import Forecast
from vpp.accuracy import LiveAccuracy

T0 = datetime(2026, 4, 15, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)


def forecast(issued_at: datetime, horizon: str, p50_w: float, steps: int,
             series: str = "wf1") -> Forecast:
    index = pd.date_range(issued_at, periods=steps, freq="15min")
    return Forecast(series=series, kind="wind", issued_at=issued_at, model="m", index=index,
                    quantiles={0.1: np.full(steps, 0.5 * p50_w), 0.5: np.full(steps, p50_w),
                               0.9: np.full(steps, 1.5 * p50_w)}, horizon=horizon)


def test_the_ultra_short_forecast_is_graded_at_its_fourth_hour_only() -> None:
    acc = LiveAccuracy({"wf1": 30e6}, step_s=900)
    acc.issued(forecast(T0, "ultra-short", 10e6, 16))  # 4 h ahead
    graded_step = T0 + timedelta(hours=4) - STEP  # the step ending 4 h after the issue
    for k in range(16):
        acc.measured("wf1", T0 + k * STEP, 13e6)
    assert acc.accuracy() == {("wf1", "ultra-short"):
                              pytest.approx(north_china(np.array([13e6]), np.array([10e6]),
                                                        30e6))}
    acc.measured("wf1", graded_step, 1e6)  # a second measurement of the step: not graded
    assert len(acc._graded[("wf1", "ultra-short")]) == 1


def test_the_short_term_forecast_is_graded_over_the_next_day() -> None:
    acc = LiveAccuracy({"wf1": 30e6}, step_s=900)
    issue = T0 + timedelta(hours=8)
    acc.issued(forecast(issue, "short", 12e6, 72 * 4))
    for k in range(72 * 4):
        acc.measured("wf1", issue + k * STEP, 12e6 if k % 2 else 18e6)
    graded = acc._graded[("wf1", "short")]
    assert len(graded) == 96  # 16 h to 40 h after the issue: the next day
    expected = 1 - np.sqrt(np.mean(((np.array([m for m, _ in graded]) - 12e6) / 30e6) ** 2))
    assert acc.accuracy()[("wf1", "short")] == pytest.approx(expected)
    assert 0.85 < expected < 1.0


def test_pv_night_is_not_graded_and_unknown_products_are_ignored() -> None:
    acc = LiveAccuracy({"pv1": 60e6}, step_s=900)
    idx = pd.date_range(T0, periods=24 * 60, freq="1min")
    sky = pd.Series(np.where((idx.hour >= 6) & (idx.hour < 18), 30e6, 0.0), index=idx)
    night = forecast(T0, "ultra-short", 5e6, 16, series="pv1")  # graded step 03:45
    acc.issued(night, sky)
    day = forecast(T0 + timedelta(hours=6), "ultra-short", 5e6, 16, series="pv1")
    acc.issued(day, sky)
    acc.issued(forecast(T0, "seasonal", 5e6, 16, series="pv1"))
    for k in range(96):
        acc.measured("pv1", T0 + k * STEP, 6e6)
    assert list(acc._graded) == [("pv1", "ultra-short")]
    assert len(acc._graded[("pv1", "ultra-short")]) == 1  # the daylight one only


def test_a_window_holds_one_day_of_points() -> None:
    acc = LiveAccuracy({"wf1": 30e6}, step_s=900)
    for k in range(200):
        issue = T0 + k * STEP
        acc.issued(forecast(issue, "ultra-short", 10e6, 16))
        acc.measured("wf1", issue + timedelta(hours=4) - STEP, 10e6 if k < 150 else 20e6)
    assert len(acc._graded[("wf1", "ultra-short")]) == 96
    with pytest.raises(ValueError, match="scorer 'nope' is not one of"):
        LiveAccuracy({}, step_s=900, scorer="nope")


def test_an_issue_off_the_grid_grades_the_step_ending_nearest_before_4_h() -> None:
    acc = LiveAccuracy({"wf1": 30e6}, step_s=900)
    issue = T0 + timedelta(minutes=7)
    fc = forecast(T0 + STEP, "ultra-short", 10e6, 16)  # steps from 00:15
    acc.issued(Forecast(**{**fc.__dict__, "issued_at": issue}))
    for k in range(20):
        acc.measured("wf1", T0 + k * STEP, 10e6)
    assert len(acc._graded[("wf1", "ultra-short")]) == 1
    assert acc.accuracy()[("wf1", "ultra-short")] == 1.0


def test_the_accuracy_gauge_appears_only_once_graded() -> None:
    from prometheus_client import generate_latest

    from vpp.metrics import Metrics

    m = Metrics(site="c1", assets=[("wf1", "wind")], version="t")
    assert b"vpp_forecast_accuracy_ratio{" not in generate_latest(m.registry)
    m.set_accuracy("wf1", "short", 0.91)
    m.set_accuracy("nobody", "short", 0.5)  # labels stay bounded
    text = generate_latest(m.registry).decode()
    assert 'vpp_forecast_accuracy_ratio{horizon="short",series="wf1",site="c1"} 0.91' in text
    assert "nobody" not in text
