"""Device physics as pure functions: PV, wind, battery, load.

Everything here works on numbers and numpy arrays; no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import chinese_calendar
import numpy as np
import pandas as pd
import pvlib

from sim.spec import BatterySpec, FlexLoadSpec, PvSpec, WindSpec

TEMP_COEFF_PER_K = -0.0037  # crystalline silicon power temperature coefficient [1/K]
INVERTER_EFFICIENCY = 0.97
NOCT_RISE_K_PER_W_M2 = 0.025  # cell temperature rise over air per irradiance [K/(W/m²)]


def pv_clear_sky_poa_w_m2(times: pd.DatetimeIndex, *, latitude: float, longitude: float,
                          altitude_m: float, tilt_deg: float, azimuth_deg: float) -> np.ndarray:
    """Clear-sky plane-of-array irradiance [W/m²] (pvlib Ineichen with Linke turbidity)."""
    loc = pvlib.location.Location(latitude, longitude, altitude=altitude_m)
    solpos = loc.get_solarposition(times)
    cs = loc.get_clearsky(times, model="ineichen", solar_position=solpos)
    poa = pvlib.irradiance.get_total_irradiance(
        surface_tilt=tilt_deg, surface_azimuth=azimuth_deg,
        solar_zenith=solpos["apparent_zenith"], solar_azimuth=solpos["azimuth"],
        dni=cs["dni"], ghi=cs["ghi"], dhi=cs["dhi"],
    )
    out = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float), nan=0.0).clip(min=0.0)
    return np.asarray(out, dtype=float)


def pv_ac_power_w(poa_w_m2: np.ndarray, temp_air_c: np.ndarray, spec: PvSpec) -> np.ndarray:
    """AC power [W] of a PV plant from plane-of-array irradiance and air temperature.

    DC power scales with irradiance and falls with cell temperature; the inverter converts
    with a constant efficiency and clips at its AC rating.
    """
    temp_cell = temp_air_c + NOCT_RISE_K_PER_W_M2 * poa_w_m2
    p_dc = spec.dc_power_w * poa_w_m2 / 1000.0 * (1.0 + TEMP_COEFF_PER_K * (temp_cell - 25.0))
    return np.clip(p_dc * INVERTER_EFFICIENCY, 0.0, spec.rated_power_w)


def wind_power_w(speed_m_s: np.ndarray, spec: WindSpec) -> np.ndarray:
    """Farm power [W] from the wind speed through a cubic power curve (cut-in, rated, cut-out)."""
    v = np.asarray(speed_m_s, dtype=float)
    vin, vr, vout = spec.cut_in_m_s, spec.rated_speed_m_s, spec.cut_out_m_s
    frac = np.clip((v**3 - vin**3) / (vr**3 - vin**3), 0.0, 1.0)
    frac = np.where((v < vin) | (v >= vout), 0.0, frac)
    return frac * spec.rated_power_w


def is_workday(day: date) -> bool:
    """China's working days: Monday to Friday, less the public holidays, plus the weekend
    days worked in lieu (chinese-calendar's official tables); outside the years those
    tables cover, Monday to Friday."""
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:  # a year the tables do not cover yet
        return day.weekday() < 5


def load_shape(local_hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """County load shape in [0, 1]: night trough, morning rise, midday dip, evening peak;
    lower on days off (``weekend``: weekends and public holidays)."""
    h = np.asarray(local_hour, dtype=float)

    def bump(centre: float, width: float) -> np.ndarray:
        d = (h - centre + 12.0) % 24.0 - 12.0
        return np.asarray(np.exp(-0.5 * (d / width) ** 2))

    s = 0.55 * bump(8.5, 1.6) + 0.25 * bump(12.0, 1.5) + 1.0 * bump(19.5, 2.0) + 0.1
    s = s / 1.12
    return np.clip(s * np.where(weekend, 0.92, 1.0), 0.0, 1.0)


# a failed cooling system (fault kind "cooling") multiplies the temperature rise by this
COOLING_FAILED_RISE_FACTOR = 5.0


@dataclass
class BatteryState:
    """A battery's state of charge, power, cell temperature and energy counters."""

    soc: float
    charged_wh: float = 0.0  # AC energy taken in
    discharged_wh: float = 0.0  # AC energy delivered
    loss_wh: float = 0.0  # conversion losses
    power_w: float = 0.0  # AC power it gives now, + discharge
    temperature_c: float = 25.0
    over_temperature: bool = False  # tripped by its BMS until cooled to reset_temp_c
    cooling_ok: bool = True


def battery_step(state: BatteryState, setpoint_w: float, dt_s: float, spec: BatterySpec) -> float:
    """Advance a battery by ``dt_s`` following its setpoint; return the AC power it gave [W].

    Positive power discharges into the county network. The battery refuses what its
    power ratings and SOC limits do not allow: it never goes beyond ``soc_min``/``soc_max``
    by its own power. Its power moves towards the setpoint at ``ramp_ratio_per_s`` of its
    rating a second; the SOC limits cut it at once (the BMS opens). Over temperature the
    battery trips: it gives 0 W whatever the setpoint until it has cooled (see
    :func:`battery_thermal_step`). Self-discharge takes ``self_discharge_per_day`` of the
    stored energy a day, and is counted with the losses.
    """
    if state.over_temperature:  # its contactor is open
        setpoint_w = state.power_w = 0.0
    p = min(max(setpoint_w, -spec.max_charge_w), spec.max_discharge_w)
    ramp_w = spec.ramp_ratio_per_s * max(spec.max_charge_w, spec.max_discharge_w) * dt_s
    p = min(max(p, state.power_w - ramp_w), state.power_w + ramp_w)
    h = dt_s / 3600.0
    if p > 0:
        avail_wh = max(0.0, (state.soc - spec.soc_min) * spec.capacity_wh)
        p = min(p, avail_wh * spec.discharge_efficiency / h)
        internal_wh = p * h / spec.discharge_efficiency
        state.soc -= internal_wh / spec.capacity_wh
        state.discharged_wh += p * h
        state.loss_wh += internal_wh - p * h
    elif p < 0:
        room_wh = max(0.0, (spec.soc_max - state.soc) * spec.capacity_wh)
        p = -min(-p, room_wh / spec.charge_efficiency / h)
        internal_wh = -p * h * spec.charge_efficiency
        state.soc += internal_wh / spec.capacity_wh
        state.charged_wh += -p * h
        state.loss_wh += -p * h - internal_wh
    if spec.self_discharge_per_day > 0 and state.soc > 0:  # a loss, booked as one
        lost_wh = min(state.soc, state.soc * spec.self_discharge_per_day * dt_s / 86400.0) \
            * spec.capacity_wh
        state.soc -= lost_wh / spec.capacity_wh
        state.loss_wh += lost_wh
    state.power_w = p
    battery_thermal_step(state, dt_s, spec)
    return p


def battery_thermal_step(state: BatteryState, dt_s: float, spec: BatterySpec) -> None:
    """Move the cell temperature towards where the power now puts it (exact first-order
    step), and trip or reset the battery on its trip and reset temperatures.

    The steady rise over ambient grows with the square of the current (I²R losses);
    with the cooling failed it is ``COOLING_FAILED_RISE_FACTOR`` times larger, so a
    battery under load heats past its trip temperature while an idle one stays cool.
    """
    rating_w = max(spec.max_charge_w, spec.max_discharge_w)
    rise = spec.temp_rise_at_rated_k * (state.power_w / rating_w) ** 2
    if not state.cooling_ok:
        rise *= COOLING_FAILED_RISE_FACTOR
    target = spec.ambient_c + rise
    state.temperature_c += (target - state.temperature_c) * (
        1.0 - math.exp(-dt_s / spec.thermal_time_constant_s))
    if state.temperature_c >= spec.trip_temp_c:
        state.over_temperature = True
    elif state.over_temperature and state.temperature_c <= spec.reset_temp_c:
        state.over_temperature = False


class FlexMode:
    """What a flexible load is doing (its ``status`` register)."""

    IDLE = 0  # controlled, asked for nothing (or less than its minimum)
    SETPOINT = 1  # drawing what the controller asked
    FORCED = 2  # flat out: waiting longer would miss the day's energy
    OWN_TIMER = 3  # no controller (or it went silent): its own schedule
    DONE = 4  # the day's energy is in
    MISSED = 5  # the deadline passed without the day's energy (it was kept from running)


@dataclass
class FlexLoadState:
    """A flexible load's progress through its local day."""

    day: int  # the local day (ordinal) the served energy counts towards
    served_wh: float = 0.0  # drawn towards this day's need
    power_w: float = 0.0  # drawn now [W, >= 0]
    mode: int = FlexMode.OWN_TIMER


def flex_load_step(state: FlexLoadState, demand_w: float | None, *, local_day: int,
                   local_hour: float, dt_s: float, spec: FlexLoadSpec) -> float:
    """Advance a flexible load by ``dt_s`` from local time ``local_hour`` of ``local_day``;
    return what it draws [W, >= 0].

    ``demand_w`` is the controller's request (W drawn; None: no controller, its own timer
    runs it from ``default_start_h``). A request below ``min_w`` means off. Whatever is
    asked, the load draws ``max_w`` once waiting a step longer would leave the day's
    energy undeliverable by ``deadline_h``, and nothing once the energy is in.
    """
    if local_day != state.day:
        state.day, state.served_wh = local_day, 0.0
    h = dt_s / 3600.0
    remaining_wh = max(0.0, spec.daily_energy_wh - state.served_wh)
    hours_left = spec.deadline_h - local_hour
    if remaining_wh <= 1e-6:  # within a microwatt-hour: served
        p, state.mode = 0.0, FlexMode.DONE
    elif hours_left <= 0:
        p, state.mode = 0.0, FlexMode.MISSED
    elif remaining_wh >= spec.max_w * (hours_left - h):
        p, state.mode = spec.max_w, FlexMode.FORCED
    elif demand_w is None:
        running = local_hour >= spec.default_start_h
        p, state.mode = (spec.max_w if running else 0.0), FlexMode.OWN_TIMER
    else:
        p = min(max(demand_w, 0.0), spec.max_w)
        p, state.mode = (0.0, FlexMode.IDLE) if p < max(spec.min_w, 1e-9) else (
            p, FlexMode.SETPOINT)
    p = min(p, remaining_wh / h)
    state.served_wh += p * h
    state.power_w = p
    return p


def flex_load_alone_w(spec: FlexLoadSpec, local_hour: np.ndarray) -> np.ndarray:
    """What a flexible load left to its own timer draws at each local hour [W, >= 0]:
    flat out from ``default_start_h`` until the day's energy is in."""
    h = np.asarray(local_hour, dtype=float)
    end_h = min(spec.default_start_h + spec.daily_energy_wh / spec.max_w, spec.deadline_h)
    return np.where((h >= spec.default_start_h) & (h < end_h), spec.max_w, 0.0)
