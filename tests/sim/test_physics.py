"""Device physics and the plant's books, recomputed independently."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from sim import Plant
from sim.physics import (
    BatteryState,
    FlexLoadState,
    FlexMode,
    battery_step,
    flex_load_step,
    load_shape,
    wind_power_w,
)
from sim.spec import BatterySpec, Endpoint, FlexLoadSpec, WindSpec
from vpp.config import SiteConfig
from vpp.simbridge import plant_spec

EP = Endpoint(port=1, profile="generic-battery")


def test_battery_respects_power_and_soc_limits() -> None:
    spec = BatterySpec(id="b", endpoint=EP, capacity_wh=1000.0, max_charge_w=500.0,
                       max_discharge_w=400.0, soc_min=0.1, soc_max=0.9,
                       charge_efficiency=0.9, discharge_efficiency=0.8)
    st = BatteryState(soc=0.5)
    rng = random.Random(3)
    stored0 = st.soc * spec.capacity_wh
    for _ in range(5000):
        p = battery_step(st, rng.uniform(-2000, 2000), 10.0, spec)
        assert -spec.max_charge_w - 1e-9 <= p <= spec.max_discharge_w + 1e-9
        assert spec.soc_min - 1e-9 <= st.soc <= spec.soc_max + 1e-9
    # energy conservation: AC in − AC out − losses = stored gain
    stored_gain = st.soc * spec.capacity_wh - stored0
    assert st.charged_wh - st.discharged_wh - st.loss_wh == pytest.approx(stored_gain, abs=1e-6)
    assert st.loss_wh > 0


def test_battery_stops_at_bound_within_one_step() -> None:
    spec = BatterySpec(id="b", endpoint=EP, capacity_wh=3600.0, max_charge_w=3600.0,
                       max_discharge_w=3600.0, soc_min=0.0, soc_max=1.0,
                       charge_efficiency=1.0, discharge_efficiency=1.0)
    st = BatteryState(soc=0.999)
    p = battery_step(st, -3600.0, 10.0, spec)  # 10 Wh asked, 3.6 Wh of room
    assert p == pytest.approx(-0.001 * 3600.0 * 3600.0 / 10.0)
    assert st.soc == pytest.approx(1.0)


def test_wind_power_curve() -> None:
    spec = WindSpec(id="w", endpoint=EP, rated_power_w=10e6, cut_in_m_s=3, rated_speed_m_s=12,
                    cut_out_m_s=25)
    p = wind_power_w(np.array([0, 2.9, 3, 7.5, 12, 20, 24.9, 25, 30]), spec)
    assert p[0] == p[1] == p[2] == 0
    assert 0 < p[3] < 10e6
    assert p[4] == p[5] == p[6] == 10e6
    assert p[7] == p[8] == 0
    assert np.all(np.diff(wind_power_w(np.linspace(3, 12, 50), spec)) >= 0)


def test_load_peaks_in_the_evening() -> None:
    h = np.arange(0, 24, 0.25)
    s = load_shape(h, np.zeros_like(h, dtype=bool))
    assert s.min() >= 0 and s.max() <= 1
    assert 18 <= h[int(np.argmax(s))] <= 21
    assert s[h == 12.0][0] < s[h == 19.5][0]


def _plant(demo_config, seed: int = 7) -> Plant:  # type: ignore[no-untyped-def]
    start = datetime(2026, 4, 14, 16, tzinfo=UTC).timestamp()  # local midnight
    return Plant(plant_spec(demo_config), seed=seed, start_s=start)


def test_pv_is_zero_at_night_and_meter_sums_devices(demo_config) -> None:  # type: ignore[no-untyped-def]
    plant = _plant(demo_config)
    plant.advance_to(plant.t_s + 2 * 3600)  # 02:00 local
    assert plant.power_w["pv1"] == 0.0
    plant.advance_to(plant.t_s + 9 * 3600)  # 11:00
    plant.apply_setpoint("bess1", "power_setpoint_w", -5e6)
    plant.advance_to(plant.t_s + 3600)  # noon, after an hour of charging (not yet full)
    assert plant.power_w["pv1"] > 0
    total = sum(plant.power_w[a] for a in ("pv1", "wf1", "bess1", "load"))
    assert plant.export_w == pytest.approx(total)
    assert plant.power_w["load"] < 0  # generator convention: a load draws
    assert plant.power_w["bess1"] == pytest.approx(-5e6)  # charging


def test_limits_are_obeyed_and_the_books_close(demo_config) -> None:  # type: ignore[no-untyped-def]
    plant = _plant(demo_config)
    rng = random.Random(11)
    for _ in range(24 * 6):
        plant.apply_setpoint("pv1", "active_power_limit_w", rng.uniform(0, 60e6))
        plant.apply_setpoint("wf1", "active_power_limit_w", rng.uniform(0, 30e6))
        plant.apply_setpoint("bess1", "power_setpoint_w", rng.uniform(-20e6, 20e6))
        plant.advance_to(plant.t_s + 600)
        assert plant.power_w["pv1"] <= plant.limit_w["pv1"] + 1e-6
        assert plant.power_w["wf1"] <= plant.limit_w["wf1"] + 1e-6
    st = plant.finish()
    assert st.curtailed_wh > 0
    assert st.renewable_available_wh == pytest.approx(st.renewable_wh + st.curtailed_wh)
    assert st.energy_balance_error_ratio() < 1e-9
    assert st.sim_s == pytest.approx(24 * 3600)


def test_same_seed_same_weather(demo_config) -> None:  # type: ignore[no-untyped-def]
    a, b, c = _plant(demo_config, 1), _plant(demo_config, 1), _plant(demo_config, 2)
    t0 = a.t_s
    fa = a.weather.frame(t0, t0 + 86400)
    pd.testing.assert_frame_equal(fa, b.weather.frame(t0, t0 + 86400))
    assert not fa.equals(c.weather.frame(t0, t0 + 86400))
    # generating day by day gives the same series as generating later days first
    assert len(fa) == 1440


def test_an_idle_battery_self_discharges_as_a_counted_loss() -> None:
    spec = BatterySpec(id="b", endpoint=EP, capacity_wh=1000.0, max_charge_w=500.0,
                       max_discharge_w=500.0, self_discharge_per_day=0.01)
    st = BatteryState(soc=0.8)
    for _ in range(10 * 24):  # ten days idle, hourly steps
        assert battery_step(st, 0.0, 3600.0, spec) == 0.0
    assert st.soc == pytest.approx(0.8 * (1 - 0.01 / 24) ** 240, rel=1e-9)  # about 1 %/day
    assert st.loss_wh == pytest.approx((0.8 - st.soc) * 1000.0, rel=1e-9)


def test_line_losses_come_off_the_meter_and_stay_in_the_books() -> None:
    import dataclasses

    from tests.conftest import DEMO_CONFIG
    from vpp.config import load_config
    spec = dataclasses.replace(plant_spec(load_config(DEMO_CONFIG)), line_loss_ratio=0.02)
    start = datetime(2026, 4, 15, 3, tzinfo=UTC).timestamp()  # 11:00 local
    lossy, plain = (Plant(s, seed=5, start_s=start)
                    for s in (spec, dataclasses.replace(spec, line_loss_ratio=0.0)))
    for p in (lossy, plain):
        p.advance_to(start + 3 * 3600)
    flow = plain.export_w
    assert lossy.export_w == pytest.approx(flow - 0.02 * flow * flow / spec.export_cap_w)
    a, b = lossy.finish(), plain.finish()
    assert a.line_loss_wh > 0 and b.line_loss_wh == 0
    assert a.export_wh - a.import_wh == pytest.approx(b.export_wh - b.import_wh - a.line_loss_wh,
                                                      rel=1e-9)
    assert a.energy_balance_error_ratio() < 1e-9


def test_public_holidays_and_working_days_in_lieu_shape_the_load() -> None:
    from datetime import date

    from sim.physics import is_workday
    from sim.weather import Weather
    from tests.conftest import DEMO_CONFIG
    from vpp.config import load_config
    assert not is_workday(date(2026, 10, 1))  # National Day, a Thursday
    assert is_workday(date(2026, 10, 10))  # a Saturday worked in lieu
    assert not is_workday(date(2026, 10, 11)) and is_workday(date(2026, 10, 15))
    assert is_workday(date(2099, 3, 2)) and not is_workday(date(2099, 3, 1))  # beyond tables
    spec = plant_spec(load_config(DEMO_CONFIG))
    # local days (UTC+8) from 16:00 UTC the day before
    w = Weather(spec, seed=1, first_day_s=datetime(2026, 9, 30, 16, tzinfo=UTC).timestamp())

    def mean_load(d: date) -> float:
        t = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() - 8 * 3600
        return float(w.day_for(t).load_factor.mean())

    holiday, thursday = mean_load(date(2026, 10, 1)), mean_load(date(2026, 10, 15))
    in_lieu, sunday = mean_load(date(2026, 10, 10)), mean_load(date(2026, 10, 11))
    assert holiday / thursday == pytest.approx(0.92, abs=0.02)
    assert in_lieu / thursday == pytest.approx(1.0, abs=0.02)
    assert sunday / thursday == pytest.approx(0.92, abs=0.02)


def test_a_generator_follows_its_limit_at_its_ramp_rate() -> None:
    import dataclasses

    from tests.conftest import DEMO_CONFIG
    from vpp.config import load_config
    spec = plant_spec(load_config(DEMO_CONFIG))
    spec = dataclasses.replace(spec, wind=tuple(dataclasses.replace(w, ramp_ratio_per_s=0.02)
                                                for w in spec.wind))
    start = datetime(2026, 4, 15, 4, tzinfo=UTC).timestamp()  # noon: the wind farm gives power
    plant = Plant(spec, seed=5, start_s=start)
    plant.advance_to(start + 60)
    wind = next(w for w in spec.wind)
    before = plant.power_w[wind.id]
    assert before > 2e6
    ramp_w_s = wind.ramp_ratio_per_s * wind.rated_power_w  # 0.6 MW/s for 30 MW
    plant.apply_setpoint(wind.id, "active_power_limit_w", 0.0)
    plant.advance_to(start + 61)
    assert plant.power_w[wind.id] == pytest.approx(max(0.0, before - ramp_w_s), abs=1e3)
    plant.advance_to(start + 60 + before / ramp_w_s + 1)
    assert plant.power_w[wind.id] == 0.0
    t = plant.t_s
    plant.apply_setpoint(wind.id, "active_power_limit_w", wind.rated_power_w)  # release
    plant.advance_to(t + 1)
    assert 0 < plant.power_w[wind.id] <= ramp_w_s + 1e-6  # rises at the ramp, not at once
    plant.advance_to(t + 60)
    assert plant.power_w[wind.id] == pytest.approx(plant.available_w[wind.id])


def test_battery_follows_its_setpoint_at_its_ramp_rate() -> None:
    spec = BatterySpec(id="b", endpoint=EP, capacity_wh=10_000.0, max_charge_w=1000.0,
                       max_discharge_w=1000.0, ramp_ratio_per_s=0.25)
    st = BatteryState(soc=0.5)
    steps = [battery_step(st, 1000.0, 1.0, spec) for _ in range(5)]
    assert steps == pytest.approx([250.0, 500.0, 750.0, 1000.0, 1000.0])
    # from full discharge to full charge: 2000 W of swing at 250 W/s takes 8 s
    down = [battery_step(st, -1000.0, 1.0, spec) for _ in range(9)]
    assert down[3] == pytest.approx(0.0)
    assert down[-2:] == pytest.approx([-1000.0, -1000.0])


def test_battery_with_failed_cooling_trips_hot_and_rests_until_cool() -> None:
    """First-order heating to ambient + 5 x 12 K at full power crosses 55 °C after
    tau ln(60/30) = 1247.7 s; cooling from 55 °C to 45 °C takes tau ln(30/20) = 729.8 s."""
    spec = BatterySpec(id="b", endpoint=EP, capacity_wh=1e9, max_charge_w=1000.0,
                       max_discharge_w=1000.0, thermal_time_constant_s=1800.0)
    healthy = BatteryState(soc=0.5, temperature_c=25.0)
    for _ in range(6 * 3600):  # six hours at full power with the cooling working
        battery_step(healthy, 1000.0, 1.0, spec)
    assert healthy.temperature_c == pytest.approx(37.0, abs=0.01)
    assert not healthy.over_temperature

    st = BatteryState(soc=0.5, temperature_c=25.0, cooling_ok=False)
    t = 0
    while battery_step(st, 1000.0, 1.0, spec) > 0:
        t += 1
    assert 1246 <= t <= 1249
    assert st.over_temperature and st.power_w == 0.0
    rest = 0
    while st.over_temperature:
        assert battery_step(st, 1000.0, 1.0, spec) == 0.0  # setpoints ignored while hot
        rest += 1
    assert 728 <= rest <= 732
    assert battery_step(st, 1000.0, 1.0, spec) > 0  # it works again (and will heat again)


def test_a_plant_battery_with_failed_cooling_reports_its_heat_and_trip(
        demo_config: SiteConfig) -> None:
    start = datetime(2026, 4, 15, 3, tzinfo=UTC).timestamp()
    plant = Plant(plant_spec(demo_config), seed=5, start_s=start)
    bid = next(iter(plant.battery))
    plant.apply_setpoint(bid, "power_setpoint_w", plant.spec.batteries[0].max_discharge_w)
    plant.fail_cooling(bid)
    plant.advance_to(start + 600)
    hot = plant.device_values(bid)
    assert hot["status"] == 2.0 and hot["active_power_w"] > 0 and hot["temperature_c"] > 40
    plant.advance_to(start + 1300)
    tripped = plant.device_values(bid)
    assert tripped["status"] == 3.0 and tripped["active_power_w"] == 0.0
    assert tripped["temperature_c"] >= 50
    assert [(d, a) for _, d, a in plant.bms_events] == [(bid, "trip")]
    assert start + 1000 < plant.bms_events[0][0] < start + 1300
    plant.fail_cooling(bid, failed=False)
    plant.advance_to(start + 3000)  # cooled below its reset temperature: it runs again
    assert plant.device_values(bid)["status"] == 2.0


FLEX = FlexLoadSpec(id="boilers", endpoint=Endpoint(port=1, profile="generic-flex-load"),
                    max_w=10e6, min_w=2e6, daily_energy_wh=40e6, deadline_h=22.0,
                    default_start_h=1.0)


def _flex_day(demand: Callable[[float], float | None], day: int = 1) -> tuple[list[float],
                                                                            FlexLoadState]:
    """A day of a flexible load in one-minute steps: the power drawn each minute."""
    st = FlexLoadState(day=day - 1)
    out = [flex_load_step(st, demand(m / 60.0), local_day=day, local_hour=m / 60.0,
                          dt_s=60.0, spec=FLEX) for m in range(24 * 60)]
    return out, st


def test_a_flexible_load_alone_runs_on_its_timer_until_the_day_is_served() -> None:
    drawn, st = _flex_day(lambda h: None)
    on = [m for m, p in enumerate(drawn) if p > 0]
    assert on[0] == 60 and on[-1] == 60 + 4 * 60 - 1  # 01:00 for 4 h at 10 MW
    assert sum(drawn) / 60.0 == pytest.approx(40e6)
    assert st.mode == FlexMode.DONE


def test_a_flexible_load_follows_its_setpoint_and_is_forced_before_its_deadline() -> None:
    # asked for nothing all day: it holds off, then runs flat out for the last 4 h so the
    # day's energy is in by 22:00, and no earlier than it must
    drawn, _ = _flex_day(lambda h: 0.0)
    on = [m for m, p in enumerate(drawn) if p > 0]
    assert on[0] == 18 * 60 - 1 and on[-1] == 22 * 60 - 1
    assert sum(drawn) / 60.0 == pytest.approx(40e6)
    # midday at 5 MW from 10:00 to 18:00: served by 18:00, then done
    drawn, _ = _flex_day(lambda h: 5e6 if 10 <= h < 18 else 0.0)
    assert all(p == pytest.approx(5e6) for p in drawn[600:1080])
    assert sum(drawn[:600]) == 0 and sum(drawn[1080:]) == 0
    # a request below its minimum is off; above its maximum, its maximum
    st = FlexLoadState(day=1)
    assert flex_load_step(st, 1e6, local_day=1, local_hour=3.0, dt_s=60, spec=FLEX) == 0.0
    assert st.mode == FlexMode.IDLE
    assert flex_load_step(st, 50e6, local_day=1, local_hour=3.0, dt_s=60, spec=FLEX) == 10e6
    # kept from running past its deadline (offline, say): the day is missed, not done
    late = FlexLoadState(day=1)
    assert flex_load_step(late, None, local_day=1, local_hour=22.5, dt_s=60, spec=FLEX) == 0.0
    assert late.mode == FlexMode.MISSED
    # a new day needs its energy again
    flex_load_step(st, 0.0, local_day=2, local_hour=0.0, dt_s=60, spec=FLEX)
    assert st.served_wh == 0.0


def test_an_infeasible_flexible_load_is_refused() -> None:
    with pytest.raises(ValueError, match=r"daily_energy_wh 3e\+08 must be in \[0, 2.1e\+08\]"):
        FlexLoadSpec(id="x", endpoint=FLEX.endpoint, max_w=10e6, daily_energy_wh=300e6,
                     deadline_h=22.0, default_start_h=1.0)
