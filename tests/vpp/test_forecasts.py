"""The site's forecast schedule: the short-term issue once a day at its local time, the
ultra-short one spliced in front of it for the plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from tests.conftest import DEMO_CONFIG
from vpp.config import load_config
from vpp.forecasts import SHORT, ULTRA_SHORT, SiteForecasts


def test_short_term_is_due_at_start_and_daily_at_its_local_time() -> None:
    sf = SiteForecasts(load_config(DEMO_CONFIG))  # 08:00 Asia/Shanghai = 00:00 UTC
    assert sf.short_term_due(None, datetime(2026, 4, 1, 5, tzinfo=UTC))
    last = datetime(2026, 4, 1, 0, 5, tzinfo=UTC)  # issued 08:05 local
    assert not sf.short_term_due(last, datetime(2026, 4, 1, 23, 59, tzinfo=UTC))
    assert sf.short_term_due(last, datetime(2026, 4, 2, 0, 0, tzinfo=UTC))
    started = datetime(2026, 4, 1, 3, tzinfo=UTC)  # started at 11:00 local: next at 08:00
    assert not sf.short_term_due(started, datetime(2026, 4, 1, 23, tzinfo=UTC))
    assert sf.short_term_due(started, datetime(2026, 4, 2, 0, 1, tzinfo=UTC))


def test_the_plan_gets_ultra_short_first_then_short_term() -> None:
    cfg = load_config(DEMO_CONFIG)
    sf = SiteForecasts(cfg)
    t0 = datetime(2026, 4, 5, tzinfo=UTC)
    idx = pd.date_range(t0 - timedelta(days=8), t0, freq="15min", inclusive="left")
    history = {"pv1": pd.Series(0.0, index=idx), "wf1": pd.Series(10e6, index=idx),
               "load": pd.Series(20e6, index=idx)}
    sf.fit(history, t0)
    st = sf.issue(history, t0, SHORT, 288)
    now = t0 + timedelta(hours=2)
    us = sf.issue(history, now, ULTRA_SHORT, 16)
    assert st["wf1"].horizon == SHORT and us["wf1"].horizon == ULTRA_SHORT
    both = sf.combined()["wf1"]
    assert both.index[0] == pd.Timestamp(now) and len(both.index) == 288 - 8
    np.testing.assert_array_equal(both.q(0.5)[:16], us["wf1"].q(0.5))
    np.testing.assert_array_equal(both.q(0.5)[16:], st["wf1"].q(0.5)[24:])
    assert both.index.is_monotonic_increasing and both.index.is_unique
