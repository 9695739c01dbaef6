"""Scenarios: the shipped files validate and fit the demo county; bad files are refused
with the field, the value and what is allowed; what a scenario asks of the plant happens."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from sim import Plant
from sim.scenario import (
    FaultType,
    ScenarioError,
    load_scenario,
    load_scenario_file,
    shipped_scenarios,
)
from sim.spec import WeatherPeriod
from vpp.config import SiteConfig
from vpp.simbridge import plant_spec
from vpp.simrun import scenario_config, scenario_spec

ROOT = Path(__file__).resolve().parents[2]
SHORT = ROOT / "tests" / "data" / "scenario-midday-short.toml"


def test_the_shipped_scenarios() -> None:
    names = shipped_scenarios()
    assert {"sunny-spring-day", "windy-night-cap-cut", "broken-cloud-faults"} <= set(names)
    kinds = {f.kind for n in names for f in load_scenario(n).faults}
    assert {FaultType.OFFLINE, FaultType.GARBAGE, FaultType.FROZEN, FaultType.TRIP} <= kinds
    assert any(load_scenario(n).cap for n in names)


@pytest.mark.parametrize("name", [*shipped_scenarios(), str(SHORT)])
def test_each_scenario_fits_the_demo_county(name: str, demo_config: SiteConfig) -> None:
    sc = load_scenario(name)
    ids = {a.id for a in demo_config.assets}
    batteries = {a.id for a in demo_config.assets if a.kind == "battery"}
    for f in sc.faults:
        assert f.device in ids
        if f.kind is FaultType.TRIP:
            assert f.device in batteries
        if f.point is not None:
            from drivers import load_profile
            profile = load_profile(demo_config.asset(f.device).profile)
            assert f.point in {p.name for p in profile.points}
    assert sc.config == "demo"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text, encoding="utf-8")
    return p


BASE = 'name = "t"\nstart = "2026-04-15T00:00:00+08:00"\nduration_h = 2\n'


@pytest.mark.parametrize(("extra", "says"), [
    ("[[faults]]\nat_h = 3\ndevice = \"pv1\"\nkind = \"offline\"\n",
     "fault at 3.0 h is not within the scenario's duration_h = 2"),
    ("[[faults]]\nat_h = 1\ndevice = \"wf1\"\nkind = \"garbage\"\n", "needs 'point'"),
    ("[[faults]]\nat_h = 1\ndevice = \"wf1\"\nkind = \"melt\"\n", "faults.0.kind"),
    ("[[cap]]\nat_h = 1\nexport_cap_w = -5\n", "cap.0.export_cap_w"),
    ("load_scale = 9\n", "load_scale"),
])
def test_a_bad_scenario_names_the_field_and_the_value(tmp_path: Path, extra: str,
                                                      says: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario_file(_write(tmp_path, BASE + extra))
    assert says in str(err.value)


def test_a_start_without_offset_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("+08:00", "")
    with pytest.raises(ScenarioError, match="needs a UTC offset"):
        load_scenario_file(_write(tmp_path, text))


def test_an_unknown_scenario_lists_the_shipped_ones() -> None:
    with pytest.raises(ScenarioError, match="sunny-spring-day"):
        load_scenario("no-such-scenario")


def _plant(demo_config: SiteConfig, periods: tuple[WeatherPeriod, ...], *, seed: int = 3,
           start: datetime = datetime(2026, 4, 14, 16, tzinfo=UTC)) -> Plant:
    spec = plant_spec(demo_config)
    spec = dataclasses.replace(spec, weather=dataclasses.replace(spec.weather, periods=periods))
    return Plant(spec, seed=seed, start_s=start.timestamp())


def test_weather_periods_force_the_regime_and_the_wind(demo_config: SiteConfig) -> None:
    start = datetime(2026, 4, 15, tzinfo=UTC)  # a day of the weather begins at 00:00 UTC
    t0 = start.timestamp()
    periods = (WeatherPeriod(start_s=t0, regime=0, mean_wind_m_s=3.0),
               WeatherPeriod(start_s=t0 + 12 * 3600, regime=2, mean_wind_m_s=14.0))
    day = _plant(demo_config, periods, start=start).weather.day_for(t0)
    assert day.t0_s == t0
    k, wind = day.clear_sky_index, day.wind_speed_m_s
    # the clear-sky index follows the regime within its ~10 min smoothing
    assert k[60:700].mean() > 0.9 and k[780:].mean() < 0.4
    assert wind[60:700].mean() == pytest.approx(3.0, rel=0.35)
    assert wind[780:].mean() == pytest.approx(14.0, rel=0.35)


def test_same_seed_same_plant_and_another_seed_another(demo_config: SiteConfig) -> None:
    """Determinism of the plant's side: the same scenario and seed give the same weather,
    available power and load; another seed gives others."""
    sc = load_scenario("broken-cloud-faults")
    cfg = scenario_config(demo_config, sc)
    spec = scenario_spec(sc)(plant_spec(cfg))

    def run(seed: int) -> tuple[float, float, float, float]:
        plant = Plant(spec, seed=seed, start_s=sc.start.timestamp())
        plant.advance_to(sc.start.timestamp() + 6 * 3600)
        st = plant.finish()
        return (st.renewable_available_wh, st.load_wh, st.uncontrolled_max_export_w,
                st.export_wh)

    assert run(sc.seed) == run(sc.seed)
    assert run(sc.seed) != run(sc.seed + 1)


def test_scheduled_cap_trip_and_books(demo_config: SiteConfig) -> None:
    t0 = datetime(2026, 4, 15, 4, tzinfo=UTC).timestamp()  # noon local
    plant = _plant(demo_config, (), start=datetime(2026, 4, 15, 4, tzinfo=UTC))
    plant.battery_setpoint_w["bess1"] = -10e6
    plant.advance_to(t0 + 600)
    assert plant.power_w["bess1"] == pytest.approx(-10e6)
    plant.open_books()
    plant.schedule_cap(t0 + 1200, 20e6)
    plant.trip("bess1")
    plant.advance_to(t0 + 1200)
    assert plant.power_w["bess1"] == 0.0  # tripped: the setpoint is ignored
    assert plant.device_values("bess1")["status"] == 3.0
    assert plant.export_cap_w == demo_config.pcc.export_cap_w
    plant.advance_to(t0 + 1201)
    assert plant.export_cap_w == 20e6
    plant.trip("bess1", tripped=False)
    plant.advance_to(t0 + 1800)
    assert plant.power_w["bess1"] == pytest.approx(-10e6)
    st = plant.finish()
    assert st.sim_s == pytest.approx(1200)  # the books opened at t0 + 600
    assert st.energy_balance_error_ratio() < 1e-9
    assert st.battery_charge_wh == pytest.approx(10e6 * 599 / 3600, rel=1e-6)  # from 1201 s
    assert len(st.trace) == 20 and not math.isnan(st.trace[-1]["bess1.soc"])
    assert np.isfinite([r["max_export_w"] for r in st.trace]).all()
