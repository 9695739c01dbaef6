"""Quantile forecasts of PV, wind and load with statsmodels.

Each forecaster works on a series of interval means [W] on a regular grid (default 15 min,
UTC index, NaN where unknown). ``fit`` estimates parameters (slow, done rarely);
``forecast`` re-runs the Kalman filter with those parameters on the recent window and
projects forward (fast, done at every issue). Quantiles come from the model's forecast
variance under a normal error, then are bounded physically (PV and wind to
[0, capacity], load to ≥ 0), so they never cross.

Load is forecast as demand, a positive number; the controller turns it into the
generator convention at the edge.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from scipy.stats import norm
from statsmodels.tools.sm_exceptions import ConvergenceWarning
from statsmodels.tsa.statespace.sarimax import SARIMAX

MIN_FIT_POINTS = 96  # one day of 15-minute points
WINDOW_DAYS = 3  # the recent window the filter runs over at each issue


@dataclass(frozen=True)
class Forecast:
    """One issued forecast of one series: quantiles [W] per step start time (UTC)."""

    series: str
    kind: str
    issued_at: datetime
    model: str
    index: pd.DatetimeIndex
    quantiles: dict[float, np.ndarray]

    def q(self, level: float) -> np.ndarray:
        """The quantile ``level`` [W]; it must be one of the issued levels."""
        try:
            return self.quantiles[level]
        except KeyError:
            raise KeyError(f"forecast {self.series} has quantiles {sorted(self.quantiles)}, "
                           f"not {level}") from None

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({f"p{round(q * 100):02d}_w": v for q, v in self.quantiles.items()},
                            index=self.index)


def _ar_params(y: np.ndarray, order: tuple[int, int, int], trend: str) -> np.ndarray | None:
    """Fit a SARIMAX on ``y`` (NaN allowed); None when there is too little data."""
    if np.count_nonzero(np.isfinite(y)) < MIN_FIT_POINTS:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        res = SARIMAX(y, order=order, trend=trend).fit(disp=False)
    return np.asarray(res.params)


def _ar_forecast(y: np.ndarray, params: np.ndarray, order: tuple[int, int, int], trend: str,
                 steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of a ``steps``-ahead forecast with fixed parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        res = SARIMAX(y, order=order, trend=trend).filter(params)
        pred = res.get_forecast(steps)
    return np.asarray(pred.predicted_mean), np.asarray(pred.se_mean)


def _future_index(history: pd.Series, issued_at: datetime, steps: int,
                  step_s: int) -> pd.DatetimeIndex:
    start = pd.Timestamp(issued_at).floor(f"{step_s}s")
    return pd.date_range(start, periods=steps, freq=f"{step_s}s")


def _window(history: pd.Series, issued_at: datetime, step_s: int) -> pd.Series:
    """The recent window up to the issue time, on a complete regular grid."""
    end = pd.Timestamp(issued_at).floor(f"{step_s}s")
    start = end - pd.Timedelta(days=WINDOW_DAYS)
    grid = pd.date_range(start, end, freq=f"{step_s}s", inclusive="left")
    return history.reindex(grid)


@dataclass
class PvForecaster:
    """PV on the clear-sky index: AR(1) with a mean on P / P_clear-sky, zero at night."""

    series: str
    rated_power_w: float
    clear_sky_w: Callable[[pd.DatetimeIndex], np.ndarray]
    step_s: int = 900
    order: tuple[int, int, int] = (1, 0, 0)
    params: np.ndarray | None = field(default=None, repr=False)

    kind = "pv"

    def _index_k(self, s: pd.Series) -> np.ndarray:
        cs = self.clear_sky_w(pd.DatetimeIndex(s.index))
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.asarray(s.to_numpy(dtype=float)) / cs
        k[cs < 0.05 * self.rated_power_w] = np.nan
        return np.asarray(np.clip(k, 0.0, 1.3), dtype=float)

    def fit(self, history: pd.Series) -> None:
        self.params = _ar_params(self._index_k(history), self.order, "c")

    def forecast(self, history: pd.Series, issued_at: datetime, steps: int,
                 quantiles: tuple[float, ...]) -> Forecast:
        idx = _future_index(history, issued_at, steps, self.step_s)
        cs = self.clear_sky_w(idx)
        if self.params is None:
            model, mean, se = "clear-sky-climatology", np.full(steps, 0.75), np.full(steps, 0.25)
        else:
            model = "sarimax-clear-sky-index"
            k = self._index_k(_window(history, issued_at, self.step_s))
            mean, se = _ar_forecast(k, self.params, self.order, "c", steps)
        qs = {q: np.clip(np.clip(mean + norm.ppf(q) * se, 0.0, 1.2) * cs, 0.0, self.rated_power_w)
              for q in quantiles}
        return Forecast(self.series, self.kind, issued_at, model, idx, qs)


@dataclass
class WindForecaster:
    """Wind on the capacity factor: AR(2) with a mean, bounded to [0, rated]."""

    series: str
    rated_power_w: float
    step_s: int = 900
    order: tuple[int, int, int] = (2, 0, 0)
    params: np.ndarray | None = field(default=None, repr=False)

    kind = "wind"

    def fit(self, history: pd.Series) -> None:
        self.params = _ar_params(history.to_numpy(dtype=float) / self.rated_power_w,
                                 self.order, "c")

    def forecast(self, history: pd.Series, issued_at: datetime, steps: int,
                 quantiles: tuple[float, ...]) -> Forecast:
        idx = _future_index(history, issued_at, steps, self.step_s)
        y = _window(history, issued_at, self.step_s).to_numpy(dtype=float) / self.rated_power_w
        if self.params is None:
            last = y[np.isfinite(y)][-1:] if np.isfinite(y).any() else np.array([0.3])
            model, mean, se = "persistence", np.full(steps, float(last[0])), np.full(steps, 0.2)
        else:
            model = "sarimax-capacity-factor"
            mean, se = _ar_forecast(y, self.params, self.order, "c", steps)
        qs = {q: np.clip(mean + norm.ppf(q) * se, 0.0, 1.0) * self.rated_power_w
              for q in quantiles}
        return Forecast(self.series, self.kind, issued_at, model, idx, qs)


@dataclass
class LoadForecaster:
    """Load demand: a time-of-day profile (median of past days) plus an AR(1) residual."""

    series: str
    step_s: int = 900
    order: tuple[int, int, int] = (1, 0, 0)
    params: np.ndarray | None = field(default=None, repr=False)
    profile: pd.Series | None = field(default=None, repr=False)

    kind = "load"

    def _slots(self, index: pd.DatetimeIndex) -> np.ndarray:
        return np.asarray((index.hour * 3600 + index.minute * 60 + index.second) // self.step_s)

    def _residual(self, s: pd.Series) -> np.ndarray:
        assert self.profile is not None
        prof = self.profile.reindex(self._slots(pd.DatetimeIndex(s.index))).to_numpy(dtype=float)
        return np.asarray(s.to_numpy(dtype=float) - prof)

    def fit(self, history: pd.Series) -> None:
        h = history.dropna()
        if len(h) < MIN_FIT_POINTS:
            self.profile, self.params = None, None
            return
        self.profile = h.groupby(self._slots(pd.DatetimeIndex(h.index))).median()
        self.profile = self.profile.reindex(range(86400 // self.step_s)).interpolate(
            limit_direction="both")
        self.params = _ar_params(self._residual(history), self.order, "n")

    def forecast(self, history: pd.Series, issued_at: datetime, steps: int,
                 quantiles: tuple[float, ...]) -> Forecast:
        idx = _future_index(history, issued_at, steps, self.step_s)
        window = _window(history, issued_at, self.step_s)
        if self.profile is None or self.params is None:
            y = window.to_numpy(dtype=float)
            last = float(y[np.isfinite(y)][-1]) if np.isfinite(y).any() else 0.0
            model, base = "persistence", np.full(steps, last)
            mean, se = np.zeros(steps), np.full(steps, 0.1 * abs(last))
        else:
            model = "profile+sarimax-residual"
            base = self.profile.reindex(self._slots(idx)).to_numpy(dtype=float)
            mean, se = _ar_forecast(self._residual(window), self.params, self.order, "n", steps)
        qs = {q: np.clip(base + mean + norm.ppf(q) * se, 0.0, None) for q in quantiles}
        return Forecast(self.series, self.kind, issued_at, model, idx, qs)


Forecaster = PvForecaster | WindForecaster | LoadForecaster
