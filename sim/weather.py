"""Seeded weather and load processes at one-minute resolution.

Generated day by day with the process state carried across days, so a run that is
extended gives the same series as one generated in one go. Same seed, same weather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from scipy.special import gamma
from scipy.stats import norm

from sim import physics
from sim.spec import PlantSpec

MINUTES_PER_DAY = 1440

# Cloud regimes: mean clear-sky index, noise std, noise time constant [min]
_REGIMES = {
    0: (0.97, 0.02, 30.0),  # clear
    1: (0.62, 0.22, 4.0),  # broken cloud
    2: (0.25, 0.07, 20.0),  # overcast
}
_REGIME_MEAN_DURATION_MIN = 150.0


@dataclass
class _State:
    regime: int = 0
    k_mean: float = 0.97
    k_noise: float = 0.0
    wind_z: float = 0.0
    wind_gust: float = 0.0
    load_noise: float = 0.0


@dataclass
class DayWeather:
    """One day of one-minute series; ``t0_s`` is the POSIX time of the first minute."""

    t0_s: float
    clear_sky_index: np.ndarray
    wind_speed_m_s: np.ndarray
    temp_air_c: np.ndarray
    load_factor: np.ndarray  # shape × noise, in [0, 1.x], times peak gives load
    pv_available_w: dict[str, np.ndarray] = field(default_factory=dict)
    wind_available_w: dict[str, np.ndarray] = field(default_factory=dict)
    load_w: dict[str, np.ndarray] = field(default_factory=dict)


class Weather:
    """Generates the plant's available power and load, day by day, from a seed."""

    def __init__(self, spec: PlantSpec, *, seed: int, first_day_s: float) -> None:
        self.spec = spec
        self.seed = seed
        self.first_day_s = first_day_s  # POSIX time of the first day's 00:00 UTC
        self._rng = np.random.default_rng(seed)
        self._state = _State()
        self._days: list[DayWeather] = []
        self._tz = ZoneInfo(spec.timezone)

    def _regime_probs(self) -> np.ndarray:
        c = min(max(self.spec.weather.cloudiness, 0.0), 1.0)
        clear, overcast = (1 - c) ** 2, c**2
        return np.array([clear, 1 - clear - overcast, overcast])

    def _generate_day(self) -> DayWeather:
        rng, st, w = self._rng, self._state, self.spec.weather
        n = MINUTES_PER_DAY
        t0_s = self.first_day_s + len(self._days) * 86400.0
        probs = self._regime_probs()
        p_switch = 1.0 / _REGIME_MEAN_DURATION_MIN
        k = np.empty(n)
        wind_z = np.empty(n)
        gust = np.empty(n)
        load_noise = np.empty(n)
        u_switch = rng.random(n)
        regimes_draw = rng.choice(3, size=n, p=probs)
        forced, wind_mean = self._periods(t0_s, n)
        e = rng.standard_normal((4, n))
        phi_wind = math.exp(-1.0 / 360.0)
        phi_gust = math.exp(-1.0 / 2.0)
        phi_load = math.exp(-1.0 / 15.0)
        alpha_mean = 1.0 - math.exp(-1.0 / 10.0)
        for i in range(n):
            if forced[i] >= 0:
                st.regime = int(forced[i])
            elif u_switch[i] < p_switch:
                st.regime = int(regimes_draw[i])
            mean, sd, tau = _REGIMES[st.regime]
            phi = math.exp(-1.0 / tau)
            st.k_mean += alpha_mean * (mean - st.k_mean)
            st.k_noise = phi * st.k_noise + sd * math.sqrt(1 - phi * phi) * e[0, i]
            k[i] = st.k_mean + st.k_noise
            st.wind_z = phi_wind * st.wind_z + math.sqrt(1 - phi_wind**2) * e[1, i]
            wind_z[i] = st.wind_z
            st.wind_gust = phi_gust * st.wind_gust + 0.08 * math.sqrt(1 - phi_gust**2) * e[2, i]
            gust[i] = st.wind_gust
            st.load_noise = phi_load * st.load_noise + 0.015 * math.sqrt(1 - phi_load**2) * e[3, i]
            load_noise[i] = st.load_noise
        k = np.clip(k, 0.05, 1.0)
        scale = wind_mean / gamma(1.0 + 1.0 / w.weibull_k)
        u = np.clip(norm.cdf(wind_z), 1e-9, 1 - 1e-9)
        wind = scale * (-np.log1p(-u)) ** (1.0 / w.weibull_k) * (1.0 + gust)
        wind = np.clip(wind, 0.0, None)

        times = pd.date_range(pd.Timestamp(t0_s, unit="s", tz="UTC"), periods=n, freq="1min")
        local = times.tz_convert(self._tz)
        hour = np.asarray(local.hour + local.minute / 60.0, dtype=float)
        days = local.date
        off = {d: not physics.is_workday(d) for d in set(days)}  # weekends and holidays
        weekend = np.fromiter((off[d] for d in days), dtype=bool, count=n)
        temp = 15.0 + 7.0 * np.sin(2 * np.pi * (hour - 9.0) / 24.0)
        load_factor = physics.load_shape(hour, weekend) * (1.0 + load_noise)

        day = DayWeather(t0_s, k, wind, temp, load_factor)
        sp = self.spec
        for pv in sp.pv:
            poa_cs = physics.pv_clear_sky_poa_w_m2(
                times, latitude=sp.latitude, longitude=sp.longitude, altitude_m=sp.altitude_m,
                tilt_deg=pv.tilt_deg, azimuth_deg=pv.azimuth_deg)
            day.pv_available_w[pv.id] = physics.pv_ac_power_w(poa_cs * k, temp, pv)
        for wf in sp.wind:
            day.wind_available_w[wf.id] = physics.wind_power_w(wind, wf)
        for ld in sp.loads:
            day.load_w[ld.id] = ld.peak_w * (ld.min_ratio + (1 - ld.min_ratio) * load_factor)
        return day

    def _periods(self, t0_s: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per minute of a day: the forced regime (-1: none) and the mean wind [m/s]."""
        forced = np.full(n, -1, dtype=int)
        wind = np.full(n, self.spec.weather.mean_wind_m_s)
        t = t0_s + 60.0 * np.arange(n)
        for p in self.spec.weather.periods:  # later periods override earlier ones
            on = t >= p.start_s
            forced[on] = -1 if p.regime is None else p.regime
            wind[on] = self.spec.weather.mean_wind_m_s if p.mean_wind_m_s is None \
                else p.mean_wind_m_s
        return forced, wind

    def day_for(self, t_s: float) -> DayWeather:
        """The day containing ``t_s``, generating the days up to it if needed."""
        idx = int((t_s - self.first_day_s) // 86400.0)
        if idx < 0:
            raise ValueError("time before the first generated day")
        while len(self._days) <= idx:
            self._days.append(self._generate_day())
        return self._days[idx]

    def frame(self, start_s: float, end_s: float) -> pd.DataFrame:
        """One-minute frame of every device's available power and load over [start, end)
        (a flexible load: what its own timer draws)."""
        parts = []
        t = start_s
        while t < end_s:
            day = self.day_for(t)
            cols: dict[str, np.ndarray] = {}
            cols.update({f"{k}": v for k, v in day.pv_available_w.items()})
            cols.update({f"{k}": v for k, v in day.wind_available_w.items()})
            cols.update({f"{k}": -v for k, v in day.load_w.items()})
            idx = pd.date_range(pd.Timestamp(day.t0_s, unit="s", tz="UTC"),
                                periods=MINUTES_PER_DAY, freq="1min")
            if self.spec.flex_loads:  # the flexible loads as their own timers run them
                local = idx.tz_convert(self.spec.timezone)
                hours = np.asarray(local.hour + local.minute / 60.0)
                cols.update({f.id: -physics.flex_load_alone_w(f, hours)
                             for f in self.spec.flex_loads})
            parts.append(pd.DataFrame(cols, index=idx))
            t = day.t0_s + 86400.0
        df = pd.concat(parts)
        lo = pd.Timestamp(start_s, unit="s", tz="UTC")
        hi = pd.Timestamp(end_s, unit="s", tz="UTC")
        return df[(df.index >= lo) & (df.index < hi)]
