"""Forecasts as an E-language file (Q/GDW 215, the text format State Grid dispatch centres
take forecasts in).

The layout (docs/api.md): a system declaration, one data block per forecast tagged
``<Class::Entity …>`` with its attributes, a header row (``@``) naming the columns and one
row per step (``#``), columns separated by a space; text with spaces in single quotes;
``//`` starts a comment. Times are the site's local time (the dispatch centre's clock,
Beijing time for a Chinese county), each the end of its 15-minute step, as the grid's
forecast files give them; powers in MW with three decimals.

Pure: text from numbers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd

SYSTEM = "<! System=CountyVPP Version=1.0 Code=UTF-8 Data=1.0 !>"
CLASS = {"ultra-short": "CDQYC", "short": "DQYC", "combined": "YC"}  # 超短期, 短期 forecast


def _q(text: str) -> str:
    return f"'{text}'" if " " in text else text


def forecast_efile(*, site: str, series: str, horizon: str, issued_at: datetime,
                   frame: pd.DataFrame, timezone: str, step_s: int, capacity_w: float) -> str:
    """One forecast as an E file. ``frame``: step start times (UTC) × quantile columns
    ``p10_w``, ``p50_w``, ``p90_w`` … [W]."""
    if frame.empty:
        raise ValueError("forecast_efile: the forecast has no steps")
    cols = [c for c in frame.columns if c.startswith("p") and c.endswith("_w")]
    if "p50_w" not in cols:
        raise ValueError(f"forecast_efile: no p50_w column among {list(frame.columns)}")
    zone = ZoneInfo(timezone)
    fmt = "%Y-%m-%d %H:%M"
    issued = issued_at.astimezone(zone)
    ends = [(t + timedelta(seconds=step_s)).astimezone(zone) for t in frame.index]
    lines = [SYSTEM,
             f"// {horizon} forecast of {series} at {site}, powers in MW, times local "
             f"({timezone}) at the end of each {step_s // 60}-minute step",
             f"<{CLASS.get(horizon, 'YC')}::{site}.{series} "
             f"Date={ends[0].strftime('%Y-%m-%d')} IssueTime={_q(issued.strftime(fmt))} "
             f"Capacity={capacity_w / 1e6:.3f} Unit=MW Points={len(frame)}>",
             "@ id time " + " ".join(c.removesuffix("_w").upper() for c in cols)]
    for i, (end, (_, row)) in enumerate(zip(ends, frame[cols].iterrows(), strict=True), 1):
        values = " ".join(f"{row[c] / 1e6:.3f}" for c in cols)
        lines.append(f"# {i} {_q(end.strftime(fmt))} {values}")
    lines.append(f"</{CLASS.get(horizon, 'YC')}::{site}.{series}>")
    return "\n".join(lines) + "\n"
