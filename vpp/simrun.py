"""``vpp sim run``: a scenario played against the real controller, with a report and plots.

The plant is the site configuration's, served over Modbus TCP by the simulator; the
scenario sets its start, seed, weather, load level, the grid company's cap instructions
(told to the controller ``notice_s`` ahead, judged by the simulator's meter from their
effective time) and its faults. The report is the demo report's keys, measured on the
simulator's side, plus the scenario and what was injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sim.inject import Event, FaultInjector
from sim.scenario import REGIME_INDEX, Scenario
from sim.spec import PlantSpec, WeatherPeriod, WeatherSpec
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions

log = logging.getLogger(__name__)

FAULT_GRACE_S = 60.0  # cap violations this soon after a fault begins or ends are its own
PLANNERS = ("optimal", "perfect", "reactive")  # what a scenario can be played with


def with_planner(config: SiteConfig, planner: str) -> SiteConfig:
    """The configuration for a comparison run: ``perfect`` is the optimal planner (shown
    the actuals by :class:`ScenarioRun`), ``reactive`` has no plan."""
    d = config.dispatch.model_copy(update={
        "planner": "reactive" if planner == "reactive" else "optimal"})
    return config.model_copy(update={"dispatch": d})


def scenario_config(config: SiteConfig, scenario: Scenario) -> SiteConfig:
    """The site configuration with the scenario's start (less the warm-up), seed and
    weather in its [sim]."""
    sim = config.sim.model_copy(update={
        "start": (scenario.start - timedelta(seconds=scenario.warmup_s)).isoformat(),
        "seed": scenario.seed,
        "cloudiness": scenario.weather.cloudiness,
        "mean_wind_m_s": scenario.weather.mean_wind_m_s})
    return config.model_copy(update={"sim": sim})


def scenario_spec(scenario: Scenario) -> Callable[[PlantSpec], PlantSpec]:
    """What the scenario changes in the plant: weather periods and the load level."""
    periods = tuple(WeatherPeriod(
        start_s=scenario.at(p.from_h).timestamp(),
        regime=None if p.regime is None else REGIME_INDEX[p.regime],
        mean_wind_m_s=p.mean_wind_m_s) for p in scenario.weather.periods)

    def adjust(spec: PlantSpec) -> PlantSpec:
        weather: WeatherSpec = dataclasses.replace(spec.weather, periods=periods)
        loads = tuple(dataclasses.replace(ld, peak_w=ld.peak_w * scenario.load_scale)
                      for ld in spec.loads)
        return dataclasses.replace(spec, weather=weather, loads=loads)

    return adjust


class ForecastRecorder:
    """Keeps every forecast vintage the controller issues (for the plots)."""

    def __init__(self) -> None:
        self.vintages: dict[str, list[Any]] = {}
        self._seen: dict[str, Any] = {}

    def poll(self, forecasts: dict[str, Any]) -> None:
        for name, fc in forecasts.items():
            if self._seen.get(name) is not fc:
                self._seen[name] = fc
                self.vintages.setdefault(name, []).append(fc)


class ScenarioRun:
    """A scenario against the controller; use as an async context manager, then ``wait``."""

    def __init__(self, scenario: Scenario, config: SiteConfig, *, speed: float | None = None,
                 ephemeral_ports: bool = False, data_dir: Path | None = None,
                 control_interval_s: float | None = None,
                 perfect_foresight: bool = False) -> None:
        self.scenario = scenario
        self.planner = "perfect" if perfect_foresight else config.dispatch.planner
        self.demo = Demo(scenario_config(config, scenario), DemoOptions(
            hours=scenario.duration_h + scenario.warmup_s / 3600.0,
            speed=speed or scenario.speed, seed=scenario.seed,
            ephemeral_ports=ephemeral_ports, data_dir=data_dir,
            control_interval_s=control_interval_s, adjust_spec=scenario_spec(scenario),
            perfect_foresight=perfect_foresight,
            # the warm-up starts with the controller's first plan: how long the machine
            # takes to fit the first forecasts is no part of the scenario
            start_planned=True))
        self.injector = FaultInjector(self.demo.sim, scenario)
        self.forecasts = ForecastRecorder()
        self._tasks: list[asyncio.Task[None]] = []

    async def _open_books(self) -> None:
        """At the scenario's start (the controller in control since the warm-up), the
        meter's books open."""
        await self.demo.clock.sleep_until(self.scenario.start)
        plant = self.demo.sim.plant
        plant.advance_to(self.scenario.start.timestamp())
        plant.open_books()

    async def _instruct(self) -> None:
        """Tell the controller each cap change ``notice_s`` before it takes effect (perfect
        foresight too: it sees the weather and load ahead, the grid's orders as given)."""
        clock = self.demo.clock
        for change in self.scenario.cap:
            effective = self.scenario.at(change.at_h)
            await clock.sleep_until(effective - timedelta(seconds=change.notice_s))
            ctrl = self.demo.controller
            if ctrl is not None:
                ctrl.instruct_cap(effective, change.export_cap_w)

    async def __aenter__(self) -> ScenarioRun:
        await self.demo.__aenter__()
        try:
            await self.injector.__aenter__()
        except BaseException:
            await self.demo.__aexit__(None, None, None)
            raise
        self._tasks.append(asyncio.create_task(self._instruct(), name="sim.cap_instructions"))
        self._tasks.append(asyncio.create_task(self._open_books(), name="sim.open_books"))
        return self

    async def wait(self, on_tick: Callable[[], None] | None = None) -> None:
        def tick() -> None:
            ctrl = self.demo.controller
            if ctrl is not None:
                self.forecasts.poll(ctrl.state.forecasts)
            if on_tick is not None:
                on_tick()
        await self.demo.wait(on_tick=tick)

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        try:
            await self.injector.__aexit__(None, None, None)
        finally:
            await self.demo.__aexit__(None, None, None)

    @property
    def progress(self) -> float:
        """Share of the run done (warm-up included), 0..1."""
        total_s = self.scenario.duration_h * 3600.0 + self.scenario.warmup_s
        return min(1.0, self.demo.clock.elapsed_s() / total_s)

    def report(self) -> dict[str, Any]:
        rep = self.demo.report()
        sc = self.scenario
        spans = self.fault_spans()
        at_faults = violations_at_faults(self.demo.stats.violations, spans)
        rep.update({
            "cap_violation_at_faults_s": at_faults,
            "cap_violation_elsewhere_s": rep["cap_violation_s"] - at_faults,
            # where they were: each stretch over the cap, and the fault it was at if any
            "cap_violations": [
                {"from": _iso(t0, sc), "to": _iso(t1, sc), "s": round(dt, 2),
                 "at_fault": next((label for s0, s1, label in spans
                                   if at_edge(t0, s0, s1) or at_edge(t1 - 1.0, s0, s1)), None)}
                for t0, t1, dt in violation_stretches(self.demo.stats.violations)],
            "start": sc.start.isoformat(),
            "end": (sc.start + timedelta(hours=rep["sim_hours"])).isoformat(),
            "warmup_s": sc.warmup_s,
            "scenario": sc.name,
            "planner": self.planner,
            "scenario_description": sc.description,
            "cap_changes": [{"at": sc.at(c.at_h).isoformat(), "export_cap_w": c.export_cap_w,
                             "notice_s": c.notice_s} for c in sc.cap],
            "faults": [{"t": _iso(e.t_s, sc), "device": e.device, "kind": e.kind,
                        "action": e.action} for e in self.injector.events],
            "bms_events": [{"t": _iso(t, sc), "device": d, "action": a}
                           for t, d, a in self.demo.sim.plant.bms_events],
        })
        return rep


    def fault_spans(self) -> list[tuple[float, float, str]]:
        """The faults and BMS trips of the run, for the plots (see :func:`fault_spans`)."""
        plant = self.demo.sim.plant
        return fault_spans(self.injector.events, plant.bms_events, plant.t_s)


