"""A series' forecaster: every candidate fitted, calibrated on its own out-of-sample
errors, the best chosen per horizon by the grid's measure, and quantiles issued.

Fit (``fit``), on the history before ``end``:

1. every candidate (``forecasting.models.candidates``: the statsmodels models and the
   baselines) is fitted on the history before the last ``calibration_days``;
2. it forecasts from an origin every hour of those days, and its errors, in the model's
   unit (clear-sky power for PV, capacity for wind, the demand scale for load), give the
   error quantiles per lead: one table per lead step for the first 4 h, then per hour;
3. per horizon, the candidate with the lowest nRMSE on those days is chosen, and the
   choice and every candidate's score are kept (``selection``) and logged: never silent;
4. the candidates are refitted on the whole history.

Issue (``quantile_paths``): the median path plus the error quantiles of its lead, times
the unit; PV and wind bounded to [0, capacity] (PV zero at night), load to ≥ 0. The
quantiles of one step never cross (sorted error quantiles, monotone bounds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from forecasting.models import PointModel, _take, candidates, target_index
from forecasting.series import PV_INDEX_MAX, STEPS_PER_DAY, SeriesData

log = logging.getLogger(__name__)

HORIZON_STEPS = {"ultra-short": 16, "short": 288}  # 4 h and 72 h at 15 min
CALIBRATION_ORIGIN_EVERY = 4  # one calibration origin per hour
MIN_HISTORY_DAYS = 2.0  # below this no model is fitted (the no-history fallback issues)


def lead_bucket(steps: int) -> np.ndarray:
    """Each lead's error table: one per step for the first 16 steps, then one per hour."""
    h = np.arange(steps)
    return np.where(h < 16, h, 16 + (h - 16) // 4)


@dataclass
class Calibration:
    """Error quantiles [model unit] per lead bucket, rows = buckets, columns = levels."""

    levels: tuple[float, ...]
    table: np.ndarray
    nrmse: dict[str, float]  # per horizon, on the calibration days


def _bounds(data: SeriesData, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The unit per (origin, lead) and the physical ceiling [W] (None: unbounded)."""
    scale = _take(data.scale_w(), idx)
    if data.kind == "pv":
        return scale, np.minimum(np.nan_to_num(scale, nan=0.0) * PV_INDEX_MAX,
                                 data.capacity_w)
    if data.kind == "wind":
        return scale, np.full(idx.shape, data.capacity_w)
    return scale, None


def apply_calibration(data: SeriesData, origins: np.ndarray, median: np.ndarray,
                      cal: Calibration) -> dict[float, np.ndarray]:
    """Quantile paths [W] from median paths [W] and the error table."""
    steps = median.shape[1]
    idx = target_index(origins, steps)
    scale, ceiling = _bounds(data, idx)
    table = cal.table[np.minimum(lead_bucket(steps), len(cal.table) - 1)]  # steps × levels
    out = {}
    for j, q in enumerate(cal.levels):
        v = median + table[None, :, j] * scale
        v = np.where(np.isfinite(scale), v, 0.0 if data.kind == "pv" else median)
        v = np.clip(v, 0.0, ceiling) if ceiling is not None else np.clip(v, 0.0, None)
        out[q] = np.asarray(np.nan_to_num(v, nan=0.0))
    return out


def calibrate(data: SeriesData, model: PointModel, start: int, end: int,
              levels: tuple[float, ...], steps: int) -> Calibration:
    """Error quantiles of ``model`` from origins in [start, end), targets before ``end``."""
    origins = np.arange(max(start, 1), end, CALIBRATION_ORIGIN_EVERY)
    idx = target_index(origins, steps)
    med = model.paths(data, origins, steps)
    scale = _take(data.scale_w(), idx)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = (_take(data.y_w, idx) - med) / scale
    err[idx >= end] = np.nan
    buckets = lead_bucket(steps)
    nb = int(buckets.max()) + 1
    table = np.zeros((nb, len(levels)))
    pooled = err[np.isfinite(err)]
    previous = np.quantile(pooled, levels) if pooled.size else np.zeros(len(levels))
    for b in range(nb):
        e = err[:, buckets == b]
        e = e[np.isfinite(e)]
        # a lead the calibration days cannot reach keeps the last lead's errors: never the
        # pooled ones, which are mostly short leads and would narrow the far end
        table[b] = np.quantile(e, levels) if e.size >= 20 else previous
        previous = table[b]
    table = np.sort(table, axis=1)
    nrmse = {}
    for name, h in HORIZON_STEPS.items():
        y = _take(data.y_w, idx[:, :h])
        e = y - med[:, :h]
        ok = np.isfinite(e) & (idx[:, :h] < end) & np.isfinite(scale[:, :h])
        nrmse[name] = float(np.sqrt(np.mean((e[ok] / data.capacity_w) ** 2))) if ok.any() \
            else float("inf")
    return Calibration(levels, table, nrmse)


@dataclass
class SeriesForecaster:
    """Fits, chooses and issues for one series (see the module docstring)."""

    name: str
    levels: tuple[float, ...] = (0.1, 0.5, 0.9)
    calibration_days: float = 7.0
    models: dict[str, PointModel] = field(default_factory=dict)
    calibrations: dict[str, Calibration] = field(default_factory=dict)
    selected: dict[str, str] = field(default_factory=dict)  # horizon → model name
    selection: dict[str, dict[str, float]] = field(default_factory=dict)

    def fit(self, data: SeriesData, end: int | None = None) -> dict[str, str]:
        """Fit, calibrate and choose on the steps before ``end`` (default: all known)."""
        if end is None:
            known = np.flatnonzero(np.isfinite(data.y_w))
            end = int(known[-1]) + 1 if known.size else 0
        finite = int(np.isfinite(data.y_w[:end]).sum())
        self.models, self.calibrations, self.selected, self.selection = {}, {}, {}, {}
        if finite < MIN_HISTORY_DAYS * STEPS_PER_DAY:
            log.info("%s: %d points of history, fewer than %.0f days: no model fitted",
                     self.name, finite, MIN_HISTORY_DAYS)
            return {}
        cal_steps = round(min(self.calibration_days * STEPS_PER_DAY, end / 3))
        cut = end - cal_steps
        steps = HORIZON_STEPS["short"]
        for m in candidates(data):
            try:
                m.fit(data, cut)
                cal = calibrate(data, m, cut, end, self.levels, steps)
                m.fit(data, end)
            except (ValueError, np.linalg.LinAlgError) as exc:
                log.warning("%s: %s left out: %s", self.name, m.name, exc)
                continue
            self.models[m.name], self.calibrations[m.name] = m, cal
        for horizon in HORIZON_STEPS:
            scores = {n: c.nrmse[horizon] for n, c in self.calibrations.items()}
            if not scores:
                continue
            self.selection[horizon] = scores
            self.selected[horizon] = min(scores, key=lambda n: scores[n])
            log.info("%s %s: chose %s (nRMSE on %.1f calibration days: %s)", self.name,
                     horizon, self.selected[horizon], cal_steps / STEPS_PER_DAY,
                     ", ".join(f"{n} {s:.4f}" for n, s in sorted(scores.items(),
                                                                  key=lambda kv: kv[1])))
        return self.selected

    def quantile_paths(self, data: SeriesData, origins: np.ndarray, steps: int,
                       horizon: str, model: str | None = None
                       ) -> tuple[str, dict[float, np.ndarray]]:
        """The chosen (or the named) model's quantile paths [W] from ``origins``."""
        origins = np.asarray(origins, dtype=int)
        name = model or self.selected.get(horizon)
        if name is None:
            return "no-history-climatology", no_history_paths(data, origins, steps,
                                                              self.levels)
        med = self.models[name].paths(data, origins, steps)
        return name, apply_calibration(data, origins, med, self.calibrations[name])


def no_history_paths(data: SeriesData, origins: np.ndarray, steps: int,
                     levels: tuple[float, ...]) -> dict[float, np.ndarray]:
    """Before any history: PV around 60 % of clear sky, wind around 30 % of capacity, load
    the last value (or 0), with wide bands; named so that nobody mistakes it for a model."""
    idx = target_index(origins, steps)
    out = {}
    for q in levels:
        if data.kind == "pv":
            cs = np.nan_to_num(_take(data.scale_w(), idx), nan=0.0)
            out[q] = np.clip(cs * (0.1 + 0.9 * q), 0.0, data.capacity_w)
        elif data.kind == "wind":
            out[q] = np.full(idx.shape, data.capacity_w * min(1.0, 0.6 * q / 0.9))
        else:
            y = data.y_w[np.isfinite(data.y_w)]
            last = float(y[-1]) if y.size else 0.0
            out[q] = np.full(idx.shape, max(0.0, last * (0.8 + 0.4 * q)))
    return out
