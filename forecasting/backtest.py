"""Rolling-origin backtest: refit every test day on what was known, forecast as the
product would be issued, grade every candidate and the choice.

* ``ultra-short``: fitted at the test day's local midnight, issued every 15 minutes of the
  day for the next 16 steps (4 h); every (issue, step) pair is scored, and the 16th step
  alone as ``accuracy_lead_4h`` (the rules that score the fourth hour).
* ``short``: fitted and issued the day before at ``issue_time`` (site-local), 72 h ahead;
  the test day's 96 steps are scored (the day-ahead assessment).

Nothing after an issue enters its forecast: fits use the steps before the fit time,
forecasts the measured steps before their issue, and weather columns are taken as given
(they should be forecasts, as they were available at the issue: ``docs/forecasting.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, time, timedelta
from typing import Any

import numpy as np
import pandas as pd

from forecasting.forecaster import HORIZON_STEPS, SeriesForecaster
from forecasting.grading import add_skill, grade, local_days
from forecasting.series import STEPS_PER_DAY, SeriesData

SELECTED = "selected"  # the key of the per-day choice in the results

Progress = Callable[[int, int, date], None]


@dataclass
class BacktestResult:
    series: str
    kind: str
    horizon: str
    scorer: str
    capacity_w: float
    metrics: dict[str, dict[str, Any]]  # model name (and "selected") → figures
    baselines: list[str]
    choices: dict[str, str]  # test day → model chosen that day
    # for the plot: the chosen forecast at the scored lead, per target step
    plot_index: pd.DatetimeIndex = field(repr=False, default_factory=lambda: pd.DatetimeIndex([]))
    plot_measured_w: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    plot_quantiles_w: dict[float, np.ndarray] = field(repr=False, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"series": self.series, "kind": self.kind, "horizon": self.horizon,
                "scorer": self.scorer, "capacity_w": self.capacity_w,
                "baselines": self.baselines, "choices": self.choices, "models": self.metrics}


def test_days(data: SeriesData, min_train_days: float) -> list[date]:
    """The site-local days that have ``min_train_days`` of data before them and a full
    day of stamps."""
    local = data.local_index()
    counts = pd.Series(1, index=local.date).groupby(level=0).size()
    first = local[0] + timedelta(days=min_train_days)
    return [d for d, n in counts.items() if n >= STEPS_PER_DAY - 4
            and pd.Timestamp(d).tz_localize(data.site.tz) >= first.normalize()]


def _position(data: SeriesData, when: pd.Timestamp) -> int:
    return int(data.index.searchsorted(when.tz_convert("UTC")))


def backtest(data: SeriesData, *, horizon: str, levels: tuple[float, ...] = (0.1, 0.5, 0.9),
             scorer: str = "north-china", issue_time: time = time(8, 0),
             min_train_days: float = 7.0, calibration_days: float = 7.0,
             max_days: int | None = None, progress: Progress | None = None) -> BacktestResult:
    if horizon not in HORIZON_STEPS:
        raise ValueError(f"horizon {horizon!r} is not one of {sorted(HORIZON_STEPS)}")
    days = test_days(data, min_train_days)
    if max_days is not None:
        days = days[-max_days:]
    if not days:
        raise ValueError(f"{data.name}: no test day: the data has "
                         f"{len(data) / STEPS_PER_DAY:.1f} days, the backtest needs "
                         f"{min_train_days:g} days of training before the first")
    steps = HORIZON_STEPS[horizon]
    local = data.local_index()
    local_date = np.asarray(local.date, dtype=object)
    collected: dict[str, list[tuple[np.ndarray, dict[float, np.ndarray]]]] = {}
    choices: dict[str, str] = {}
    baselines: set[str] = set()
    for k, day in enumerate(days):
        midnight = pd.Timestamp(day).tz_localize(data.site.tz)
        if horizon == "ultra-short":
            end = _position(data, midnight)
            origins = np.flatnonzero(local_date == day)
        else:
            issue = pd.Timestamp.combine(day - timedelta(days=1), issue_time).tz_localize(
                data.site.tz)
            end = _position(data, issue)
            origins = np.array([end])
        fc = SeriesForecaster(data.name, levels, calibration_days)
        fc.fit(data, end)
        idx = origins[:, None] + np.arange(steps)[None, :]
        keep = idx < len(data)
        if horizon == "short":
            keep &= np.isin(idx, np.flatnonzero(local_date == day))
        names = list(fc.models)
        chosen = fc.selected.get(horizon)
        choices[str(day)] = chosen or "no-history-climatology"
        for name in [*names, SELECTED]:
            if name == SELECTED and chosen is None:
                continue
            model = chosen if name == SELECTED else name
            _, qp = fc.quantile_paths(data, origins, steps, horizon, model=model)
            if name != SELECTED and fc.models[name].is_baseline:
                baselines.add(name)
            collected.setdefault(name, []).append(
                (np.where(keep, idx, -1), dict(qp)))
        if progress is not None:
            progress(k + 1, len(days), day)
    results: dict[str, dict[str, Any]] = {}
    daylight = data.daylight()
    target_days = local_days(data.index, data.site.tz)
    plot: tuple[np.ndarray, dict[float, np.ndarray]] | None = None
    for name, parts in collected.items():
        idx = np.concatenate([p[0] for p in parts])
        lead = np.broadcast_to(np.arange(steps), idx.shape)
        qs = {q: np.concatenate([p[1][q] for p in parts]) for q in levels}
        ok = idx >= 0
        flat = idx[ok]
        mask = daylight[flat]
        qflat = {q: v[ok] for q, v in qs.items()}
        r = grade(data.y_w[flat], qflat, capacity_w=data.capacity_w, days=target_days[flat],
                  scorer=scorer, mask=mask)
        if horizon == "ultra-short":
            last = (lead[ok] == steps - 1)
            r4 = grade(data.y_w[flat], qflat, capacity_w=data.capacity_w,
                       days=target_days[flat], scorer=scorer, mask=mask & last)
            r["accuracy_lead_4h"] = r4.get("accuracy")
        results[name] = r
        if name == SELECTED:
            at = lead[ok] == (steps - 1 if horizon == "ultra-short" else lead[ok])
            plot = (flat[at], {q: v[at] for q, v in qflat.items()})
    add_skill(results, sorted(baselines))
    res = BacktestResult(data.name, data.kind, horizon, scorer, data.capacity_w, results,
                         sorted(baselines), choices)
    if plot is not None:
        order = np.argsort(plot[0], kind="stable")
        res.plot_index = data.index[plot[0][order]]
        res.plot_measured_w = data.y_w[plot[0][order]]
        res.plot_quantiles_w = {q: v[order] for q, v in plot[1].items()}
    return res
