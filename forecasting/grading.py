"""Grading forecasts as the grid grades them, and as a forecaster should.

The daily accuracy is pluggable (``SCORERS``), since regional rules differ:

* ``north-china``: C = 1 − sqrt(mean(((P_meas − P_fcst) / Cap)²)), Cap the installed
  capacity (the North China "two rules" and NB/T 32011);
* ``southern-grid``: each error divided by max(P_meas, 0.2 × Cap) instead.

A day's accuracy uses that day's scored points (site-local date); the overall accuracy is
the mean of the daily ones, as the monthly assessment takes it. For PV only daylight
points count (clear-sky power ≥ 5 % of capacity): the rules exclude the night, and a
night of zeros would flatter every model. The other figures use the same points:

* nMAE, nRMSE: mean absolute and root-mean-square error of the median over capacity;
* bias: mean(forecast − measured) [W] and over capacity;
* pinball loss per quantile level, over capacity (lower is better);
* coverage: the share of measurements between the lowest and highest issued quantile
  (P10-P90 by default, which should hold 80 %);
* skill against each baseline: 1 − RMSE_model / RMSE_baseline (above 0: better).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Scorer = Callable[[np.ndarray, np.ndarray, float], float]


def north_china(measured_w: np.ndarray, forecast_w: np.ndarray, capacity_w: float) -> float:
    return float(1.0 - np.sqrt(np.mean(((measured_w - forecast_w) / capacity_w) ** 2)))


def southern_grid(measured_w: np.ndarray, forecast_w: np.ndarray, capacity_w: float) -> float:
    denom = np.maximum(measured_w, 0.2 * capacity_w)
    return float(1.0 - np.sqrt(np.mean(((measured_w - forecast_w) / denom) ** 2)))


SCORERS: dict[str, Scorer] = {"north-china": north_china, "southern-grid": southern_grid}
PASS_MARK = {"ultra-short": 0.90, "short": 0.85}  # North China's marks (docs/forecasting.md)


def pinball(measured: np.ndarray, quantile: np.ndarray, level: float) -> float:
    d = measured - quantile
    return float(np.mean(np.maximum(level * d, (level - 1.0) * d)))


def grade(measured_w: np.ndarray, quantiles_w: dict[float, np.ndarray], *,
          capacity_w: float, days: np.ndarray, scorer: str = "north-china",
          mask: np.ndarray | None = None) -> dict[str, Any]:
    """The figures of one model on the scored points (flat arrays, one per point)."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer {scorer!r} is not one of {sorted(SCORERS)}")
    ok = np.isfinite(measured_w)
    for v in quantiles_w.values():
        ok &= np.isfinite(v)
    if mask is not None:
        ok &= mask
    y = measured_w[ok]
    qs = {q: v[ok] for q, v in quantiles_w.items()}
    d = days[ok]
    n = int(ok.sum())
    if n == 0:
        return {"points": 0}
    med = qs[0.5] if 0.5 in qs else qs[sorted(qs)[len(qs) // 2]]
    err = med - y
    daily: dict[str, dict[str, float]] = {}
    for day in sorted(set(d.tolist())):
        sel = d == day
        daily[str(day)] = {name: fn(y[sel], med[sel], capacity_w) for name, fn in SCORERS.items()}
    lo, hi = min(qs), max(qs)
    return {
        "points": n,
        "days": len(daily),
        "accuracy": float(np.mean([v[scorer] for v in daily.values()])),
        "accuracy_by_scorer": {name: float(np.mean([v[name] for v in daily.values()]))
                               for name in SCORERS},
        "nmae": float(np.mean(np.abs(err)) / capacity_w),
        "nrmse": float(np.sqrt(np.mean(err**2)) / capacity_w),
        "rmse_w": float(np.sqrt(np.mean(err**2))),
        "bias_w": float(np.mean(err)),
        "nbias": float(np.mean(err) / capacity_w),
        "pinball": {f"p{round(q * 100):02d}": pinball(y, v, q) / capacity_w
                    for q, v in sorted(qs.items())},
        "pinball_mean": float(np.mean([pinball(y, v, q) for q, v in qs.items()]) / capacity_w),
        "coverage": {"range": f"p{round(lo * 100):02d}-p{round(hi * 100):02d}",
                     "nominal": hi - lo,
                     "observed": float(np.mean((y >= qs[lo]) & (y <= qs[hi])))},
        "daily_accuracy": {k: v[scorer] for k, v in daily.items()},
    }


def add_skill(results: dict[str, dict[str, Any]], baselines: list[str]) -> None:
    """Add each model's skill against each baseline (1 − RMSE / RMSE_baseline), in place."""
    for name, r in results.items():
        if not r.get("points"):
            continue
        r["skill"] = {b: 1.0 - r["rmse_w"] / results[b]["rmse_w"]
                      for b in baselines if b != name and results.get(b, {}).get("points")
                      and results[b]["rmse_w"] > 0}


def local_days(index: Any, tz: str) -> np.ndarray:
    """The site-local date of each stamp (an object array of ``date``)."""
    out: np.ndarray = np.asarray(index.tz_convert(tz).date, dtype=object)
    return out
