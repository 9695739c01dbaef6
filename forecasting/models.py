"""Point models: a median path [W] from each origin, for every series kind.

A point model is fitted on the steps before ``end`` and then gives, for many origins at
once, the path of the next ``steps`` intervals (``paths``): one filter pass over the data
and a few small matrix powers, so a rolling backtest costs about as much as one forecast.
Uncertainty is added afterwards, from the model's own out-of-sample errors
(``forecasting.forecaster``).

``ArxModel`` is a regression with autoregressive errors, estimated in two stages: ordinary
least squares (statsmodels OLS) for the regression on the features, then an AR(p) on its
residual (statsmodels SARIMAX, maximum likelihood), whose Kalman filter carries the error
through gaps and PV nights. It works on the normalised target (``SeriesData.target``):

* PV: clear-sky index, regressed on the weather forecast's clear-sky index where given;
* wind: capacity factor, regressed on the forecast wind speed through the power curve;
* load: demand over its scale, regressed either on daily Fourier terms and a
  non-working-day indicator (weekends and China's public holidays) with its own daily
  shape, or on the median daily profile of its day type (working / non-working, from the
  fit's days); with the forecast air temperature (linear and squared distance from
  18 °C) where given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning, SingularMatrixWarning
from statsmodels.tsa.statespace.sarimax import SARIMAX

from forecasting.series import (
    GHI_COL,
    PV_INDEX_MAX,
    STEPS_PER_DAY,
    TEMP_COL,
    WIND_COL,
    SeriesData,
)

FIT_DAYS = 28  # the most recent days a fit uses
MIN_FIT_POINTS = STEPS_PER_DAY  # finite target points a fit needs


@dataclass(frozen=True)
class Forecast:
    """One issued forecast of one series: quantiles [W] per step start time (UTC)."""

    series: str
    kind: str
    issued_at: datetime
    model: str
    index: pd.DatetimeIndex
    quantiles: dict[float, np.ndarray]
    horizon: str = "ultra-short"

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


class PointModel(Protocol):
    name: str
    is_baseline: bool

    def fit(self, data: SeriesData, end: int) -> None:
        """Estimate from the steps before ``end``."""

    def paths(self, data: SeriesData, origins: np.ndarray, steps: int) -> np.ndarray:
        """Median paths [W], shape (len(origins), steps); NaN where it cannot say."""


def target_index(origins: np.ndarray, steps: int) -> np.ndarray:
    """The step index of every (origin, lead) pair, shape (len(origins), steps)."""
    return np.asarray(origins)[:, None] + np.arange(steps)[None, :]


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[idx]`` with NaN where ``idx`` falls outside ``a``."""
    ok = (idx >= 0) & (idx < len(a))
    out = np.full(idx.shape, np.nan)
    out[ok] = a[idx[ok]]
    return out


