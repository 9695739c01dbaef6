"""Faults and cap changes of a scenario, applied to a served plant at their times.

``FaultInjector`` runs beside a :class:`sim.serve.SimulatedPlant` on the same clock: each
fault starts at its time and ends after its duration (or with the run). The same
``start``/``end`` methods serve for faults injected at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from sim.modbus_server import SENTINEL, Fault, FaultKind, ModbusTcpDeviceServer
from sim.scenario import Fault as ScenarioFault
from sim.scenario import FaultType, Scenario
from sim.serve import SimulatedPlant

log = logging.getLogger(__name__)

_SERVER_FAULTS = {FaultType.OFFLINE: FaultKind.SILENT, FaultType.SLOW: FaultKind.SLOW,
                  FaultType.DROP: FaultKind.CLOSE, FaultType.FROZEN: FaultKind.FROZEN,
                  FaultType.EXCEPTION: FaultKind.EXCEPTION}


@dataclass(frozen=True)
class Event:
    """Something the injector did, for the run report."""

    t_s: float  # simulated POSIX time
    device: str
    kind: str
    action: str  # "start" or "end"


class FaultInjector:
    """Applies a scenario's faults and cap changes to a served plant (async context
    manager); ``events`` lists what was done, in order."""

    def __init__(self, sim: SimulatedPlant, scenario: Scenario) -> None:
        self.sim = sim
        self.scenario = scenario
        self.events: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._active: list[ScenarioFault] = []
        known = {d.id for d in sim.spec.devices()}
        for f in scenario.faults:
            if f.device not in known:
                raise ValueError(f"scenario {scenario.name}: fault on {f.device!r}, which the "
                                 f"plant does not have (it has {', '.join(sorted(known))})")
            if f.kind is FaultType.TRIP and f.device not in sim.plant.battery:
                raise ValueError(f"scenario {scenario.name}: only a battery can trip, not "
                                 f"{f.device!r}")
        for c in scenario.cap:  # the meter's side: judged against the cap in force
            sim.plant.schedule_cap(scenario.at(c.at_h).timestamp(), c.export_cap_w)

    def _unit(self, device: str) -> tuple[int, ModbusTcpDeviceServer]:
        ep = next(d.endpoint for d in self.sim.spec.devices() if d.id == device)
        server = self.sim.server_of(device)
        return ep.unit_id, server

    def start(self, f: ScenarioFault) -> None:
        """Begin a fault now."""
        unit_id, server = self._unit(f.device)
        if f.kind is FaultType.TRIP:
            self.sim.plant.advance_to(self.sim.clock.time())
            self.sim.plant.trip(f.device)
        elif f.kind is FaultType.GARBAGE:
            assert f.point is not None
            unit = server.units[unit_id]
            unit.profile.point(f.point)  # KeyError names a point the device lacks
            unit.overrides[f.point] = SENTINEL if f.value is None else f.value
        else:
            server.faults[unit_id] = Fault(_SERVER_FAULTS[f.kind], delay_s=f.delay_s,
                                           code=f.code)
        self._active.append(f)
        self._note(f, "start")

    def end(self, f: ScenarioFault) -> None:
        """End a fault now."""
        unit_id, server = self._unit(f.device)
        if f.kind is FaultType.TRIP:
            self.sim.plant.advance_to(self.sim.clock.time())
            self.sim.plant.trip(f.device, tripped=False)
        elif f.kind is FaultType.GARBAGE:
            assert f.point is not None
            server.units[unit_id].overrides.pop(f.point, None)
        else:
            server.faults.pop(unit_id, None)
        if f in self._active:
            self._active.remove(f)
        self._note(f, "end")

    def _note(self, f: ScenarioFault, action: str) -> None:
        t = self.sim.clock.time()
        self.events.append(Event(t, f.device, f.kind.value, action))
        when = datetime.fromtimestamp(t, self.scenario.start.tzinfo).strftime("%H:%M:%S")
        log.info("%s fault %s on %s %s", when, f.kind.value, f.device,
                 "begins" if action == "start" else "ends")

    def _timeline(self) -> list[tuple[float, int, ScenarioFault]]:
        items: list[tuple[float, int, ScenarioFault]] = []
        for k, f in enumerate(self.scenario.faults):
            t0 = self.scenario.at(f.at_h).timestamp()
            items.append((t0, 2 * k + 1, f))
            if f.duration_s is not None:
                items.append((t0 + f.duration_s, 2 * k, f))  # even: an end
        return sorted(items, key=lambda x: (x[0], x[1]))

    async def _run(self) -> None:
        clock = self.sim.clock
        for t_s, k, f in self._timeline():
            wait = t_s - clock.time()
            if wait > 0:
                await asyncio.sleep(wait / getattr(clock, "speed", 1.0))
            (self.start if k % 2 else self.end)(f)

    async def __aenter__(self) -> FaultInjector:
        self._task = asyncio.create_task(self._run(), name="sim.faults")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for f in list(self._active):
            self.end(f)
