"""Live forecast accuracy: the forecasts the controller issued, graded as the grid grades
them against the interval means it measured, per series and product.

Each product is graded at the lead the grid grades it at: the ultra-short forecast at 4 h
(the step ending 4 h after the issue; issued every 15 minutes, each step is graded once),
the short-term one over the next local day (the steps starting 16 to 40 h after a 08:00
issue). The accuracy is the daily rule
(``forecasting.grading``, North China's by default) over the last day of graded points;
for PV only daylight points count (clear-sky power ≥ 5 % of capacity), as the rules say.

Pure: the controller feeds it; ``forecasting.grading.PASS_MARK`` is what the alert rules
compare with.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from forecasting.grading import SCORERS
from forecasting.models import Forecast

ULTRA_SHORT, SHORT = "ultra-short", "short"
# the leads graded [h after the issue]: the steps whose end lies in (first, last]
GRADED_LEADS_H = {ULTRA_SHORT: (3.75, 4.0), SHORT: (16.0, 40.0)}
DAYLIGHT_RATIO = 0.05


class LiveAccuracy:
    """Predictions waiting for their measurement, and the graded points of the last day."""

    def __init__(self, capacity_w: dict[str, float], *, step_s: int,
                 scorer: str = "north-china") -> None:
        if scorer not in SCORERS:
            raise ValueError(f"scorer {scorer!r} is not one of {sorted(SCORERS)}")
        self.capacity_w = capacity_w
        self.step = timedelta(seconds=step_s)
        self.scorer = SCORERS[scorer]
        self.window = round(86400 / step_s)
        self._pending: dict[tuple[str, str], dict[datetime, float]] = {}
        self._graded: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._scores: dict[tuple[str, str], float] = {}
        self._changed = False

    def issued(self, fc: Forecast, clear_sky_w: pd.Series | None = None) -> None:
        """Keep the forecast's P50 for the steps its product is graded at (for PV, the
        daylight ones by ``clear_sky_w``, 1-minute clear-sky power)."""
        leads = GRADED_LEADS_H.get(fc.horizon)
        if leads is None or fc.series not in self.capacity_w:
            return
        lo = fc.issued_at + timedelta(hours=leads[0])
        hi = fc.issued_at + timedelta(hours=leads[1])
        pending = self._pending.setdefault((fc.series, fc.horizon), {})
        cap = self.capacity_w[fc.series]
        ends = fc.index + self.step
        keep = np.asarray((ends > pd.Timestamp(lo)) & (ends <= pd.Timestamp(hi)))
        if clear_sky_w is not None:
            sky = clear_sky_w.reindex(fc.index.floor("1min")).to_numpy(dtype=float)
            keep &= np.nan_to_num(sky, nan=0.0) >= DAYLIGHT_RATIO * cap
        p50 = fc.q(0.5)
        for i in np.flatnonzero(keep):
            pending[fc.index[i].to_pydatetime()] = float(p50[i])
        # predictions whose measurement never came (a gap) do not pile up
        old = [t for t in pending if t < fc.issued_at - timedelta(days=2)]
        for t in old:
            del pending[t]

    def measured(self, series: str, start: datetime, value_w: float) -> None:
        """An interval mean closed: grade each product's prediction for it."""
        for (name, horizon), pending in self._pending.items():
            if name != series:
                continue
            predicted = pending.pop(start, None)
            if predicted is not None and np.isfinite(value_w):
                self._graded.setdefault((name, horizon), deque(maxlen=self.window)).append(
                    (value_w, predicted))
                self._changed = True

    def accuracy(self) -> dict[tuple[str, str], float]:
        """(series, product) → the daily accuracy over the last day of graded points."""
        if self._changed:
            self._changed = False
            for key, points in self._graded.items():
                y, f = (np.array(x) for x in zip(*points, strict=True))
                self._scores[key] = self.scorer(y, f, self.capacity_w[key[0]])
        return dict(self._scores)
