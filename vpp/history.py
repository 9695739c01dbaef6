"""Interval means of the controller's own measurements: the history forecasts are fitted on."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import pandas as pd


class IntervalHistory:
    """Per series, the mean of each fixed interval (default 15 min), for a bounded span.

    Measurements are added as they arrive; an interval is closed (and its mean kept) when a
    measurement of a later interval arrives. Memory is bounded by ``max_intervals``.
    """

    def __init__(self, *, step_s: int = 900, max_intervals: int = 96 * 14) -> None:
        self.step_s = step_s
        self.max_intervals = max_intervals
        self._closed: dict[str, deque[tuple[int, float]]] = {}
        self._open: dict[str, tuple[int, float, int]] = {}  # series -> (bin, sum, count)

    def _bin(self, t: datetime) -> int:
        return int(t.timestamp()) // self.step_s

    def add(self, series: str, t: datetime, value_w: float) -> tuple[datetime, float] | None:
        """Add a measurement; returns (interval start, mean) when an interval closes."""
        b = self._bin(t)
        closed = None
        cur = self._open.get(series)
        if cur is not None and cur[0] != b:
            mean = cur[1] / cur[2]
            self._closed.setdefault(series, deque(maxlen=self.max_intervals)).append((cur[0], mean))
            closed = (datetime.fromtimestamp(cur[0] * self.step_s, UTC), mean)
            cur = None
        if cur is None:
            self._open[series] = (b, value_w, 1)
        else:
            self._open[series] = (b, cur[1] + value_w, cur[2] + 1)
        return closed

    def seed(self, frame: pd.DataFrame) -> None:
        """Load past interval means (UTC index, one column per series)."""
        for col in frame.columns:
            dq = self._closed.setdefault(col, deque(maxlen=self.max_intervals))
            for ts, v in frame[col].dropna().items():
                dq.append((int(pd.Timestamp(ts).timestamp()) // self.step_s, float(v)))

    def series(self, name: str) -> pd.Series:
        """Closed interval means of a series, on a regular UTC grid (NaN where missing)."""
        data = self._closed.get(name)
        if not data:
            return pd.Series(dtype=float)
        idx = pd.to_datetime([b * self.step_s for b, _ in data], unit="s", utc=True)
        s = pd.Series([v for _, v in data], index=idx)
        s = s[~s.index.duplicated(keep="last")].sort_index()
        grid = pd.date_range(s.index[0], s.index[-1], freq=f"{self.step_s}s")
        return s.reindex(grid)

    def names(self) -> list[str]:
        return sorted(self._closed)
