"""Running one row of the fault matrix and measuring it (see :mod:`vpp.faultmatrix`)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from drivers.device import Health
from sim.inject import FaultInjector
from sim.scenario import FaultAction, Scenario
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions
from vpp.enforce import EnforceMode
from vpp.service import Services
from vpp.simrun import scenario_config, scenario_spec

log = logging.getLogger(__name__)

SPEED = 200.0  # time acceleration: a row takes about 10 s of wall time
MIDDAY = Scenario.model_validate({  # clear sky from 11:30: PV alone runs far over the cap
    "name": "fault-matrix", "config": "demo", "start": "2026-04-15T11:30:00+08:00",
    "duration_h": 3, "warmup_s": 0, "seed": 7, "load_scale": 0.7,
    "weather": {"mean_wind_m_s": 8.0, "periods": [{"from_h": 0, "regime": "clear"}]}})
READY_EXPORT_RATIO = 0.9  # the fault begins once the measured export is this near the cap
READY_WALL_S = 90.0  # [wall s] the demo must reach normal control within this
PRE_FAULT_S = 60.0  # [s] books open this long before the fault
STABLE_S = 30.0  # [s] normal control must last this long to count as back
RECOVERY_LIMIT_S = 1800.0  # [s] not back in normal control within this: the row fails
OBSERVE_S = 300.0  # [s] the meter keeps watching this long after the recovery
POLL_WALL_S = 0.01  # [wall s] how often the probe looks at the controller
ROOT = Path(__file__).resolve().parents[2]  # the source checkout (rows measured by tests)


@dataclass
class Result:
    """One row as measured; ``None``: not measured."""

    row: str
    fault: str
    duration_s: float | None
    violation_s: float | None = None
    lost: int | None = None
    recovery_s: float | None = None
    meets: bool = False
    why: str = ""  # why it fails its goal
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    abandoned: bool = False  # given up with its task still running

    @property
    def goal(self) -> str:
        return "meets" if self.meets else f"FAILS ({self.why})"


class Probe:
    """A row's view of the running demo: the plant, the controller, what it does to them,
    and what it measures. Times are the plant's (simulated POSIX seconds)."""

    def __init__(self, demo: Demo, injector: FaultInjector) -> None:
        assert demo.services is not None
        self.demo, self.injector = demo, injector
        self.svc: Services = demo.services
        self.ctrl: Any = demo.controller
        self.clock = demo.clock
        self.fault_start_s: float | None = None
        self.fault_end_s: float | None = None
        self.lost = 0  # what the row counts besides the common counters
        self.notes: list[str] = []
        self.problems: list[str] = []  # the row's own checks that failed
        self.back_when: Callable[[], bool] | None = None  # a row's own part of "normal"
        self.at_end: list[Callable[[], str | None]] = []  # a row's checks at the end
        self.outbox_at_end: set[tuple[int, str, bytes]] = set()
        self.base = self._counters()

    # -- time and faults ------------------------------------------------------------------

    async def hold(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (the parts' errors surface)."""
        end = self.clock.time() + seconds
        while self.clock.time() < end:
            self.svc.check()
            await asyncio.sleep(min(0.05, max(0.0, (end - self.clock.time()) / self.clock.speed)))

    def began(self) -> None:
        self.fault_start_s = self.clock.time()

    def ended(self) -> None:
        self.fault_end_s = self.clock.time()
        self.outbox_at_end = self.outbox_rows()

    async def device_fault(self, action: FaultAction) -> None:
        """Put a simulator fault in force for its duration, then end it."""
        assert action.duration_s is not None
        self.began()
        fid = self.injector.start(action)
        await self.hold(action.duration_s)
        self.injector.end(fid)
        self.ended()

    # -- normal control -------------------------------------------------------------------

    def normal(self) -> bool:
        """Normal control, as the controller itself shows it: the API's health would say
        ``ok`` (a control step done, every device online, the PCC measured, the last solve
        usable and the optimiser's plan in force), the plan holding a step for now, no
        asset held and the export not estimated (the enforcement step's notes), MQTT
        connected, and the row's own condition."""
        st = self.ctrl.state
        cmd, solve = st.command, st.last_solve
        if cmd is None or st.export_w is None or cmd.mode is EnforceMode.PCC_LOST:
            return False
        # enforce notes "<asset> held: ..." and the controller "PCC meter lost: ..."
        if any(" held: " in n or n.startswith("PCC ") for n in cmd.notes):
            return False
        if any(d.health is not Health.ONLINE for d in self.ctrl.devices.values()):
            return False
        if solve is None or not solve.status.usable or st.plan_source != "optimal":
            return False
        if st.schedule is None or st.schedule.step_at(self.ctrl.clock.now()) is None:
            return False
        if self.svc.mqtt is not None and not self.svc.mqtt.connected:
            return False
        return self.back_when is None or self.back_when()

    def last_step_s(self) -> float | None:
        """When the controller's latest control step ran, on the plant's clock (the
        controller's own clock may have been stepped)."""
        step = self.ctrl.state.last_step_at
        offset = float(getattr(self.demo.controller_clock, "offset_s", 0.0))
        return None if step is None else step.timestamp() - offset

    async def stable_normal(self, *, after_s: float, limit_s: float) -> float | None:
        """The time of the first control step after ``after_s`` (and after this call)
        that begins :data:`STABLE_S` of normal control; None if none within ``limit_s``."""
        since: float | None = None
        steps = self.ctrl.state.control_steps
        while self.clock.time() < after_s + limit_s + STABLE_S:
            self.svc.check()
            t = self.last_step_s()
            if t is not None and t > after_s and self.ctrl.state.control_steps > steps:
                if not self.normal():
                    since = None
                elif since is None:
                    since = t
                elif t - since >= STABLE_S:
                    return since if since <= after_s + limit_s else None
            await asyncio.sleep(POLL_WALL_S)
        return None

    async def observe(self, seconds: float) -> tuple[int, int]:
        """Watch ``seconds`` of control: (steps seen in normal control, steps seen)."""
        end = self.clock.time() + seconds
        seen: set[Any] = set()
        normal = 0
        while self.clock.time() < end:
            self.svc.check()
            step = self.ctrl.state.last_step_at
            if step not in seen:
                seen.add(step)
                normal += self.normal()
            await asyncio.sleep(POLL_WALL_S)
        return normal, len(seen)

    # -- what is lost ---------------------------------------------------------------------

    def _counters(self) -> dict[str, float]:
        m, mq = self.ctrl.metrics, self.svc.mqtt
        reg = m.registry if m is not None else None
        site = {"site": self.demo.config.site.id}
        return {
            "samples dropped": float(self.ctrl.samples.dropped),
            "storage writes failed": (reg.get_sample_value("vpp_storage_errors_total", site)
                                      or 0.0) if reg else 0.0,
            "MQTT messages dropped": float(mq.dropped) if mq else 0.0,
            "loop errors": sum(s.value for f in (reg.collect() if reg else [])
                               if f.name == "vpp_loop_errors" for s in f.samples
                               if s.name.endswith("_total")),
        }

    def outbox_rows(self) -> set[tuple[int, str, bytes]]:
        """The QoS 1 messages in the MQTT outbox file now (not yet acknowledged)."""
        path = (self.demo.options.data_dir or Path()) / "mqtt-outbox.sqlite"
        if self.svc.mqtt is None or not path.exists():
            return set()
        with contextlib.closing(sqlite3.connect(path, timeout=5.0)) as db:
            return {(int(s), str(t), bytes(p)) for s, t, p in
                    db.execute("SELECT seq, topic, payload FROM outbox")}

    def common_lost(self) -> dict[str, int]:
        """Samples the bounded queue dropped, storage writes that failed, MQTT messages
        the bridge dropped, and QoS 1 messages waiting at the fault's end still not
        acknowledged now."""
        now = self._counters()
        out = {k: round(now[k] - self.base[k]) for k in now if k != "loop errors"}
        out["outbox rows left"] = len(self.outbox_at_end & self.outbox_rows())
        errors = round(now["loop errors"] - self.base["loop errors"])
        if errors:
            self.notes.append(f"{errors} unexpected error(s) in the controller's loops")
        return out


RowFn = Callable[[Probe], Awaitable[None]]


@dataclass(frozen=True)
class Row:
    """A fault to measure: ``run`` over a :class:`Probe`; or ``external``, the pytest
    arguments of the test that measures it (run as it is); neither: not implemented yet
    (``why`` says what is missing). ``known``: why it fails its goal today (a finding for
    the controller; tests/faults/test_matrix.py expects the failure)."""

    name: str
    fault: str
    duration_s: float | None
    run: RowFn | None = None
    lost: str = ""  # what "data lost" counts besides the common counters (external: all)
    adjust: Callable[[SiteConfig], SiteConfig] | None = None
    demo: dict[str, Any] = field(default_factory=dict)  # DemoOptions the row needs
    external: tuple[str, ...] = ()
    why: str = ""
    known: str = ""  # a failure of its goal the controller has today: the finding
    intermittent: bool = False  # the known failure shows in some runs only
    # a sudden loss no step of the loop can foresee (a charging battery's trip): the
    # seconds over the cap its reaction takes at best are allowed, and said in the notes
    allowed_violation_s: Callable[[Demo], tuple[float, str]] | None = None
    speed: float | None = None  # its own time acceleration (None: the matrix's)

    @property
    def implemented(self) -> bool:
        return self.run is not None or bool(self.external)


def matrix_config(config: SiteConfig) -> SiteConfig:
    """The site configuration at the matrix's midday, with the embedded broker on."""
    cfg = scenario_config(config, MIDDAY)
    return cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={
        "enabled": True, "embedded": True})})


