"""The weather forecasts the site receives (a numerical-weather-prediction file, the format
of ``docs/simulator.md``), kept as an archive of issues for the forecasters.

For a model to learn how power follows a weather forecast, it needs the forecasts that
were available for past steps, not the latest ones: each past step takes the latest issue
made at least ``HISTORY_MIN_LEAD_S`` (24 h) before it (the day-ahead forecast a short-term
issue has), or, for steps no issue is that old for, the oldest issue covering it. Steps
from now on take the latest issue.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.series import WEATHER_COLUMNS as COLUMNS
from sim.nwp import read_forecast

log = logging.getLogger(__name__)

HISTORY_MIN_LEAD_S = 86400.0


class NwpArchive:
    """Issues of the site's weather forecast, bounded to the last ``keep_days``."""

    def __init__(self, keep_days: float) -> None:
        self.keep_days = keep_days
        self.rows = pd.DataFrame(columns=["issued_at", "valid_time", *COLUMNS])
        self._mtime: float | None = None

    def snapshot(self) -> NwpArchive:
        """A copy for another thread (``add`` replaces the rows, never changes them)."""
        out = NwpArchive(self.keep_days)
        out.rows = self.rows
        return out

    @property
    def issues(self) -> int:
        return int(self.rows["issued_at"].nunique())

    def add(self, issue: pd.DataFrame) -> None:
        """One issue (columns ``issued_at``, ``valid_time`` and the weather columns)."""
        frame = issue[["issued_at", "valid_time", *COLUMNS]]
        if len(self.rows):
            frame = pd.concat([self.rows[~self.rows["issued_at"].isin(frame["issued_at"])],
                               frame], ignore_index=True)
        newest = frame["issued_at"].max()
        self.rows = frame[frame["valid_time"] >= newest - pd.Timedelta(days=self.keep_days)]

    def poll_file(self, path: Path) -> bool:
        """Add the file's issue if the file changed; False when unchanged or unreadable
        (logged: the forecasts then go on without the new issue)."""
        try:
            mtime = path.stat().st_mtime
            if mtime == self._mtime:
                return False
            self.add(read_forecast(path))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("weather forecast %s not read: %s", path, exc)
            return False
        self._mtime = mtime
        return True

    def exog(self, grid: pd.DatetimeIndex, now: datetime) -> pd.DataFrame:
        """The weather columns on ``grid`` (NaN where no issue covers a step). Each step
        takes one issue's whole row, never columns of different issues."""
        out = pd.DataFrame(np.nan, index=grid, columns=list(COLUMNS))
        if not len(self.rows):
            return out
        rows = self.rows.sort_values("issued_at", kind="stable")
        # steps from the one being forecast on are the future (the grid is on 15 minutes)
        split = pd.Timestamp(now).floor("15min")
        lead_s = (rows["valid_time"] - rows["issued_at"]).dt.total_seconds()
        past = rows[rows["valid_time"] < split]
        old_enough = past[lead_s[past.index] >= HISTORY_MIN_LEAD_S]
        oldest = past.drop_duplicates("valid_time", keep="first")
        day_ahead = old_enough.drop_duplicates("valid_time", keep="last")
        hist = pd.concat([day_ahead, oldest]).drop_duplicates("valid_time", keep="first")
        issued = rows.loc[rows["issued_at"] <= pd.Timestamp(now), "issued_at"]
        latest = rows[rows["issued_at"] == issued.max()] if len(issued) else rows.iloc[:0]
        future = latest[latest["valid_time"] >= split]
        both = pd.concat([hist, future]).drop_duplicates("valid_time", keep="last")
        return both.set_index("valid_time")[list(COLUMNS)].reindex(grid)
