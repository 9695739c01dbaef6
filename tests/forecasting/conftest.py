"""Simulated series of the demo county (PV, wind, load with day-ahead weather forecasts)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from forecasting import Site
from tests.conftest import DEMO_CONFIG
from vpp.config import load_config
from vpp.forecastdata import simulated_series, write_series

SITE = Site(latitude=38.47, longitude=106.27, altitude_m=1110, tz="Asia/Shanghai")
CAPACITY_W = {"pv1": 60e6, "wf1": 30e6, "load": 35e6}
KIND = {"pv1": "pv", "wf1": "wind", "load": "load"}


@pytest.fixture(scope="session")
def sim_frames() -> dict[str, pd.DataFrame]:
    return simulated_series(load_config(DEMO_CONFIG), start=datetime(2026, 3, 1, tzinfo=UTC),
                            days=16, seed=11)


@pytest.fixture(scope="session")
def sim_files(sim_frames: dict[str, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("simdata")
    return {p.stem: p for p in write_series(sim_frames, out)}
