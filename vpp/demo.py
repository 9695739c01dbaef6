"""``vpp demo``: a simulated county and the real controller in one process, on one clock.

The simulated plant serves its devices on Modbus TCP on loopback; the controller reads and
writes them exactly as it would real hardware. An embedded MQTT broker, SQLite storage and
the HTTP API (with ``/metrics``) run alongside. The run report is measured on the
simulator's side (its PCC meter), not from the controller's belief.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drivers.poller import cancel_and_wait
from sim import SimClock, SimulatedPlant
from sim.clock import SteppedClock
from sim.plant import RunStats
from sim.spec import PlantSpec
from vpp.broker import port_is_free
from vpp.config import SiteConfig
from vpp.service import Services
from vpp.simbridge import plant_spec

log = logging.getLogger(__name__)

MAX_CONTROL_STEPS_PER_WALL_S = 100.0  # what one core sustains with Modbus on loopback
START_PLANNED_WALL_S = 180.0  # [wall s] the first plan must come within this (start_planned)


def auto_control_interval_s(config: SiteConfig, speed: float) -> float:
    """The control interval [simulated s] the demo can keep at this speed.

    Each step polls every device and writes setpoints over Modbus TCP (a few ms of CPU);
    at high speed the interval grows so that the loop keeps up, and the report says so.
    """
    return max(config.control.interval_s, round(speed / MAX_CONTROL_STEPS_PER_WALL_S, 1))


@dataclass
class DemoOptions:
    hours: float | None = None  # None: until stopped
    speed: float = 60.0
    seed: int | None = None
    control_interval_s: float | None = None
    ephemeral_ports: bool = False  # tests: let the OS choose every port
    data_dir: Path | None = None
    adjust_spec: Callable[[PlantSpec], PlantSpec] | None = None  # a scenario's changes
    perfect_foresight: bool = False  # comparison runs: the planner sees the actual weather
    stepped_clock: bool = False  # fault runs: the controller's clock can be stepped
    # simulated time starts once the controller has its first plan, not when the run is
    # entered (held until then, at most START_PLANNED_WALL_S): its first forecasts take
    # seconds of wall time, which at ×600 are an hour of plant left to the reactive loop
    start_planned: bool = False


class Demo:
    """Owns a demo run (simulated plant + services); use as an async context manager."""

    def __init__(self, config: SiteConfig, options: DemoOptions) -> None:
        self.options = options
        start = (datetime.fromisoformat(config.sim.start) if config.sim.start
                 else datetime.now(UTC).replace(microsecond=0))
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.clock = SimClock(start=start, speed=options.speed)
        self.start = self.clock.start
        self.seed = options.seed if options.seed is not None else config.sim.seed
        busy = [a.id for a in config.assets if a.port and not port_is_free(a.host, a.port)]
        if busy and not options.ephemeral_ports:
            log.warning("Modbus ports of %s are in use; the simulator takes free ports", busy)
        if busy or options.ephemeral_ports:
            config = config.model_copy(update={"assets": tuple(
                a.model_copy(update={"port": 0}) for a in config.assets)})
        spec = plant_spec(config)
        if options.adjust_spec is not None:
            spec = options.adjust_spec(spec)
        # the simulator publishes the site's weather forecast and the controller reads it
        weather_dir = tempfile.mkdtemp(prefix="vpp-weather-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, weather_dir, ignore_errors=True)
        weather_file = Path(config.forecasting.weather_file or
                            Path(weather_dir) / "weather-forecast.csv")
        config = config.model_copy(update={"forecasting": config.forecasting.model_copy(
            update={"weather_file": str(weather_file)})})
        self.sim = SimulatedPlant(spec, clock=self.clock, seed=self.seed,
                                  history_days=config.sim.history_days,
                                  forecast_file=weather_file)
        self.config = config
        self._weather_issues = self.weather_issues()
        # that took a second of wall time: the run starts at the same simulated start,
        # held until it is entered
        self.clock = SimClock(start=start, speed=options.speed)
        self.clock.hold()
        self.sim.clock = self.clock
        self.control_interval_s = options.control_interval_s or auto_control_interval_s(
            config, options.speed)
        self.services: Services | None = None
        self.modbus_urls: dict[str, str] = {}
        self._stop = asyncio.Event()
        self.wall_start = 0.0
        self.wall_end = 0.0
        self._final: RunStats | None = None
        self._pacer: asyncio.Task[None] | None = None

    def history_frame(self) -> pd.DataFrame:
        """The plant's past days as interval means, as its historian would give them."""
        cfg = self.config
        t0 = self.start.timestamp()
        frame = self.sim.plant.weather.frame(t0 - cfg.sim.history_days * 86400.0, t0)
        step = f"{cfg.forecasting.step_s}s"
        out = pd.DataFrame(index=frame.resample(step).mean().index)
        for a in cfg.assets:
            if a.kind in ("pv", "wind"):
                out[a.id] = frame[a.id].resample(step).mean()
        loads = [a.id for a in cfg.base_loads()]  # flexible loads are planned, not forecast
        if loads:
            out["load"] = -frame[loads].sum(axis=1).resample(step).mean()
        return out

    def actuals(self, start: datetime, steps: int) -> dict[str, np.ndarray]:
        """What the plant's weather and base loads will do over a plan's steps (step means,
        W; ``load`` positive): the perfect forecast, for comparison runs."""
        step_s = self.config.dispatch.step_s
        t0 = start.timestamp()
        frame = self.sim.plant.weather.frame(t0, t0 + steps * step_s)
        means = frame.resample(f"{step_s}s", origin=pd.Timestamp(t0, unit="s", tz="UTC")).mean()
        means = means.reindex(pd.date_range(pd.Timestamp(t0, unit="s", tz="UTC"),
                                            periods=steps, freq=f"{step_s}s")).ffill().fillna(0.0)
        out = {a.id: means[a.id].to_numpy(dtype=float)
               for a in self.config.assets if a.kind in ("pv", "wind")}
        loads = [a.id for a in self.config.base_loads()]
        out["load"] = (-means[loads].sum(axis=1).to_numpy(dtype=float) if loads
                       else np.zeros(steps))
        return out

    def weather_issues(self) -> list[pd.DataFrame]:
        """The weather forecasts issued over the past days, as the site's archive has them."""
        every = self.sim.forecaster.nwp.issue_every_h * 3600.0
        t0 = self.start.timestamp()
        first = (t0 - self.config.sim.history_days * 86400.0) // every * every
        return [self.sim.forecaster.issue(t) for t in np.arange(first, t0 + 1, every)]

    async def __aenter__(self) -> Demo:
        # plant and controller share this event loop: its stalls hold simulated time
        self._pacer = asyncio.create_task(self.clock.pace(), name="sim.clock.pace")
        if not self.options.start_planned:
            self.clock.release()
        try:
            await self.sim.__aenter__()
        except BaseException:
            await self._stop_pacer()
            raise
        ports = {a.id: self.sim.endpoint_of(a.id) for a in self.config.assets}
        self.config = self.config.model_copy(update={"assets": tuple(
            a.model_copy(update={"host": ports[a.id][0], "port": ports[a.id][1]})
            for a in self.config.assets)})
        self.modbus_urls = {a: f"modbus://{h}:{p}" for a, (h, p) in ports.items()}
        self.controller_clock: Any = (SteppedClock(self.clock) if self.options.stepped_clock
                                      else self.clock)
        self.services = Services(self.config, clock=self.controller_clock,
                                 control_interval_s=self.control_interval_s,
                                 ephemeral_ports=self.options.ephemeral_ports,
                                 move_taken_ports=True,
                                 data_dir=self.options.data_dir, history=self.history_frame(),
                                 weather_issues=self._weather_issues,
                                 oracle=self.actuals if self.options.perfect_foresight else None)
        try:
            await self.services.__aenter__()
        except BaseException:
            self.services = None
            await self.sim.__aexit__(None, None, None)
            await self._stop_pacer()
            raise
        if self.options.start_planned:
            try:
                await self._first_plan()
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
            self.clock.release()
        self.wall_start = time.monotonic()
        return self

    async def _first_plan(self) -> None:
        """Wait, simulated time held, until the controller has put a plan in force."""
        assert self.services is not None
        ctrl = self.services.controller
        assert ctrl is not None
        deadline = time.monotonic() + START_PLANNED_WALL_S
        while ctrl.state.schedule is None:
            self.services.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the controller put no plan in force within "
                                   f"{START_PLANNED_WALL_S:g} s wall of its start")
            await asyncio.sleep(0.05)

    @property
    def controller(self) -> Any:
        return self.services.controller if self.services else None

    def stop(self) -> None:
        self._stop.set()

    async def wait(self, *, on_tick: Callable[[], None] | None = None,
                   tick_wall_s: float = 0.25) -> None:
        """Run until ``hours`` of simulated time have passed, or until stopped."""
        hours = self.options.hours
        while not self._stop.is_set():
            if hours is not None and self.clock.elapsed_s() >= hours * 3600.0:
                break
            if self.services is not None:
                self.services.check()
            if on_tick is not None:
                on_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick_wall_s)
        self._stop.set()

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        self.wall_end = time.monotonic()
        # the run's books close now: what the plant does while the parts shut down after
        # it is not part of the controlled run
        self.sim.plant.advance_to(self.clock.time())
        self._final = copy.deepcopy(self.sim.plant.finish())
        if self.services is not None:
            await self.services.__aexit__(None, None, None)
        await self.sim.__aexit__(None, None, None)
        await self._stop_pacer()
        self._cleanup()

    async def _stop_pacer(self) -> None:
        if self._pacer is not None:
            await cancel_and_wait([self._pacer])
            self._pacer = None

    @property
    def stats(self) -> RunStats:
        """The meter's books: final once the run is over."""
        return self._final or self.sim.plant.finish()

    def report(self) -> dict[str, Any]:
        """The run report: the simulated meter's view of the run."""
        st = self.stats
        ctrl = self.controller
        mqtt = self.services.mqtt if self.services else None
        return {
            "site": self.config.site.id,
            "start": self.start.isoformat(),
            "end": (self.start + timedelta(seconds=st.sim_s)).isoformat(),
            "seed": self.seed,
            "speed": self.options.speed,
            "wall_seconds": (self.wall_end or time.monotonic()) - self.wall_start,
            "control_interval_s": self.control_interval_s,
            # wall seconds the event loop was stalled, simulated time held for it
            "clock_stalled_wall_s": self.clock.stalled_wall_s,
            "longest_clock_stall_wall_s": self.clock.longest_stall_wall_s,
            "export_cap_w": self.config.pcc.export_cap_w,
            **st.as_report(),
            "control_steps": ctrl.state.control_steps if ctrl else 0,
            "steps_without_plan": ctrl.state.fallback_steps if ctrl else 0,
            "mqtt_messages_sent": mqtt.sent if mqtt else 0,
        }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
