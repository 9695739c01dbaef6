"""Broken input gets a clear report, not a traceback: gaps, a DST switch, duplicated
stamps, a frozen sensor, spikes, negative night values; unusable files a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from forecasting import DataError, Site, load_series
from vpp.cli import app

BERLIN = Site(latitude=52.5, longitude=13.4, altitude_m=40, tz="Europe/Berlin")


def _broken_pv(path: Path) -> None:
    """Ten days of naive local 5-minute stamps over the spring DST switch (2026-03-29),
    with every kind of damage."""
    local = pd.date_range("2026-03-24 00:00", "2026-04-03 00:00", freq="5min",
                          inclusive="left")
    hour = np.asarray(local.hour + local.minute / 60)
    p = np.clip(np.sin((hour - 6) / 13 * np.pi), 0, None) * 4e6
    p[(hour < 6) | (hour > 19)] = -2e3  # inverter self-consumption at night
    df = pd.DataFrame({"time": local.strftime("%Y-%m-%d %H:%M:%S"), "p": p})
    df.loc[500:560, "p"] = np.nan  # a gap of 5 h
    df.loc[1500:1530, "p"] = 1234567.0  # a frozen sensor
    df.loc[2000, "p"] = 9e9  # a spike
    df.loc[2100, "time"] = "not a time"
    df = pd.concat([df, df.iloc[[700, 701, 702]]])  # duplicated stamps
    # naive stamps inside the DST gap do not exist: 02:00-02:55 on 2026-03-29
    df.to_csv(path, index=False)


def test_broken_input_is_reported_and_handled(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    _broken_pv(path)
    data, rep = load_series(path, kind="pv", capacity_w=5e6, site=BERLIN, time_col="time",
                            power_col="p")
    assert rep.naive_stamps and rep.dst_days == ["2026-03-29"]
    assert rep.dst_dropped == 12  # 02:00 .. 02:55 do not exist on that day
    assert rep.unreadable_stamps == 1
    assert rep.duplicates == 3
    assert rep.resampled_from_s == 300
    assert rep.frozen_runs >= 1 and rep.out_of_range >= 1
    assert rep.negative_set_zero > 0 and rep.gaps >= 1 and rep.longest_gap_h >= 4.5
    text = "\n".join(rep.lines())
    for word in ("DST change on 2026-03-29", "duplicated", "gaps", "frozen-sensor",
                 "out-of-range", "set to 0", "unreadable"):
        assert word in text
    assert data.step_s == 900 and np.nanmin(data.y_w) >= 0
    assert np.nanmax(data.y_w) <= 5e6


def test_cli_reports_broken_input_and_backtests_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    _broken_pv(path)
    r = CliRunner().invoke(app, ["forecast", "backtest", "--data", str(path), "--kind", "pv",
                                 "--capacity-w", "5e6", "--horizon", "ultra-short",
                                 "--report", str(tmp_path / "r"), "--time-col", "time",
                                 "--power-col", "p", "--tz", "Europe/Berlin",
                                 "--latitude", "52.5", "--longitude", "13.4",
                                 "--min-train-days", "6", "--max-days", "2"])
    assert r.exit_code == 0, r.output
    assert "DST change on 2026-03-29" in r.output and "frozen-sensor" in r.output
    assert (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize(("content", "kwargs", "message"), [
    ("timestamp,p\n2026-01-01T00:00Z,1\n", {}, "no power [W] column 'power_w'; the columns "
                                                "are ['timestamp', 'p']"),
    ("t,power_w\n2026-01-01T00:00Z,1\n", {}, "no timestamp column 'timestamp'"),
    ("timestamp,power_w\nyesterday,1\nnoon,2\n", {}, "no readable timestamp"),
    ("timestamp,power_w\n2026-01-01T00:00Z,1\n2026-01-01T01:00Z,2\n2026-01-01T02:00Z,2\n", {},
     "steps every 3600 s; forecasting needs 15-minute"),
    ("timestamp,power_w,cloud\n2026-01-01T00:00Z,1,3\n", {"exog": ("cloud",)},
     "weather columns ['cloud'] are not understood"),
])
def test_unusable_files_get_a_clear_error(tmp_path: Path, content: str, kwargs: dict,  # type: ignore[type-arg]
                                          message: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(content)
    with pytest.raises(DataError) as exc:
        load_series(path, kind="load", capacity_w=1e6, site=BERLIN, **kwargs)
    assert message in str(exc.value)


def test_cli_names_a_missing_column_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("when,kw\n2026-01-01T00:00Z,1\n")
    r = CliRunner().invoke(app, ["forecast", "backtest", "--data", str(path), "--kind", "load",
                                 "--capacity-w", "1e6", "--horizon", "short",
                                 "--report", str(tmp_path / "r")])
    assert r.exit_code == 1
    assert "no timestamp column 'timestamp'" in r.output and "Traceback" not in r.output
