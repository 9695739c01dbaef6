"""Faults and cap changes of a scenario, applied to a served plant at their times.

``FaultInjector`` runs beside a :class:`sim.serve.SimulatedPlant` on the same clock: each
fault of a scenario starts at its time and ends after its duration (or with the run).
Faults injected at run time (``inject``, which ``sim.control`` serves over HTTP for
``vpp sim serve``) go through the same ``start``/``end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from sim.clock import sleep_until_s
from sim.modbus_server import SENTINEL, Fault, FaultKind, ModbusTcpDeviceServer
from sim.plant import Plant
from sim.scenario import Fault as ScenarioFault
from sim.scenario import FaultAction, FaultType, Scenario
from sim.serve import SimulatedPlant

log = logging.getLogger(__name__)

_SERVER_FAULTS = {FaultType.OFFLINE: FaultKind.SILENT, FaultType.SLOW: FaultKind.SLOW,
                  FaultType.DROP: FaultKind.CLOSE, FaultType.FROZEN: FaultKind.FROZEN,
                  FaultType.EXCEPTION: FaultKind.EXCEPTION}
# faults of a battery's own hardware: (plant, battery id, on) -> None
_BATTERY_FAULTS: dict[FaultType, Callable[[Plant, str, bool], None]] = {
    FaultType.TRIP: Plant.trip, FaultType.COOLING: Plant.fail_cooling}


def _slot(f: FaultAction) -> tuple[str, str, str]:
    """Where a fault acts: faults with the same slot replace each other."""
    if f.kind in _BATTERY_FAULTS:
        return (f.device, f.kind.value, "")
    if f.kind is FaultType.GARBAGE:
        return (f.device, "point", f.point or "")
    return (f.device, "answers", "")


@dataclass(frozen=True)
class Event:
    """Something the injector did, for the run report."""

    t_s: float  # simulated POSIX time
    device: str
    kind: str
    action: str  # "start" or "end"
    fault_id: int = 0


@dataclass(frozen=True)
class Active:
    """A fault in force: what, since when (simulated POSIX time), until when (None: the
    run's end)."""

    fault_id: int
    action: FaultAction
    since_s: float
    until_s: float | None


class FaultInjector:
    """Applies faults and cap changes to a served plant (async context manager): a
    scenario's at their times, and any at run time with :meth:`inject`/:meth:`end`;
    ``events`` lists what was done, in order, and ``active`` what is in force."""

    def __init__(self, sim: SimulatedPlant, scenario: Scenario | None = None) -> None:
        self.sim = sim
        self.scenario = scenario
        self.events: list[Event] = []
        self.active: dict[int, Active] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 1
        self._scheduled: dict[int, int] = {}  # scenario fault index -> its id in force
        if scenario is not None:
            for f in scenario.faults:
                try:
                    self.check(f)
                except ValueError as exc:
                    raise ValueError(f"scenario {scenario.name}: {exc}") from None
            for c in scenario.cap:  # the meter's side: judged against the cap in force
                sim.plant.schedule_cap(scenario.at(c.at_h).timestamp(), c.export_cap_w)

    def check(self, f: FaultAction) -> None:
        """Raise ValueError if the plant cannot suffer this fault (it names why)."""
        known = {d.id for d in self.sim.spec.devices()}
        if f.device not in known:
            raise ValueError(f"fault on {f.device!r}, which the plant does not have (it has "
                             f"{', '.join(sorted(known))})")
        if f.kind in _BATTERY_FAULTS and f.device not in self.sim.plant.battery:
            raise ValueError(f"only a battery can suffer {f.kind.value!r}, not {f.device!r} "
                             f"(batteries: {', '.join(sorted(self.sim.plant.battery)) or 'none'})")
        if f.kind is FaultType.GARBAGE:
            unit_id, server = self._unit(f.device)
            names = [p.name for p in server.units[unit_id].profile.points]
            if f.point not in names:
                raise ValueError(f"{f.device} has no point {f.point!r} (it has "
                                 f"{', '.join(names)})")

    def _unit(self, device: str) -> tuple[int, ModbusTcpDeviceServer]:
        ep = next(d.endpoint for d in self.sim.spec.devices() if d.id == device)
        server = self.sim.server_of(device)
        return ep.unit_id, server

    def start(self, f: FaultAction) -> int:
        """Begin a fault now; returns its id. Ends when :meth:`end` is called with the id
        (the scenario's timeline does that after its duration)."""
        self.check(f)
        self._apply(f)
        fid, self._next_id = self._next_id, self._next_id + 1
        now = self.sim.clock.time()
        self.active[fid] = Active(fid, f, now, None if f.duration_s is None
                                  else now + f.duration_s)
        self._note(fid, f, "start")
        return fid

    def end(self, fault_id: int) -> None:
        """End a fault in force now (KeyError if there is none with this id)."""
        f = self.active.pop(fault_id).action
        # faults that hold the same place (a battery's breaker or cooling, a point's value,
        # the device's answers): the newest still in force takes it back
        rest = [a.action for _, a in sorted(self.active.items())
                if _slot(a.action) == _slot(f)]
        if rest:
            self._apply(rest[-1])
        else:
            self._apply(f, on=False)
        self._note(fault_id, f, "end")

    def _apply(self, f: FaultAction, *, on: bool = True) -> None:
        """Put a fault in force on the plant or its server (``on``), or clear its place."""
        unit_id, server = self._unit(f.device)
        if f.kind in _BATTERY_FAULTS:
            self.sim.plant.advance_to(self.sim.clock.time())
            _BATTERY_FAULTS[f.kind](self.sim.plant, f.device, on)
        elif f.kind is FaultType.GARBAGE:
            assert f.point is not None
            overrides = server.units[unit_id].overrides
            if on:
                overrides[f.point] = SENTINEL if f.value is None else f.value
            else:
                overrides.pop(f.point, None)
        elif on:
            server.faults[unit_id] = Fault(_SERVER_FAULTS[f.kind], delay_s=f.delay_s,
                                           code=f.code)
        else:
            server.faults.pop(unit_id, None)

    def inject(self, f: FaultAction) -> int:
        """Begin a fault now and, if it has a duration, end it after that long on the
        plant's clock; returns its id (for :meth:`end`)."""
        fid = self.start(f)
        if f.duration_s is not None:
            task = asyncio.create_task(self._end_after(fid, f.duration_s),
                                       name=f"sim.fault.{fid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return fid

    async def _end_after(self, fault_id: int, duration_s: float) -> None:
        await sleep_until_s(self.sim.clock, self.sim.clock.time() + duration_s)
        if fault_id in self.active:
            self.end(fault_id)

    def _note(self, fault_id: int, f: FaultAction, action: str) -> None:
        t = self.sim.clock.time()
        self.events.append(Event(t, f.device, f.kind.value, action, fault_id))
        tz = self.scenario.start.tzinfo if self.scenario is not None else None
        when = datetime.fromtimestamp(t, tz).strftime("%H:%M:%S")
        log.info("%s fault %d %s on %s %s", when, fault_id, f.kind.value, f.device,
                 "begins" if action == "start" else "ends")

    def _timeline(self) -> list[tuple[float, int, int, ScenarioFault]]:
        """(time, order, scenario fault index, fault): ends before starts at one instant."""
        assert self.scenario is not None
        items: list[tuple[float, int, int, ScenarioFault]] = []
        for k, f in enumerate(self.scenario.faults):
            t0 = self.scenario.at(f.at_h).timestamp()
            items.append((t0, 1, k, f))
            if f.duration_s is not None:
                items.append((t0 + f.duration_s, 0, k, f))
        return sorted(items, key=lambda x: (x[0], x[1], x[2]))

    async def _run(self) -> None:
        clock = self.sim.clock
        for t_s, order, k, f in self._timeline():
            await sleep_until_s(clock, t_s)
            if order:
                self._scheduled[k] = self.start(f)
            elif self._scheduled.get(k) in self.active:
                self.end(self._scheduled.pop(k))

    async def __aenter__(self) -> FaultInjector:
        if self.scenario is not None and self.scenario.faults:
            task = asyncio.create_task(self._run(), name="sim.faults")
            self._tasks.add(task)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fid in list(self.active):
            self.end(fid)
