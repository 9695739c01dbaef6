"""Clear-sky PV power: the physical upper envelope of what a PV plant can deliver."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pvlib

SYSTEM_EFFICIENCY = 0.96  # inverter and wiring, at 25 °C cell temperature


@dataclass(frozen=True, kw_only=True)
class PvPlantGeometry:
    """What the controller knows of a PV plant: where it is and how it is built."""

    latitude: float
    longitude: float
    altitude_m: float
    tilt_deg: float
    azimuth_deg: float
    dc_power_w: float
    rated_power_w: float


def clear_sky_power_w(times: pd.DatetimeIndex, plant: PvPlantGeometry) -> np.ndarray:
    """AC power [W] the plant would deliver under a clear sky at ``times`` (UTC-aware).

    Ineichen clear-sky irradiance (pvlib) transposed to the plane of the array, scaled by
    the DC nameplate and a constant system efficiency, clipped at the AC rating.
    """
    loc = pvlib.location.Location(plant.latitude, plant.longitude, altitude=plant.altitude_m)
    solpos = loc.get_solarposition(times)
    cs = loc.get_clearsky(times, model="ineichen", solar_position=solpos)
    poa = pvlib.irradiance.get_total_irradiance(
        surface_tilt=plant.tilt_deg, surface_azimuth=plant.azimuth_deg,
        solar_zenith=solpos["apparent_zenith"], solar_azimuth=solpos["azimuth"],
        dni=cs["dni"], ghi=cs["ghi"], dhi=cs["dhi"],
    )["poa_global"]
    p = np.nan_to_num(np.asarray(poa, dtype=float), nan=0.0) / 1000.0 * plant.dc_power_w
    return np.asarray(np.clip(p * SYSTEM_EFFICIENCY, 0.0, plant.rated_power_w), dtype=float)


def interval_clear_sky_power_w(start: pd.DatetimeIndex, step_s: int,
                               plant: PvPlantGeometry, samples: int = 3) -> np.ndarray:
    """Mean clear-sky power [W] over intervals [t, t + step_s), from a few samples each."""
    offsets = (np.arange(samples) + 0.5) / samples * step_s
    acc = np.zeros(len(start))
    for off in offsets:
        acc += clear_sky_power_w(start + pd.Timedelta(seconds=float(off)), plant)
    return acc / samples
