"""The rows of the fault matrix: each a fault done to the running demo through a
:class:`~vpp.faultmatrix.probe.Probe` (see :mod:`vpp.faultmatrix`)."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from sim.scenario import FaultAction, FaultType
from vpp.config import SiteConfig
from vpp.faultmatrix.probe import POLL_WALL_S, Probe, Row, RowFn

FLOOD_COMMANDS = 1000
FLOOD_CONCURRENCY = 16  # requests in flight at once
# the trip's row is judged to the second: at this speed the wall time of the loop's Modbus
# reads and writes (a few ms each) is a fraction of a simulated second, not seconds as at
# the matrix's ×200
TRIP_SPEED = 25.0
KILL_TEST = "tests/faults/test_kill_restart.py"
DATABASE_TEST = "tests/faults/test_database_down.py"


def _device(device: str, kind: FaultType, duration_s: float, **kw: Any) -> RowFn:
    async def run(p: Probe) -> None:
        await p.device_fault(FaultAction(device=device, kind=kind, duration_s=duration_s,
                                         **kw))
    return run


def _solver(kind: str, duration_s: float) -> RowFn:
    """The dispatcher's ``solve`` replaced on the running controller for the duration
    (tests/e2e/test_dispatch_faults.py sets the same faults by configuration for a whole
    run, so there is no first plan and no recovery to see): ``fails`` asks for a solver
    that is not installed (cvxpy's SolverError, as there), ``late`` holds the compute
    thread longer than ``dispatch.late_s`` before solving."""
    async def run(p: Probe) -> None:
        disp = p.ctrl.dispatcher
        real = disp.solve
        late_s = p.ctrl.config.dispatch.late_s

        def broken(inputs: Any, **kw: Any) -> Any:
            if kind == "fails":
                return real(inputs, **{**kw, "solvers": ("NO-SUCH-SOLVER",)})
            time.sleep(1.5 * late_s)  # the compute thread, not the event loop
            return real(inputs, **kw)
        disp.solve = broken
        p.began()
        try:
            await p.hold(duration_s)
            if p.ctrl.state.plan_source == "optimal":
                p.problems.append("the optimiser's plan was still in force at the fault's end")
        finally:
            del disp.solve  # the class's method again
        p.ended()
    return run


def _late_solves(cfg: SiteConfig) -> SiteConfig:
    # a late solve is one of more than 1 s wall here (60 s by default): a solve takes
    # about 0.01-0.1 s, and the fault need not hold the compute thread for a minute
    return cfg.model_copy(update={"dispatch": cfg.dispatch.model_copy(update={"late_s": 1.0})})


def _clock_step(step_s: float) -> RowFn:
    """The controller's clock stepped (NTP, an operator, a bad RTC); the plant's, and so
    the meter's, runs on. The step stays: the controller lives on the new time."""
    async def run(p: Probe) -> None:
        p.began()
        p.demo.controller_clock.step(step_s)
        p.ended()
    return run


async def _config_reload_error(p: Probe) -> None:
    """The configuration reloaded from a file with errors (a cap of -5 W and an unknown
    key), then from one that is not TOML, and left so for 5 minutes; then the good file.
    A bad file must change nothing and raise ``config_reload_failed``; the good one must
    be taken and clear it (back when it is clear)."""
    from vpp.cli import default_demo_config
    svc, ctrl = p.svc, p.ctrl
    good = default_demo_config().read_text(encoding="utf-8")
    cap = "export_cap_w = 35_000_000"
    if cap not in good or 'id = "demo-county"' not in good:
        raise RuntimeError(f"the demo county's file has no '{cap}' to break")
    bad = good.replace(cap, "export_cap_w = -5").replace("[site]", "[site]\nbogus = 1")
    before, cap_w = ctrl.config, ctrl.export_cap_at(ctrl.clock.now())
    with tempfile.TemporaryDirectory(prefix="vpp-faultmatrix-") as tmp:
        site = Path(tmp) / "site.toml"
        p.began()
        for text in (bad, "this is [not toml"):
            site.write_text(text, encoding="utf-8")
            if await svc.reload(site):
                p.problems.append("a configuration with errors was taken")
        if ctrl.config is not before or ctrl.export_cap_at(ctrl.clock.now()) != cap_w:
            p.problems.append("a refused configuration changed the controller")
        if "config_reload_failed" not in ctrl.alarms.active_keys():
            p.problems.append("no config_reload_failed alarm")
        await p.hold(300.0)
        site.write_text(good, encoding="utf-8")
        if not await svc.reload(site):
            p.problems.append("the good configuration was refused")
        p.ended()
    p.back_when = lambda: "config_reload_failed" not in ctrl.alarms.active_keys()


async def _broker_down(p: Probe) -> None:
    """The embedded broker stopped for 60 simulated seconds, then started on its port; the
    outage is timed to hold a plan step (its schedule is a QoS 1 message). Back when the
    bridge is connected and every QoS 1 message of the outage is acknowledged."""
    broker, mqtt, ctrl = p.svc.broker, p.svc.mqtt, p.ctrl
    assert broker is not None, "the matrix needs the embedded broker"
    assert mqtt is not None
    made = ctrl.state.last_solve.created_at.timestamp()
    every = ctrl.config.dispatch.interval_s
    nxt = made + every * math.ceil((p.clock.time() + 30.0 - made) / every)
    await p.hold(nxt - 20.0 - p.clock.time())
    p.began()
    await broker.stop()
    seen_down = False
    end = p.clock.time() + 60.0
    while p.clock.time() < end:
        seen_down = seen_down or not mqtt.connected
        await asyncio.sleep(POLL_WALL_S)
    waiting = mqtt.buffered
    await broker.start()
    p.ended()
    queued = p.outbox_at_end
    p.notes.append(f"the bridge {'saw' if seen_down else 'did not see'} the broker go; "
                   f"{waiting} message(s) waited in its buffer, {len(queued)} of them QoS 1 "
                   "in the outbox, when the broker came back; its reconnect backoff is in "
                   f"wall time (from 0.5 s, doubling, with jitter), so each wall second of it "
                   f"is {p.clock.speed:g} simulated seconds of the recovery here")
    p.back_when = lambda: not (queued & p.outbox_rows())
    p.at_end.append(lambda: None if seen_down else "the bridge never saw the broker go")


def _bad_request(k: int, viewer: str, grid: str) -> tuple[dict[str, str], bytes, int]:
    """The k-th request of the flood: headers, body and the status it must get."""
    cap = b'{"export_cap_w": 30000000}'
    kinds: list[tuple[dict[str, str], bytes, int]] = [
        ({}, cap, 401),  # no token
        ({"Authorization": f"Bearer made-up-{k}"}, cap, 401),  # a token nobody holds
        ({"Authorization": f"Bearer {viewer}"}, cap, 403),  # a role that may not
        ({"Authorization": f"Bearer {grid}"}, b'{"export_cap_w": ', 422),  # not JSON
        ({"Authorization": f"Bearer {grid}"}, b'{"export_cap_w": -1, "x": 1}', 422),
        ({"Authorization": f"Bearer {grid}"}, b'{"export_cap_w": 9e12}', 422),  # above it
        ({"Authorization": f"Bearer {grid}"},
         b'{"export_cap_w": 3e7, "effective": "2026-04-15T12:00:00"}', 422),  # no offset
    ]
    return kinds[k % len(kinds)]


def _flood(url: str, viewer: str, grid: str) -> list[tuple[int, int]]:
    """(status wanted, status got) of every request, sent from a thread of its own with
    its own event loop: the client is not the controller's loop's work."""
    async def burst() -> list[tuple[int, int]]:
        gate = asyncio.Semaphore(FLOOD_CONCURRENCY)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async def one(k: int) -> tuple[int, int]:
                headers, body, want = _bad_request(k, viewer, grid)
                async with gate:
                    r = await http.post("/api/v1/commands/cap", content=body, headers={
                        "Content-Type": "application/json", **headers})
                return want, r.status_code
            return list(await asyncio.gather(*(one(k) for k in range(FLOOD_COMMANDS))))
    return asyncio.run(burst())


async def _command_flood(p: Probe) -> None:
    """1,000 malformed or unauthorised cap commands in a burst, then a valid one: every bad
    one refused and audited, the valid one applied (and judged by the meter)."""
    svc, ctrl = p.svc, p.ctrl
    assert svc.api is not None
    assert svc.storage is not None
    viewer = await svc.issue_token("viewer", "flood-viewer")
    grid = await svc.issue_token("grid", "flood-grid")
    audited = await asyncio.to_thread(svc.storage.count, "audit_log")
    p.began()
    got = await asyncio.to_thread(_flood, svc.api.url, viewer, grid)
    p.ended()
    wrong = [(w, g) for w, g in got if w != g]
    if wrong:
        p.problems.append(f"{len(wrong)} of {len(got)} answered otherwise than refused as "
                          f"they should be, e.g. {wrong[0][1]} for {wrong[0][0]}")
    took_s = p.clock.time() - (p.fault_start_s or 0.0)
    cap_w = 0.97 * ctrl.config.pcc.export_cap_w
    effective = ctrl.clock.now() + timedelta(seconds=10)
    p.demo.sim.plant.schedule_cap(effective.timestamp(), cap_w)  # the meter judges by it
    async with httpx.AsyncClient(base_url=svc.api.url, timeout=30) as http:
        r = await http.post("/api/v1/commands/cap", headers={"Authorization": f"Bearer {grid}"},
                            json={"export_cap_w": cap_w, "effective": effective.isoformat()})
    if r.status_code != 200:
        p.problems.append(f"the valid command after the flood: {r.status_code} {r.text[:200]}")
    rows = await asyncio.to_thread(svc.storage.read_audit, limit=len(got) + 1)
    fresh = rows[:await asyncio.to_thread(svc.storage.count, "audit_log") - audited]
    p.lost += max(0, len(got) + 1 - len(fresh))
    refused = sum(1 for e in fresh if not e["ok"])
    p.notes.append(f"{sum(1 for w, g in got if w == g)} of {len(got)} refused as they should "
                   f"be (401, 403, 422); {len(fresh)} audit rows for {len(got) + 1} commands "
                   f"({refused} refused, {len(fresh) - refused} applied); the burst took "
                   f"{took_s:.0f} simulated s; then a cut to {cap_w / 1e6:.2f} MW, judged by "
                   "the meter from its effective time")
    p.at_end.append(lambda: None if abs(ctrl.state.export_cap_w - cap_w) < 1.0 else
                    f"the valid cap command is not in force ({ctrl.state.export_cap_w:g} W)")


def _trip_reaction(battery: str) -> Any:
    """The seconds over the cap a battery's trip costs at best: its charging lands on the
    PCC at once, and no step of the loop can foresee it (only a reserve of that much
    export, or an inter-trip at the plant, could): up to a control step until the trip is
    read, another when the poll of that step was answered just before it, and the time the
    generators take to shed the battery's most charging at their ramp rates."""
    def bound(demo: Any) -> tuple[float, str]:
        spec = demo.sim.plant.spec
        [bat] = [b for b in spec.batteries if b.id == battery]
        ramp_w_s = sum(g.ramp_ratio_per_s * g.rated_power_w for g in (*spec.pv, *spec.wind))
        step_s = demo.control_interval_s
        shed_s = bat.max_charge_w / ramp_w_s
        return 2 * step_s + shed_s, (
            f"two control steps of {step_s:g} s and {shed_s:.2f} s for the generators to shed "
            f"{battery}'s {bat.max_charge_w / 1e6:g} MW of charging at their ramp rates (the "
            "trip is not foreseeable: only a reserve of that export, or an inter-trip at the "
            "plant, could keep it off the meter)")
    return bound


ROWS: tuple[Row, ...] = (
    *(Row(f"{d}-offline", f"{d} answers nothing (Modbus silent)", 600.0,
          _device(d, FaultType.OFFLINE, 600.0)) for d in ("pv1", "wf1", "bess1", "load", "pcc")),
    Row("pv1-power-nan", "pv1 active_power_w reads NaN", 300.0,
        _device("pv1", FaultType.GARBAGE, 300.0, point="active_power_w", value=math.nan)),
    Row("pv1-power-out-of-range", "pv1 active_power_w reads 500 MW (rated 60 MW)", 300.0,
        _device("pv1", FaultType.GARBAGE, 300.0, point="active_power_w", value=5e8)),
    Row("pcc-export-nan", "PCC meter export_w reads NaN", 300.0,
        _device("pcc", FaultType.GARBAGE, 300.0, point="export_w", value=math.nan)),
    Row("pcc-export-out-of-range", "PCC meter export_w reads -500 MW (an import the county "
        "cannot draw: load and battery together are 55 MW at most)", 300.0,
        _device("pcc", FaultType.GARBAGE, 300.0, point="export_w", value=-5e8)),
    Row("pcc-frozen", "PCC meter repeats its last reply", 300.0,
        _device("pcc", FaultType.FROZEN, 300.0)),
    Row("pv1-frozen", "pv1 repeats its last reply, ignores writes", 300.0,
        _device("pv1", FaultType.FROZEN, 300.0)),
    Row("bess1-trip", "bess1 trips (0 W at once, status fault, setpoints ignored); run at "
        f"×{TRIP_SPEED:g}", 120.0, _device("bess1", FaultType.TRIP, 120.0),
        allowed_violation_s=_trip_reaction("bess1"), speed=TRIP_SPEED),
    Row("solver-fails", "every solve fails (no solver)", 900.0, _solver("fails", 900.0)),
    Row("solver-late", "every solve answers after dispatch.late_s", 900.0,
        _solver("late", 900.0), adjust=_late_solves),
    Row("broker-down", "embedded MQTT broker stopped, then started on its port", 60.0,
        _broker_down),
    Row("command-flood", f"{FLOOD_COMMANDS:,} malformed or unauthorised HTTP cap commands "
        "in a burst, then a valid one", None, _command_flood,
        lost="audit rows missing for the commands answered (refused or applied)"),
    Row("clock-back", "the controller's clock stepped back 1 h (the plant's runs on)", None,
        _clock_step(-3600.0), demo={"stepped_clock": True}),
    Row("clock-forward", "the controller's clock stepped forward 1 h", None,
        _clock_step(3600.0), demo={"stepped_clock": True}),
    Row("config-reload-error", "configuration reloaded from a file with errors, then from "
        "one that is not TOML; the good one 5 min later", 300.0, _config_reload_error),
    Row("controller-crash", "controller killed (SIGKILL) for 5 min, then restarted (two "
        f"processes, SQLite; {KILL_TEST})", 300.0, external=(KILL_TEST, "-k", "sqlite"),
        lost="acknowledged commands (cap, mode) and history not resumed, as that test "
        "asserts them"),
    Row("database-down", f"PostgreSQL cut off behind a TCP proxy for 80 s ({DATABASE_TEST})",
        80.0, external=(DATABASE_TEST,), lost="storage writes given up, and gaps in the PCC "
        "telemetry stored across the outage, as that test asserts them"),
)


def row_named(name: str) -> Row:
    for r in ROWS:
        if r.name == name:
            return r
    raise KeyError(f"no fault-matrix row {name!r}; rows: {', '.join(r.name for r in ROWS)}")