async def run_row(row: Row, config: SiteConfig, *, speed: float = SPEED) -> Result:
    """Run one row against a fresh demo (or its test) and measure it."""
    res = Result(row.name, row.fault, row.duration_s)
    if row.external:
        return await asyncio.to_thread(run_external, row)
    if row.run is None:
        res.why = row.why
        return res
    wall = time.monotonic()
    speed = row.speed or speed
    cfg = matrix_config(config)
    if row.adjust is not None:
        cfg = row.adjust(cfg)
    with tempfile.TemporaryDirectory(prefix="vpp-faultmatrix-") as tmp:
        demo = Demo(cfg, DemoOptions(speed=speed, seed=MIDDAY.seed, ephemeral_ports=True,
                                     data_dir=Path(tmp), adjust_spec=scenario_spec(MIDDAY),
                                     **row.demo))
        async with demo, FaultInjector(demo.sim) as injector:
            p = Probe(demo, injector)
            await _ready(p)
            plant = demo.sim.plant
            plant.advance_to(demo.clock.time())
            plant.open_books()
            await p.hold(PRE_FAULT_S)
            await row.run(p)
            assert p.fault_end_s is not None, f"row {row.name} did not mark the fault's end"
            back = await p.stable_normal(after_s=p.fault_end_s, limit_s=RECOVERY_LIMIT_S)
            res.recovery_s = None if back is None else back - p.fault_end_s
            normal, steps = await p.observe(OBSERVE_S)
            assert p.svc.api is not None
            async with httpx.AsyncClient(timeout=10) as http:
                health = (await http.get(f"{p.svc.api.url}/api/v1/health")).json()
            lost = p.common_lost()
            p.problems += [m for m in (check() for check in p.at_end) if m]
        res.violation_s = demo.stats.cap_violation_s
        res.notes += [*p.notes, _meter_note(demo, p, cfg.pcc.export_cap_w)]
        if demo.clock.stalled_wall_s >= 0.05:
            res.notes.append(f"simulated time held {demo.clock.stalled_wall_s:.1f} s wall for "
                             f"the event loop's stalls (longest "
                             f"{demo.clock.longest_stall_wall_s * 1e3:.0f} ms)")
        if normal < steps:
            res.notes.append(f"after the recovery {normal} of the {steps} control steps looked "
                             "at were in normal control")
        if health["status"] != "ok":
            off = [f"{a} {h}" for a, h in health["devices"].items() if h != "online"]
            res.notes.append(f"/api/v1/health at the end: {health['status']} "
                             f"({', '.join(off) or 'every device online'})")
    res.lost = p.lost + sum(lost.values())
    if res.lost:
        res.notes.append("lost: " + ", ".join(f"{v} {k}" for k, v in lost.items() if v))
    res.wall_s = time.monotonic() - wall
    allowed_s = 0.0
    if row.allowed_violation_s is not None:
        allowed_s, because = row.allowed_violation_s(demo)
        res.notes.append(f"allowed {allowed_s:.1f} s over the cap: {because}")
    why = [f"{res.violation_s:.1f} s over the cap" + (
        f" (allowed {allowed_s:.1f} s)" if allowed_s else "")] if (
        res.violation_s and res.violation_s > allowed_s) else []
    why += [f"{res.lost} lost"] if res.lost else []
    why += [f"not back in normal control within {RECOVERY_LIMIT_S:.0f} s"] if (
        res.recovery_s is None) else []
    why += p.problems
    res.meets, res.why = not why, "; ".join(why)
    return res


