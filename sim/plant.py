"""The simulated plant: devices stepped in simulated time, measured by the PCC meter.

The plant advances in fixed steps (default 1 s) up to the time it is asked about, so a
Modbus read always sees the state at the instant of the read, and a setpoint takes effect
from the instant it is written. The PCC meter sums the devices with the generator
convention: export is positive towards the upstream grid. Run statistics (the meter's
view, not the controller's) accumulate as the plant steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sim.physics import BatteryState, FlexLoadState, FlexMode, battery_step, flex_load_step
from sim.spec import FlexLoadSpec, PlantSpec
from sim.weather import MINUTES_PER_DAY, Weather

VIOLATION_TOLERANCE_RATIO = 0.01  # export above cap × (1 + this) counts as a violation
# a device armed by a heartbeat falls back after this silence (plant controllers use
# minutes; much shorter and an accelerated run's normal event-loop pauses trip it)
WATCHDOG_TIMEOUT_S = 120.0
# batteries wait longer, as a site should commission them: the generators ramp to their
# fallback shares of the cap before storage stops absorbing (found by the HIL: with equal
# timeouts, a battery that stops charging at once puts export over the cap while a wind
# farm is still ramping down)
BATTERY_WATCHDOG_TIMEOUT_S = WATCHDOG_TIMEOUT_S + 15.0


@dataclass
class RunStats:
    """What the PCC meter and the devices saw over a run."""

    sim_s: float = 0.0
    max_export_w: float = -math.inf
    cap_violation_s: float = 0.0
    uncontrolled_max_export_w: float = -math.inf
    export_wh: float = 0.0  # meter, energy exported
    import_wh: float = 0.0  # meter, energy imported
    pv_wh: float = 0.0
    wind_wh: float = 0.0
    renewable_available_wh: float = 0.0
    curtailed_wh: float = 0.0
    load_wh: float = 0.0  # energy consumed by loads, flexible ones included (positive)
    flexible_load_wh: float = 0.0  # of which by flexible loads
    battery_charge_wh: float = 0.0
    battery_discharge_wh: float = 0.0
    battery_loss_wh: float = 0.0
    line_loss_wh: float = 0.0  # lost in the county's lines before the meter
    battery_stored_start_wh: float = 0.0
    battery_stored_end_wh: float = 0.0
    violations: list[tuple[float, float]] = field(default_factory=list)
    """Each plant step over the cap (beyond the tolerance): (t_s at its start, dt_s)."""
    minutes: list[tuple[float, float, float, float]] = field(default_factory=list)
    """Per simulated minute: (t_s, max export [W], uncontrolled export [W], cap [W])."""
    trace: list[dict[str, float]] = field(default_factory=list)
    """Per simulated minute, at its end ``t_s``: the minute's ``max_export_w`` and
    ``uncontrolled_w``, the ``cap_w``, and per device ``<id>.power_w``, per generator
    ``<id>.available_w``, per battery ``<id>.soc``."""

    @property
    def renewable_wh(self) -> float:
        return self.pv_wh + self.wind_wh

    @property
    def battery_throughput_wh(self) -> float:
        return self.battery_charge_wh + self.battery_discharge_wh

    def as_report(self) -> dict[str, float]:
        """The meter's books as report keys (SI units)."""
        return {
            "sim_hours": self.sim_s / 3600.0,
            "violation_tolerance_ratio": VIOLATION_TOLERANCE_RATIO,
            "max_export_w": self.max_export_w,
            "cap_violation_s": self.cap_violation_s,
            "uncontrolled_max_export_w": self.uncontrolled_max_export_w,
            "curtailed_energy_wh": self.curtailed_wh,
            "renewable_energy_wh": self.renewable_wh,
            "renewable_available_wh": self.renewable_available_wh,
            "load_energy_wh": self.load_wh,
            "flexible_load_energy_wh": self.flexible_load_wh,
            "export_energy_wh": self.export_wh,
            "import_energy_wh": self.import_wh,
            "battery_throughput_wh": self.battery_throughput_wh,
            "battery_loss_wh": self.battery_loss_wh,
            "line_loss_wh": self.line_loss_wh,
            "energy_balance_error_ratio": self.energy_balance_error_ratio(),
        }

    def energy_balance_error_ratio(self) -> float:
        """Energy conservation over the run, from independent counters.

        Net export by the meter must equal renewable energy delivered, less load, less the
        battery's stored-energy gain and its conversion losses. The ratio divides the
        mismatch by the gross energy that flowed. Line losses before the meter come off too.
        """
        stored_gain = self.battery_stored_end_wh - self.battery_stored_start_wh
        lhs = self.export_wh - self.import_wh
        rhs = (self.renewable_wh - self.load_wh - stored_gain - self.battery_loss_wh
               - self.line_loss_wh)
        gross = self.renewable_wh + self.load_wh + self.battery_throughput_wh
        return abs(lhs - rhs) / gross if gross > 0 else 0.0


