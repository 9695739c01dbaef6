"""The grid's scorers and the forecaster's figures, against hand-worked numbers."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from forecasting.grading import add_skill, grade, north_china, pinball, southern_grid


def test_north_china_divides_by_capacity() -> None:
    measured = np.array([10.0, 20.0, 30.0, 40.0])
    forecast = np.array([12.0, 18.0, 30.0, 44.0])
    # errors 2, -2, 0, 4 over 100: RMSE = sqrt((4 + 4 + 0 + 16) / 4) / 100
    assert north_china(measured, forecast, 100.0) == pytest.approx(1 - np.sqrt(6.0) / 100)


def test_southern_grid_divides_by_the_larger_of_measured_and_a_fifth_of_capacity() -> None:
    measured = np.array([10.0, 50.0])
    forecast = np.array([20.0, 40.0])
    # denominators max(10, 20) = 20 and max(50, 20) = 50: errors 0.5 and 0.2
    expected = 1 - np.sqrt((0.5**2 + 0.2**2) / 2)
    assert southern_grid(measured, forecast, 100.0) == pytest.approx(expected)


def test_pinball_is_asymmetric() -> None:
    y = np.array([10.0])
    assert pinball(y, np.array([8.0]), 0.9) == pytest.approx(0.9 * 2)  # under: weighed q
    assert pinball(y, np.array([12.0]), 0.9) == pytest.approx(0.1 * 2)  # over: 1 - q


def test_grade_is_per_day_then_averaged_and_masks_the_night() -> None:
    days = np.array([date(2026, 4, 1)] * 3 + [date(2026, 4, 2)] * 3, dtype=object)
    y = np.array([0.0, 50.0, 50.0, 0.0, 40.0, 60.0])
    mid = np.array([30.0, 50.0, 40.0, 30.0, 40.0, 40.0])
    q = {0.1: mid - 15, 0.5: mid, 0.9: mid + 15}
    night = np.array([True, False, False, True, False, False])
    r = grade(y, q, capacity_w=100.0, days=days, mask=~night)
    day1 = 1 - np.sqrt((0 + 0.1**2) / 2)
    day2 = 1 - np.sqrt((0 + 0.2**2) / 2)
    assert r["points"] == 4 and r["days"] == 2
    assert r["accuracy"] == pytest.approx((day1 + day2) / 2)
    assert r["daily_accuracy"]["2026-04-01"] == pytest.approx(day1)
    # inside [mid - 15, mid + 15]: 50, 50 (|10| ≤ 15), 40, not 60 (|20|)
    assert r["coverage"]["observed"] == pytest.approx(3 / 4)
    assert r["bias_w"] == pytest.approx((0 - 10 + 0 - 20) / 4)
    with pytest.raises(ValueError, match="scorer 'nowhere' is not one of"):
        grade(y, q, capacity_w=100.0, days=days, scorer="nowhere")


def test_skill_against_each_baseline() -> None:
    results = {"m": {"points": 1, "rmse_w": 5.0}, "b1": {"points": 1, "rmse_w": 10.0},
               "b2": {"points": 1, "rmse_w": 4.0}}
    add_skill(results, ["b1", "b2"])
    assert results["m"]["skill"] == {"b1": pytest.approx(0.5), "b2": pytest.approx(-0.25)}
    assert "b1" not in results["b1"]["skill"]
