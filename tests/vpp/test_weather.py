"""The weather archive: which issue each step takes, and a bad file reported, not fatal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from vpp.weather import NwpArchive

T0 = datetime(2026, 4, 10, tzinfo=UTC)


def _issue(at: datetime, value: float) -> pd.DataFrame:
    valid = pd.date_range(at, at + timedelta(hours=72), freq="15min", inclusive="left")
    return pd.DataFrame({"issued_at": pd.Timestamp(at), "valid_time": valid,
                         "ghi_w_m2": value, "wind_speed_m_s": value + 0.5,
                         "temp_air_c": value + 0.25})


def test_past_steps_take_the_day_ahead_issue_and_the_future_the_latest() -> None:
    arch = NwpArchive(keep_days=10)
    for k in range(9):  # every 6 h from T0: value k
        arch.add(_issue(T0 + timedelta(hours=6 * k), float(k)))
    now = T0 + timedelta(hours=48, minutes=7)
    grid = pd.date_range(T0 + timedelta(hours=30), now + timedelta(hours=6), freq="15min")
    ex = arch.exog(grid, now)
    # 30 h: the latest issue at least 24 h before it is the one of 06:00 (k = 1)
    assert ex.loc[pd.Timestamp(T0 + timedelta(hours=30)), "ghi_w_m2"] == 1.0
    # 47:45: the issues at least 24 h older are those up to 23:45: the 18:00 one (k = 3)
    assert ex.loc[pd.Timestamp(T0 + timedelta(hours=47, minutes=45)), "ghi_w_m2"] == 3.0
    # the step being forecast (48:00, though now is 48:07) and after: the latest issue
    first = pd.Timestamp(T0 + timedelta(hours=48))
    assert ex.loc[first, "ghi_w_m2"] == 8.0
    assert (ex.loc[first:, "ghi_w_m2"] == 8.0).all()
    # one issue per step, whole rows
    assert ((ex["wind_speed_m_s"] - ex["ghi_w_m2"]) == 0.5).all()


def test_a_bad_file_is_logged_and_the_archive_kept(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    arch = NwpArchive(keep_days=10)
    arch.add(_issue(T0, 1.0))
    bad = tmp_path / "weather.csv"
    bad.write_text("not,a,forecast\n1,2,3\n")
    assert not arch.poll_file(bad)
    assert "not a weather forecast file" in caplog.text
    assert not arch.poll_file(tmp_path / "missing.csv")
    assert arch.issues == 1
