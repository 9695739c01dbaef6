"""A real measured series: NREL's SERF East PV system (15-minute AC power, Golden,
Colorado, July to October 2016), as pvanalytics ships it. No weather inputs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from forecasting import Site, backtest, load_series
from forecasting.backtest import SELECTED

GOLDEN = Site(latitude=39.742, longitude=-105.18, altitude_m=1828, tz="America/Denver")
SERF_CAPACITY_W = 5500.0  # no nameplate in the data set; its highest reading is 5.43 kW


def serf_east() -> Path:
    return Path(str(resources.files("pvanalytics") / "data" / "serf_east_15min_ac_power.csv"))


def test_serf_east_is_read_with_its_night_values_reported() -> None:
    data, rep = load_series(serf_east(), kind="pv", capacity_w=SERF_CAPACITY_W, site=GOLDEN,
                            time_col="measured_on", power_col="ac_power")
    assert rep.steps == 10000 and rep.gaps == 0
    assert rep.negative_set_zero > 4000  # inverter draw at night, about -3 W
    assert not rep.naive_stamps and rep.weather_columns == []
    assert data.y_w.min() >= 0


def test_on_real_data_the_choice_beats_the_baselines() -> None:
    data, _ = load_series(serf_east(), kind="pv", capacity_w=SERF_CAPACITY_W, site=GOLDEN,
                          time_col="measured_on", power_col="ac_power")
    res = backtest(data, horizon="ultra-short", max_days=20)
    sel = res.metrics[SELECTED]
    for b in res.baselines:
        assert sel["accuracy"] > res.metrics[b]["accuracy"], b
        assert sel["pinball_mean"] < res.metrics[b]["pinball_mean"], b