def fault_spans(events: Sequence[Event], bms_events: Sequence[tuple[float, str, str]],
                end_s: float) -> list[tuple[float, float, str]]:
    """(start_s, end_s, label) of every injected fault and every BMS trip, in time order;
    one still in force at the end lasts to ``end_s``."""
    spans: list[tuple[float, float, str]] = []
    began: dict[int, tuple[float, str]] = {}
    for e in events:
        if e.action == "start":
            began[e.fault_id] = (e.t_s, f"{e.device} {e.kind}")
        elif e.fault_id in began:
            t0, label = began.pop(e.fault_id)
            spans.append((t0, e.t_s, label))
    spans += [(t0, end_s, label) for t0, label in began.values()]
    hot: dict[str, float] = {}
    for t, device, action in bms_events:
        if action == "trip":
            hot[device] = t
        elif device in hot:
            spans.append((hot.pop(device), t, f"{device} BMS trip (hot)"))
    spans += [(t0, end_s, f"{d} BMS trip (hot)") for d, t0 in hot.items()]
    return sorted(spans)


def violations_at_faults(violations: Sequence[tuple[float, float]],
                         spans: Sequence[tuple[float, float, str]]) -> float:
    """Seconds over the cap within :data:`FAULT_GRACE_S` of a fault's (or trip's) start or
    end (a device failing, or coming back and taking up its setpoint), and a plant step
    before it too: the fault's time is stamped as the injector logs it, which may be just
    after the plant stepped into it."""
    return sum(dt for t, dt in violations if any(at_edge(t, s, e) for s, e, _ in spans))


def at_edge(t_s: float, start_s: float, end_s: float) -> bool:
    """Whether ``t_s`` is within :data:`FAULT_GRACE_S` after a fault's start or end (or a
    plant step before it, see :func:`violations_at_faults`)."""
    return any(-1.0 <= t_s - edge <= FAULT_GRACE_S for edge in (start_s, end_s))


def violation_stretches(violations: Sequence[tuple[float, float]]
                        ) -> list[tuple[float, float, float]]:
    """The meter's seconds over the cap, (time, seconds) per plant step, joined into
    stretches of consecutive steps: (start_s, end_s, seconds over)."""
    out: list[tuple[float, float, float]] = []
    for t, dt in violations:
        if out and abs(t - out[-1][1]) <= 1e-6:
            t0, _, total = out[-1]
            out[-1] = (t0, t + dt, total + dt)
        else:
            out.append((t, t + dt, dt))
    return out


def _iso(t_s: float, sc: Scenario) -> str:
    return datetime.fromtimestamp(t_s, sc.start.tzinfo).isoformat()
