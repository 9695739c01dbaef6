"""The E-language forecast file (vpp.efile), read back by a reader of the language's
syntax (Q/GDW 215: declaration, <Class::Entity> blocks, @ header, # rows, quotes, //)."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from vpp.efile import SYSTEM, forecast_efile


def read_efile(text: str) -> dict[str, object]:
    """A strict reader: every line must be one of the language's kinds."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("//")]
    assert re.fullmatch(r"<! .* !>", lines[0]), lines[0]
    head = re.fullmatch(r"<(\w+)::([\w.\-]+) (.*)>", lines[1])
    assert head, lines[1]
    cls, entity = head.group(1), head.group(2)
    attrs = dict(tok.split("=", 1) for tok in shlex.split(head.group(3)))
    assert lines[-1] == f"</{cls}::{entity}>"
    assert lines[2].startswith("@ ")
    columns = lines[2].split()[1:]
    rows = []
    for ln in lines[3:-1]:
        assert ln.startswith("# "), ln
        toks = shlex.split(ln)[1:]
        assert len(toks) == len(columns), ln
        rows.append(dict(zip(columns, toks, strict=True)))
    return {"class": cls, "entity": entity, "attrs": attrs, "rows": rows}


def test_a_forecast_reads_back_in_local_time_and_mw() -> None:
    idx = pd.date_range("2026-04-15T16:00:00Z", periods=96, freq="15min")  # 00:00 Beijing
    p50 = np.linspace(0, 47.5e6, 96)
    frame = pd.DataFrame({"p10_w": 0.8 * p50, "p50_w": p50, "p90_w": 1.2 * p50}, index=idx)
    text = forecast_efile(site="demo-county", series="pv1", horizon="short",
                          issued_at=datetime(2026, 4, 15, 0, 0, tzinfo=UTC), frame=frame,
                          timezone="Asia/Shanghai", step_s=900, capacity_w=60e6)
    assert text.startswith(SYSTEM + "\n")
    e = read_efile(text)
    assert (e["class"], e["entity"]) == ("DQYC", "demo-county.pv1")
    assert e["attrs"] == {"Date": "2026-04-16", "IssueTime": "2026-04-15 08:00",
                          "Capacity": "60.000", "Unit": "MW", "Points": "96"}
    rows = e["rows"]
    assert len(rows) == 96
    assert rows[0] == {"id": "1", "time": "2026-04-16 00:15", "P10": "0.000", "P50": "0.000",
                       "P90": "0.000"}
    assert rows[-1]["time"] == "2026-04-17 00:00"  # the end of the day's last step
    assert float(rows[-1]["P50"]) == pytest.approx(47.5) and float(rows[-1]["P90"]) == 57.0


def test_an_empty_or_medianless_forecast_is_refused() -> None:
    kw = {"site": "s", "series": "pv1", "horizon": "short", "timezone": "UTC", "step_s": 900,
          "capacity_w": 1e6, "issued_at": datetime(2026, 4, 15, tzinfo=UTC)}
    with pytest.raises(ValueError, match="no steps"):
        forecast_efile(frame=pd.DataFrame(), **kw)
    idx = pd.date_range("2026-04-15", periods=2, freq="15min", tz="UTC")
    with pytest.raises(ValueError, match="no p50_w column"):
        forecast_efile(frame=pd.DataFrame({"p10_w": [1.0, 2.0]}, index=idx), **kw)