def _meter_note(demo: Demo, p: Probe, cap_w: float) -> str:
    """What the meter saw: the export during the fault and when it was over the cap."""
    st = demo.stats
    t0, t1 = p.fault_start_s or 0.0, p.fault_end_s or 0.0
    during = [m[1] for m in st.minutes if m[0] + 60.0 > t0 and m[0] < t1] if t1 > t0 else []
    text = (f"max export {st.max_export_w / 1e6:.2f} MW against the cap {cap_w / 1e6:g} MW "
            f"(uncontrolled {st.uncontrolled_max_export_w / 1e6:.1f} MW)")
    if during:
        text += (f"; the minutes' highest export during the fault {min(during) / 1e6:.1f} to "
                 f"{max(during) / 1e6:.1f} MW")
    spans = {"before the fault": [v for v in st.violations if v[0] < t0],
             "during it": [v for v in st.violations if t0 <= v[0] < t1],
             "after its end": [v for v in st.violations if v[0] >= t1]}
    for name, vs in spans.items():
        if vs:
            edge = t1 if name == "after its end" else t0
            text += (f"; over the cap {sum(dt for _, dt in vs):.1f} s {name} (from "
                     f"{vs[0][0] - edge:+.0f} s to {vs[-1][0] + vs[-1][1] - edge:+.0f} s of "
                     f"its {'start' if edge == t0 else 'end'})")
    return text


