"""Forecasters: ordered quantiles, physical bounds, zero PV at night, no look-ahead, choices
logged; the multi-origin paths agree with statsmodels' own forecasts."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from statsmodels.tsa.statespace.sarimax import SARIMAX

from forecasting import HORIZON_STEPS, SeriesForecaster, load_series
from forecasting.models import ArxModel, candidates
from forecasting.series import STEPS_PER_DAY
from tests.forecasting.conftest import CAPACITY_W, KIND, SITE

END = 12 * STEPS_PER_DAY + 40  # day 12, 10:00 local


def _data(files: dict[str, Path], name: str):  # type: ignore[no-untyped-def]
    data, _ = load_series(files[name], kind=KIND[name], capacity_w=CAPACITY_W[name], site=SITE)  # type: ignore[arg-type]
    return data


@pytest.mark.parametrize("name", ["pv1", "wf1", "load"])
def test_quantiles_are_ordered_bounded_and_the_choice_is_logged(
        sim_files: dict[str, Path], name: str, caplog: pytest.LogCaptureFixture) -> None:
    data = _data(sim_files, name)
    f = SeriesForecaster(name)
    with caplog.at_level(logging.INFO, logger="forecasting.forecaster"):
        chosen = f.fit(data, END)
    assert set(chosen) == set(HORIZON_STEPS)
    assert set(f.selection["short"]) == {m.name for m in candidates(data)}
    assert any(f"chose {chosen['short']}" in r.message for r in caplog.records)
    origins = np.arange(END, END + 8)
    for horizon, steps in HORIZON_STEPS.items():
        model, q = f.quantile_paths(data, origins, steps, horizon)
        assert model == chosen[horizon]
        lo, mid, hi = q[0.1], q[0.5], q[0.9]
        assert np.all(lo <= mid + 1e-6) and np.all(mid <= hi + 1e-6)
        assert np.all(lo >= 0)
        if name != "load":
            assert np.all(hi <= CAPACITY_W[name] + 1e-6)
    if name == "pv1":
        idx = origins[:, None] + np.arange(288)[None, :]
        night = ~data.daylight()[idx]
        _, q = f.quantile_paths(data, origins, 288, "short")
        assert np.all(q[0.9][night] == 0) and q[0.5][~night].max() > 10e6


def test_a_forecast_uses_nothing_after_its_issue(sim_files: dict[str, Path]) -> None:
    data = _data(sim_files, "pv1")
    f = SeriesForecaster("pv1")
    f.fit(data, END)
    origins = np.array([END, END + 5])
    before = {m: f.quantile_paths(data, origins, 16, "ultra-short", model=m)[1][0.5]
              for m in f.models}
    y = data.y_w.copy()
    y[END + 5 :] = 0.0  # the future changes: the forecasts from END + 5 must not
    data = dataclasses.replace(data, y_w=y)
    for m, v in before.items():
        after = f.quantile_paths(data, origins, 16, "ultra-short", model=m)[1][0.5]
        np.testing.assert_allclose(after, v, err_msg=m)


def test_arx_paths_agree_with_statsmodels_forecasts(sim_files: dict[str, Path]) -> None:
    """The vectorised multi-origin path is the Kalman forecast statsmodels gives."""
    data = _data(sim_files, "wf1")
    m = ArxModel("ar2", ("const",), 2)
    m.fit(data, END)
    assert m.beta is not None
    origins = np.array([END, END + 17, END + 50])
    paths = m.paths(data, origins, 12)
    r = data.target() - m.beta[0]
    start = int(origins.min()) - 4 * STEPS_PER_DAY
    for k, o in enumerate(origins):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = SARIMAX(r[start:o], order=(2, 0, 0), trend="n").filter(m.ar_params)
            peer = (res.get_forecast(12).predicted_mean + m.beta[0]) * data.capacity_w
        np.testing.assert_allclose(paths[k], np.clip(peer, 0, data.capacity_w), rtol=1e-6,
                                   atol=1.0)


def test_without_history_the_fallback_says_so(sim_files: dict[str, Path]) -> None:
    data = _data(sim_files, "pv1")
    f = SeriesForecaster("pv1")
    assert f.fit(data, STEPS_PER_DAY) == {}  # one day: too little to fit
    model, q = f.quantile_paths(data, np.array([STEPS_PER_DAY]), 16, "ultra-short")
    assert model == "no-history-climatology"
    assert np.all(q[0.1] <= q[0.5]) and np.all(q[0.9] <= CAPACITY_W["pv1"])