def _to_watts(data: SeriesData, z: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Normalised paths back to W: PV zero at night, everything bounded physically."""
    scale = _take(data.scale_w(), idx)
    if data.kind == "pv":
        w = np.clip(z, 0.0, PV_INDEX_MAX) * scale
        return np.asarray(np.clip(np.nan_to_num(w, nan=0.0), 0.0, data.capacity_w))
    if data.kind == "wind":
        return np.asarray(np.clip(z, 0.0, 1.0) * scale)
    return np.asarray(np.clip(z, 0.0, None) * scale)


# -- features ---------------------------------------------------------------------------


def _fourier_day(data: SeriesData, harmonics: int) -> list[np.ndarray]:
    local = data.local_index()
    frac = (local.hour * 3600 + local.minute * 60 + local.second
            + data.step_s / 2) / 86400.0
    cols = []
    for k in range(1, harmonics + 1):
        cols += [np.sin(2 * np.pi * k * frac), np.cos(2 * np.pi * k * frac)]
    return [np.asarray(c, dtype=float) for c in cols]


def _slots(data: SeriesData) -> np.ndarray:
    """Each step's profile slot: its local time-of-day step, plus 96 on non-working days."""
    local = data.local_index()
    tod = (local.hour * 3600 + local.minute * 60) // data.step_s
    out: np.ndarray = np.asarray(tod, dtype=int) + STEPS_PER_DAY * data.nonworking().astype(int)
    return out


def fit_profile(data: SeriesData, end: int) -> np.ndarray:
    """The median target per slot (working and non-working days) before ``end``."""
    start = max(0, end - FIT_DAYS * STEPS_PER_DAY)
    z = pd.Series(data.target()[start:end]).groupby(_slots(data)[start:end]).median()
    z = z.reindex(range(2 * STEPS_PER_DAY))
    # a day type not yet seen borrows the other's shape
    both = z.to_numpy(dtype=float).reshape(2, STEPS_PER_DAY).copy()
    for a, b in ((0, 1), (1, 0)):
        both[a] = np.where(np.isfinite(both[a]), both[a], both[b])
    out = pd.Series(both.ravel()).interpolate(limit_direction="both").to_numpy(dtype=float)
    return np.asarray(out)


def design(data: SeriesData, features: tuple[str, ...],
           profile: np.ndarray | None = None) -> np.ndarray:
    """The regression matrix (steps × columns) for ``features``; NaN where an input
    (a weather forecast) is missing."""
    n = len(data)
    cols: list[np.ndarray] = []
    for f in features:
        if f == "const":
            cols.append(np.ones(n))
        elif f == "nwp_csi":
            cs = data.clear_sky_ghi_w_m2()
            with np.errstate(invalid="ignore", divide="ignore"):
                k = np.where(cs > 20.0, data.exog_col(GHI_COL) / cs, np.nan)
            cols.append(np.clip(k, 0.0, PV_INDEX_MAX))
        elif f == "curve":
            assert data.curve is not None, "a wind model needs the plant's power curve"
            cols.append(data.curve.power_w(data.exog_col(WIND_COL)) / data.curve.rated_power_w)
        elif f == "profile":
            assert profile is not None, "the profile feature needs a fitted profile"
            cols.append(profile[_slots(data)])
        elif f == "day_shape":
            cols += _fourier_day(data, 4)
        elif f == "nonworking_shape":
            off = data.nonworking()
            cols.append(off)
            cols += [off * c for c in _fourier_day(data, 2)]
        elif f == "temperature":
            t = data.exog_col(TEMP_COL)
            cols += [t - 18.0, (t - 18.0) ** 2 / 10.0]
        else:
            raise ValueError(f"unknown feature {f!r}")
    return np.column_stack(cols)


# -- models -----------------------------------------------------------------------------


@dataclass
class ArxModel:
    """Regression on ``features`` with AR(``order``) errors, on the normalised target."""

    name: str
    features: tuple[str, ...]
    order: int = 1
    is_baseline: bool = False
    beta: np.ndarray | None = field(default=None, repr=False)
    ar_params: np.ndarray | None = field(default=None, repr=False)
    fill: np.ndarray | None = field(default=None, repr=False)  # training means of inputs
    profile: np.ndarray | None = field(default=None, repr=False)

    def _x(self, data: SeriesData) -> np.ndarray:
        x = design(data, self.features, self.profile)
        if self.fill is not None:
            x = np.where(np.isfinite(x), x, self.fill[None, :])
        return x

    def fit(self, data: SeriesData, end: int) -> None:
        start = max(0, end - FIT_DAYS * STEPS_PER_DAY)
        z = data.target()[start:end]
        if "profile" in self.features:
            self.profile = fit_profile(data, end)
        x = design(data, self.features, self.profile)[start:end]
        ok = np.isfinite(z) & np.isfinite(x).all(axis=1)
        if ok.sum() < MIN_FIT_POINTS:
            raise ValueError(f"{self.name}: {int(ok.sum())} usable points before "
                             f"{data.index[min(end, len(data) - 1)]}, needs {MIN_FIT_POINTS}")
        self.fill = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        with warnings.catch_warnings():
            # a feature that the history does not vary (no holiday yet, a calm fortnight):
            # OLS's pseudo-inverse gives the minimum-norm fit, which forecasts the same
            warnings.simplefilter("ignore", SingularMatrixWarning)
            self.beta = np.asarray(sm.OLS(z[ok], x[ok]).fit().params)
        r = z - self._x(data)[start:end] @ self.beta
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            res = SARIMAX(r, order=(self.order, 0, 0), trend="n").fit(disp=False, maxiter=50)
        self.ar_params = np.asarray(res.params)

    def paths(self, data: SeriesData, origins: np.ndarray, steps: int) -> np.ndarray:
        if self.beta is None or self.ar_params is None:
            raise RuntimeError(f"{self.name} is not fitted")
        origins = np.asarray(origins, dtype=int)
        mu = self._x(data) @ self.beta
        r = data.target() - mu
        # filter from a few days before the first origin (the AR error forgets fast)
        start = max(0, int(origins.min()) - 4 * STEPS_PER_DAY)
        stop = int(origins.max())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            res = SARIMAX(r[start:stop], order=(self.order, 0, 0), trend="n").filter(
                self.ar_params)
        fr = res.filter_results
        trans = np.asarray(fr.transition[:, :, 0])
        zrow = np.asarray(fr.design[0, :, 0])
        # the state given everything before the origin; an origin at the start: unconditional
        states = np.zeros((len(origins), trans.shape[0]))
        has = origins - 1 - start >= 0
        states[has] = np.asarray(fr.filtered_state)[:, origins[has] - 1 - start].T
        idx = target_index(origins, steps)
        z = _take(mu, idx)
        power = np.eye(trans.shape[0])
        for h in range(steps):
            power = trans @ power
            z[:, h] += states @ (zrow @ power)
        return _to_watts(data, z, idx)


def _last_finite(a: np.ndarray) -> np.ndarray:
    """For each step, the last finite value up to and including it (NaN before any)."""
    idx = np.where(np.isfinite(a), np.arange(len(a)), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, a[np.maximum(idx, 0)], np.nan)
    return np.asarray(out, dtype=float)


@dataclass
class Persistence:
    """The last measured value, held."""

    name: str = "persistence"
    is_baseline: bool = True

    def fit(self, data: SeriesData, end: int) -> None:
        return None

    def paths(self, data: SeriesData, origins: np.ndarray, steps: int) -> np.ndarray:
        last = _take(_last_finite(data.y_w), np.asarray(origins) - 1)
        out = np.repeat(last[:, None], steps, axis=1)
        if data.kind == "pv":
            idx = target_index(np.asarray(origins), steps)
            out = np.where(_take(data.daylight().astype(float), idx) > 0, out, 0.0)
        return np.asarray(np.clip(out, 0.0, data.capacity_w if data.kind != "load" else None))


@dataclass
class SmartPersistence:
    """PV: the last daylight clear-sky index, held, times the clear-sky power."""

    name: str = "smart-persistence"
    is_baseline: bool = True

    def fit(self, data: SeriesData, end: int) -> None:
        return None

    def paths(self, data: SeriesData, origins: np.ndarray, steps: int) -> np.ndarray:
        k = _take(_last_finite(data.target()), np.asarray(origins) - 1)
        idx = target_index(np.asarray(origins), steps)
        return _to_watts(data, np.repeat(k[:, None], steps, axis=1), idx)


@dataclass
class SeasonalNaive:
    """The value at the same time one season earlier (the latest such value known)."""

    period_steps: int
    name: str = "seasonal-naive-day"
    is_baseline: bool = True

    def fit(self, data: SeriesData, end: int) -> None:
        return None

    def paths(self, data: SeriesData, origins: np.ndarray, steps: int) -> np.ndarray:
        lead = np.arange(1, steps + 1)
        lag = self.period_steps * np.ceil(lead / self.period_steps).astype(int)
        idx = target_index(np.asarray(origins), steps)
        return _take(data.y_w, idx - lag[None, :])


def candidates(data: SeriesData) -> list[PointModel]:
    """The models a series is chosen from, baselines included, for what its data has."""
    out: list[PointModel] = []
    if data.kind == "pv":
        out.append(ArxModel("sarimax-clear-sky-index", ("const",), 1))
        if data.has(GHI_COL):
            out.append(ArxModel("sarimax-clear-sky-index-nwp", ("const", "nwp_csi"), 1))
        out += [Persistence(), SmartPersistence(), SeasonalNaive(STEPS_PER_DAY)]
    elif data.kind == "wind":
        out.append(ArxModel("sarimax-capacity-factor", ("const",), 2))
        if data.has(WIND_COL) and data.curve is not None:
            out.append(ArxModel("sarimax-power-curve-nwp", ("const", "curve"), 2))
        out += [Persistence(), SeasonalNaive(STEPS_PER_DAY)]
    else:
        feats: tuple[str, ...] = ("const", "day_shape", "nonworking_shape")
        out.append(ArxModel("sarimax-fourier-daytype", feats, 1))
        out.append(ArxModel("sarimax-daytype-profile", ("const", "profile"), 1))
        if data.has(TEMP_COL):
            out.append(ArxModel("sarimax-daytype-profile-temp",
                                ("const", "profile", "temperature"), 1))
        out += [Persistence(), SeasonalNaive(STEPS_PER_DAY),
                SeasonalNaive(7 * STEPS_PER_DAY, name="seasonal-naive-week")]
    return out