class Plant:
    """Every simulated device of a plant, stepped together."""

    def __init__(self, spec: PlantSpec, *, seed: int, start_s: float, step_s: float = 1.0,
                 history_days: int = 0) -> None:
        self.spec = spec
        self.step_s = step_s
        first_day = (start_s - history_days * 86400.0) // 86400.0 * 86400.0
        self.weather = Weather(spec, seed=seed, first_day_s=first_day)
        self.t_s = start_s
        self.export_cap_w = spec.export_cap_w
        self._loss_per_w2 = spec.line_loss_ratio / spec.export_cap_w  # [1/W]
        self._sampled = (("pv_available_w", [p.id for p in spec.pv]),
                         ("wind_available_w", [w.id for w in spec.wind]),
                         ("load_w", [ld.id for ld in spec.loads]))
        self._cap_changes: list[tuple[float, float]] = []  # (from t_s, cap [W]), in order
        self.tripped: set[str] = set()  # batteries tripped (fault injection)
        # batteries' own protection: (t_s, battery, "trip" | "reset") on over-temperature
        self.bms_events: list[tuple[float, str, str]] = []
        self._generators = [(g.id, "pv") for g in spec.pv] + [(g.id, "wind") for g in spec.wind]
        self.rated_w = {g.id: g.rated_power_w for g in spec.pv} | {
            g.id: g.rated_power_w for g in spec.wind}
        self.limit_w = dict(self.rated_w)
        self._following_w = dict(self.rated_w)  # the limit as the plant has ramped to it
        self._ramp_w_s = {p.id: p.ramp_ratio_per_s * p.rated_power_w for p in spec.pv} | {
            w.id: w.ramp_ratio_per_s * w.rated_power_w for w in spec.wind}
        self.fallback_limit_w = dict(self.limit_w)
        self.watchdog: dict[str, int] = {}
        self._heard_s: dict[str, float] = {}  # armed devices: last heartbeat [s]
        self.fallbacks: dict[str, float] = {}  # device -> time it fell back [s]
        self.limit_enabled = dict.fromkeys(self.limit_w, False)
        # a limit or setpoint that lapses (SunSpec reversion timers)
        self._revert_at_s: dict[str, float] = {}
        self.battery_setpoint_w = {b.id: 0.0 for b in spec.batteries}
        self.setpoint_enabled = dict.fromkeys(self.battery_setpoint_w, False)
        # what a lapsed limit or setpoint becomes (SunSpec 704 reversion values); None: a
        # limit lifts, a setpoint is disabled (the battery idles)
        self.revert_to_w: dict[str, float | None] = dict.fromkeys(
            [*self.limit_w, *self.battery_setpoint_w])
        self.reverts: dict[str, float] = {}  # device -> time its limit or setpoint lapsed [s]
        self.battery = {b.id: BatteryState(soc=b.initial_soc, temperature_c=b.ambient_c)
                        for b in spec.batteries}
        self._tz = ZoneInfo(spec.timezone)
        day, hour = self._local(start_s)
        # flexible loads: the controller's request [W drawn] (None: their own timers), and
        # a twin of each left to its timer for the uncontrolled export; before the start
        # each ran on its own timer
        self.flex_demand_w: dict[str, float | None] = dict.fromkeys(f.id for f in spec.flex_loads)

        def before(f: FlexLoadSpec) -> FlexLoadState:
            ran_h = max(0.0, min(hour, f.deadline_h) - f.default_start_h)
            served = min(f.daily_energy_wh, f.max_w * ran_h)
            return FlexLoadState(day=day, served_wh=served, mode=FlexMode.DONE if (
                served >= f.daily_energy_wh) else FlexMode.OWN_TIMER)

        self.flex = {f.id: before(f) for f in spec.flex_loads}
        self._flex_alone = {f.id: before(f) for f in spec.flex_loads}
        self.power_w: dict[str, float] = {d.id: 0.0 for d in spec.devices()}
        self.available_w: dict[str, float] = {}
        self.energy_wh: dict[str, float] = {d.id: 0.0 for d in spec.devices()}
        self.export_w = 0.0
        self.stats = RunStats()
        self.stats.battery_stored_start_wh = self._stored_wh()
        self._battery_at_open = (0.0, 0.0, 0.0)
        self._minute_start = math.floor(start_s / 60.0) * 60.0
        self._minute_max = -math.inf
        self._minute_unctl = -math.inf
        self._sample(start_s)

    def _local(self, t_s: float) -> tuple[int, float]:
        """The local day (ordinal) and hour of day at ``t_s``."""
        lt = datetime.fromtimestamp(t_s, self._tz)
        return lt.toordinal(), lt.hour + lt.minute / 60.0 + (lt.second + lt.microsecond
                                                               * 1e-6) / 3600.0

    def _stored_wh(self) -> float:
        return sum(self.battery[b.id].soc * b.capacity_wh for b in self.spec.batteries)

    def _sample(self, t_s: float) -> None:
        """Every device's available power (loads: demand) at ``t_s``, interpolated between
        the weather's minutes: one day lookup per step, not one per device."""
        w = self.weather
        m = (t_s - w.first_day_s) / 60.0
        m0 = math.floor(m)
        frac = m - m0
        day0 = w.day_for(w.first_day_s + m0 * 60.0)
        day1 = day0 if frac == 0.0 else w.day_for(w.first_day_s + (m0 + 1) * 60.0)
        i0, i1 = m0 % MINUTES_PER_DAY, (m0 + 1) % MINUTES_PER_DAY
        for table, ids in self._sampled:
            a0, a1 = getattr(day0, table), getattr(day1, table)
            for asset_id in ids:
                v0 = float(a0[asset_id][i0])
                self.available_w[asset_id] = v0 if frac == 0.0 else \
                    v0 + (float(a1[asset_id][i1]) - v0) * frac

    def set_limit(self, asset_id: str, limit_w: float | None, *, revert_s: float = 0.0) -> None:
        """A generator's limit (None: no limit), lapsing after ``revert_s`` if that is > 0
        to ``revert_to_w[asset_id]`` (None: no limit)."""
        rated = self.rated_w[asset_id]
        self.limit_enabled[asset_id] = limit_w is not None
        self.limit_w[asset_id] = rated if limit_w is None else max(0.0, limit_w)
        self._arm_revert(asset_id, limit_w is not None, revert_s)

    def set_battery_setpoint(self, battery_id: str, setpoint_w: float | None, *,
                             revert_s: float = 0.0) -> None:
        """A battery's power setpoint [W, + discharge] (None: disabled, it idles), lapsing
        after ``revert_s`` if that is > 0 to ``revert_to_w[battery_id]`` (None: disabled)."""
        self.setpoint_enabled[battery_id] = setpoint_w is not None
        self.battery_setpoint_w[battery_id] = 0.0 if setpoint_w is None else setpoint_w
        self._arm_revert(battery_id, setpoint_w is not None, revert_s)

    def _arm_revert(self, asset_id: str, armed: bool, revert_s: float) -> None:
        if armed and revert_s > 0:
            self._revert_at_s[asset_id] = self.t_s + revert_s
        else:
            self._revert_at_s.pop(asset_id, None)

    def open_books(self) -> None:
        """Start the run's statistics afresh from now (after a warm-up); the batteries'
        counters and stored energy are taken as they are at this instant."""
        self.stats = RunStats()
        self.stats.battery_stored_start_wh = self._stored_wh()
        self._battery_at_open = (  # the devices' own counters run on; the books subtract
            sum(b.charged_wh for b in self.battery.values()),
            sum(b.discharged_wh for b in self.battery.values()),
            sum(b.loss_wh for b in self.battery.values()))
        self._minute_start = self.t_s
        self._minute_max = self._minute_unctl = -math.inf

    def watchdog_timeout_s(self, asset_id: str) -> float:
        """Silence after which a device falls back [s]."""
        return BATTERY_WATCHDOG_TIMEOUT_S if asset_id in self.battery else WATCHDOG_TIMEOUT_S

    def schedule_cap(self, at_s: float, cap_w: float) -> None:
        """From simulated time ``at_s`` on, the meter judges export against ``cap_w``."""
        self._cap_changes.append((at_s, cap_w))
        self._cap_changes.sort()

    def trip(self, battery_id: str, tripped: bool = True) -> None:
        """Trip a battery (it stops and ignores setpoints) or reset it."""
        if battery_id not in self.battery:
            raise KeyError(f"{battery_id!r} is not a simulated battery")
        if tripped:
            self.tripped.add(battery_id)
        else:
            self.tripped.discard(battery_id)

    def fail_cooling(self, battery_id: str, failed: bool = True) -> None:
        """Fail a battery's cooling (it heats under load until its BMS trips it) or mend it."""
        if battery_id not in self.battery:
            raise KeyError(f"{battery_id!r} is not a simulated battery")
        self.battery[battery_id].cooling_ok = not failed

    def _watch(self) -> None:
        """Devices whose controller went silent fall back to their own safe settings."""
        for asset_id, at in list(self._revert_at_s.items()):
            if self.t_s > at:
                self.reverts[asset_id] = self.t_s
                if asset_id in self.battery:
                    self.set_battery_setpoint(asset_id, self.revert_to_w[asset_id])
                else:
                    self.set_limit(asset_id, self.revert_to_w[asset_id])
        for asset_id, heard in list(self._heard_s.items()):
            if self.t_s - heard <= self.watchdog_timeout_s(asset_id):
                continue
            del self._heard_s[asset_id]  # disarmed until the next heartbeat
            self.fallbacks[asset_id] = self.t_s
            if asset_id in self.battery_setpoint_w:
                self.battery_setpoint_w[asset_id] = 0.0
            if asset_id in self.flex_demand_w:
                self.flex_demand_w[asset_id] = None  # back to its own timer
            if asset_id in self.limit_w:
                self.limit_w[asset_id] = self.fallback_limit_w[asset_id]

    def _step(self, dt_s: float) -> None:
        if self._heard_s or self._revert_at_s:
            self._watch()
        while self._cap_changes and self._cap_changes[0][0] <= self.t_s:
            self.export_cap_w = self._cap_changes.pop(0)[1]
        self._sample(self.t_s + dt_s / 2.0)
        h = dt_s / 3600.0
        st = self.stats
        export = 0.0
        uncontrolled = 0.0
        for gid, kind in self._generators:
            avail = self.available_w[gid]
            # the plant follows its limit at its ramp rate, from what it gives now; clouds
            # and gusts change the available power at once
            lim, eff, ramp = self.limit_w[gid], self._following_w[gid], self._ramp_w_s[gid]
            if lim < eff:
                eff = max(lim, min(eff, max(self.power_w[gid], lim)) - ramp * dt_s)
            else:
                eff = min(lim, eff + ramp * dt_s)
            self._following_w[gid] = eff
            out = min(avail, eff)
            self.power_w[gid] = out
            self.energy_wh[gid] += out * h
            if kind == "pv":
                st.pv_wh += out * h
            else:
                st.wind_wh += out * h
            st.renewable_available_wh += avail * h
            st.curtailed_wh += (avail - out) * h
            export += out
            uncontrolled += avail
        for b in self.spec.batteries:
            setpoint = self.battery_setpoint_w[b.id]
            bs = self.battery[b.id]
            if b.id in self.tripped:  # the breaker is open: nothing flows, at once
                setpoint = bs.power_w = 0.0
            hot = bs.over_temperature
            out = battery_step(bs, setpoint, dt_s, b)
            if bs.over_temperature != hot:
                self.bms_events.append((self.t_s + dt_s, b.id, "trip" if not hot else "reset"))
            self.power_w[b.id] = out
            export += out
        for ld in self.spec.loads:
            demand = self.available_w[ld.id]
            self.power_w[ld.id] = -demand
            self.energy_wh[ld.id] += demand * h
            st.load_wh += demand * h
            export -= demand
            uncontrolled -= demand
        if self.spec.flex_loads:
            day, hour = self._local(self.t_s)
            for fl in self.spec.flex_loads:
                demand = flex_load_step(self.flex[fl.id], self.flex_demand_w[fl.id],
                                        local_day=day, local_hour=hour, dt_s=dt_s, spec=fl)
                alone = flex_load_step(self._flex_alone[fl.id], None, local_day=day,
                                       local_hour=hour, dt_s=dt_s, spec=fl)
                self.power_w[fl.id] = -demand
                self.energy_wh[fl.id] += demand * h
                st.load_wh += demand * h
                st.flexible_load_wh += demand * h
                export -= demand
                uncontrolled -= alone
        if self._loss_per_w2:  # the lines lose with the square of the flow
            loss = self._loss_per_w2 * export * export
            export -= loss
            st.line_loss_wh += loss * h
            uncontrolled -= self._loss_per_w2 * uncontrolled * uncontrolled
        self.export_w = export
        self.power_w[self.spec.meter.id] = export
        if export >= 0:
            st.export_wh += export * h
        else:
            st.import_wh += -export * h
        st.sim_s += dt_s
        st.max_export_w = max(st.max_export_w, export)
        st.uncontrolled_max_export_w = max(st.uncontrolled_max_export_w, uncontrolled)
        if export > self.export_cap_w * (1.0 + VIOLATION_TOLERANCE_RATIO):
            st.cap_violation_s += dt_s
            st.violations.append((self.t_s, dt_s))
        self.t_s += dt_s
        if self.t_s - self._minute_start >= 60.0:
            st.minutes.append((self._minute_start, self._minute_max, self._minute_unctl,
                               self.export_cap_w))
            st.trace.append(self._snapshot(self._minute_start + 60.0))
            self._minute_start += 60.0
            self._minute_max = self._minute_unctl = -math.inf
        self._minute_max = max(self._minute_max, export)
        self._minute_unctl = max(self._minute_unctl, uncontrolled)

    def _snapshot(self, t_s: float) -> dict[str, float]:
        row = {"t_s": t_s, "max_export_w": self._minute_max,
               "uncontrolled_w": self._minute_unctl, "cap_w": self.export_cap_w}
        for d in self.spec.devices():
            row[f"{d.id}.power_w"] = self.power_w[d.id]
        for gid, _ in self._generators:
            row[f"{gid}.available_w"] = self.available_w[gid]
        for bid, bs in self.battery.items():
            row[f"{bid}.soc"] = bs.soc
        return row

    def advance_to(self, t_s: float) -> None:
        """Step the plant up to simulated time ``t_s`` [s]."""
        while t_s - self.t_s >= self.step_s:
            self._step(self.step_s)
        rest = t_s - self.t_s
        if rest > 1e-6:
            self._step(rest)

    def finish(self) -> RunStats:
        """Close the run's statistics: the batteries' counters and stored energy at the end."""
        st = self.stats
        c0, d0, l0 = self._battery_at_open
        st.battery_charge_wh = sum(b.charged_wh for b in self.battery.values()) - c0
        st.battery_discharge_wh = sum(b.discharged_wh for b in self.battery.values()) - d0
        st.battery_loss_wh = sum(b.loss_wh for b in self.battery.values()) - l0
        st.battery_stored_end_wh = self._stored_wh()
        return st

    # -- the devices' view, as their registers show it -------------------------------------

    def device_values(self, asset_id: str) -> dict[str, float]:
        """Engineering values of a device's points, in the house's units and signs."""
        sp = self.spec
        p = self.power_w[asset_id]
        for pv in sp.pv:
            if pv.id == asset_id:
                lim = self.limit_w[asset_id]
                return {"active_power_w": p, "available_power_w": self.available_w[asset_id],
                        "energy_export_wh": self.energy_wh[asset_id],
                        "status": 2.0 if self.available_w[asset_id] > lim else 1.0,
                        "rated_power_w": pv.rated_power_w, "active_power_limit_w": lim,
                        "fallback_limit_w": self.fallback_limit_w[asset_id],
                        "watchdog": float(self.watchdog.get(asset_id, 0))}
        for wf in sp.wind:
            if wf.id == asset_id:
                lim = self.limit_w[asset_id]
                day = self.weather.day_for(self.t_s)
                minute = int((self.t_s - day.t0_s) // 60) % MINUTES_PER_DAY
                return {"active_power_w": p, "available_power_w": self.available_w[asset_id],
                        "wind_speed_m_s": float(day.wind_speed_m_s[minute]),
                        "energy_export_wh": self.energy_wh[asset_id],
                        "status": 2.0 if self.available_w[asset_id] > lim else 1.0,
                        "rated_power_w": wf.rated_power_w, "active_power_limit_w": lim,
                        "fallback_limit_w": self.fallback_limit_w[asset_id],
                        "watchdog": float(self.watchdog.get(asset_id, 0))}
        for b in sp.batteries:
            if b.id == asset_id:
                bs = self.battery[asset_id]
                return {"active_power_w": p, "soc": bs.soc, "energy_charge_wh": bs.charged_wh,
                        "energy_discharge_wh": bs.discharged_wh,
                        "status": 3.0 if asset_id in self.tripped or bs.over_temperature else (
                            0.0 if p == 0 else (2.0 if p > 0 else 1.0)),
                        "capacity_wh": b.capacity_wh, "max_charge_w": b.max_charge_w,
                        "max_discharge_w": b.max_discharge_w,
                        "power_setpoint_w": self.battery_setpoint_w[asset_id],
                        "temperature_c": bs.temperature_c,
                        "watchdog": float(self.watchdog.get(asset_id, 0))}
        for ld in sp.loads:
            if ld.id == asset_id:
                return {"active_power_w": p, "energy_import_wh": self.energy_wh[asset_id]}
        for fl in sp.flex_loads:
            if fl.id == asset_id:
                fs = self.flex[asset_id]
                demand = self.flex_demand_w[asset_id]
                return {"active_power_w": p, "energy_import_wh": self.energy_wh[asset_id],
                        "served_today_wh": fs.served_wh,
                        "energy_due_wh": max(0.0, fl.daily_energy_wh - fs.served_wh),
                        "status": float(fs.mode), "max_power_w": fl.max_w,
                        "min_power_w": fl.min_w, "daily_energy_wh": fl.daily_energy_wh,
                        "deadline_h": fl.deadline_h,
                        "power_setpoint_w": 0.0 if demand is None else -demand,
                        "watchdog": float(self.watchdog.get(asset_id, 0))}
        if sp.meter.id == asset_id:
            return {"export_w": self.export_w, "energy_export_wh": self.stats.export_wh,
                    "energy_import_wh": self.stats.import_wh, "frequency_hz": 50.0}
        raise KeyError(f"no simulated device {asset_id!r}")

    def apply_setpoint(self, asset_id: str, point: str, value: float) -> None:
        """A setpoint written to a device, effective from the plant's current time."""
        if point == "watchdog":
            self.watchdog[asset_id] = int(value)
            self._heard_s[asset_id] = self.t_s  # armed, or re-armed
        elif point == "fallback_limit_w" and asset_id in self.fallback_limit_w:
            self.fallback_limit_w[asset_id] = max(0.0, value)
        elif point == "active_power_limit_w" and asset_id in self.limit_w:
            self.limit_w[asset_id] = max(0.0, value)
        elif point == "power_setpoint_w" and asset_id in self.battery_setpoint_w:
            self.battery_setpoint_w[asset_id] = value
        elif point == "power_setpoint_w" and asset_id in self.flex_demand_w:
            self.flex_demand_w[asset_id] = max(0.0, -value)  # generator convention: <= 0
        else:
            raise KeyError(f"{asset_id} has no writable point {point!r}")