async def _ready(p: Probe) -> None:
    """Wait (wall-time limited) for the first plan and stable normal control with the
    export within :data:`READY_EXPORT_RATIO` of the cap."""
    cap = p.ctrl.config.pcc.export_cap_w
    deadline = time.monotonic() + READY_WALL_S
    p.back_when = lambda: (p.ctrl.state.export_w or 0.0) >= READY_EXPORT_RATIO * cap
    while time.monotonic() < deadline:
        if await p.stable_normal(after_s=p.clock.time(), limit_s=120.0) is not None:
            p.back_when = None
            p.base = p._counters()
            return
    st = p.ctrl.state
    raise RuntimeError(f"no normal control near the cap within {READY_WALL_S:.0f} s wall "
                       f"(plan {st.plan_source}, export {st.export_w}, mode "
                       f"{st.command.mode if st.command else None})")


def _processes_in(root: Path) -> list[int]:
    """The processes (Linux) whose working directory is under ``root``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.readlink(proc / "cwd").startswith(str(root)):
                found.append(int(proc.name))
    return found


def _cmd(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    return f"{pid} `{b' '.join(args).decode(errors='replace').strip()[:100]}`"


def run_external(row: Row) -> Result:
    """A row measured by a test of its own, run as it is: it meets its goal if the test
    passes (its assertions are the goal); a meter's books it leaves (``meter.json``) give
    the violation seconds, else a pass means the zero it asserts."""
    res = Result(row.name, row.fault, row.duration_s)
    test = ROOT / row.external[0]
    if not test.exists():
        res.why = f"not run: {row.external[0]} is not here (a source checkout is needed)"
        return res
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vpp-faultmatrix-") as tmp:
        out = subprocess.run(
            [sys.executable, "-m", "pytest", str(test), *row.external[1:], "-q", "-rs",
             "-p", "no:cacheprovider", "--basetemp", str(Path(tmp) / "t")],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
        books = sorted(Path(tmp).glob("t/**/meter.json"))
        if books:
            res.violation_s = float(json.loads(books[0].read_text())["cap_violation_s"])
        left = _processes_in(Path(tmp))
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        if left:
            res.notes.append(f"the test left {len(left)} process(es) running in its directory "
                             f"(ended here): {', '.join(_cmd(p) for p in left)}")
    res.wall_s = time.monotonic() - wall
    tail = (out.stdout.strip().splitlines() or ["no output"])[-1]
    res.notes.append(f"`pytest {' '.join(row.external)}`: {tail.strip('= ')}; recovery time "
                     "is not measured there")
    if out.returncode == 0 and "passed" in tail and "skipped" not in tail:
        res.lost, res.meets = 0, True
        if res.violation_s is None:
            res.violation_s = 0.0
    elif out.returncode == 0:
        skipped = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", out.stdout, flags=re.M)
        res.why = "not run: " + (skipped[0] if skipped else tail)
    else:
        failed = re.findall(r"^E\s+(.*)$", out.stdout, flags=re.M)[:1]
        res.why = "the test fails" + (f": {failed[0][:160]}" if failed else "")
    return res


def row_wall_limit_s(row: Row, speed: float) -> float:
    """The most wall time a row may take before it is given up [s]."""
    sim_s = PRE_FAULT_S + (row.duration_s or 0.0) + RECOVERY_LIMIT_S + STABLE_S + OBSERVE_S
    return READY_WALL_S + 2.0 * sim_s / speed + 60.0


def _stacks() -> str:
    out = io.StringIO()
    for t in asyncio.all_tasks():
        out.write(f"task {t.get_name()}:\n")
        t.print_stack(limit=12, file=out)
    return out.getvalue()


async def run_matrix(rows: list[Row], config: SiteConfig, *, speed: float = SPEED,
                     on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """The rows one after the other, each on a fresh demo. A row that gives no result in
    :func:`row_wall_limit_s` is given up: the stacks of the tasks still running are
    logged, and its result says so (``abandoned``: its task may still be running, and the
    process may not end by itself)."""
    out = []
    for row in rows:
        limit_s = row_wall_limit_s(row, row.speed or speed) if not row.external else 900.0
        task = asyncio.create_task(run_row(row, config, speed=speed),
                                   name=f"faultmatrix.{row.name}")
        done, _ = await asyncio.wait({task}, timeout=limit_s)
        if task in done and not task.cancelled() and task.exception() is None:
            res = task.result()
        elif task in done and not task.cancelled():  # it cannot run: a failed row, not a stop
            exc = task.exception()
            log.error("fault-matrix row %s", row.name, exc_info=exc)
            res = Result(row.name, row.fault, row.duration_s,
                         why=f"could not run: {type(exc).__name__}: {exc}")
        else:  # not done (or cancelled from outside: then given up too)
            log.error("fault-matrix row %s: no result within %.0f s wall; the tasks still "
                      "running:\n%s", row.name, limit_s, _stacks())
            task.cancel()
            await asyncio.wait({task}, timeout=30.0)
            res = Result(row.name, row.fault, row.duration_s, abandoned=not task.done(),
                         why=f"could not run: no result within {limit_s:.0f} s wall (the "
                             "stacks of the tasks still running are in the log)")
        out.append(res)
        if on_result is not None:
            on_result(res)
    return out
