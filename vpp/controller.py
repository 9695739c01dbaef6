"""The controller: poll → forecast → plan → enforce → write, on one injected clock.

One asyncio process. Three loops run in a TaskGroup as named tasks:

* ``control``: every ``control.interval_s`` polls the fast points of every device, runs the
  enforcement step and writes setpoints (export-reducing writes first);
* ``planner``: every ``dispatch.interval_s`` re-solves the schedule, issuing forecasts
  first when one is due; fits, forecasts and solves run in the compute executor;
* ``slow_poll``: counters and nameplates, every ``polling.slow_interval_s``.

Storage writes go to their own single-thread executor, so they keep their order and never
block the loop. MQTT publishing is a separate owner task (see :mod:`vpp.mqtt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel

from drivers import (
    Device,
    DeviceError,
    ExceptionReply,
    Health,
    ModbusConnection,
    PollClass,
    Sample,
    SampleQueue,
    WriteError,
    capabilities,
    sunspec,
)
from drivers.poller import cancel_and_wait
from forecasting import Forecast
from vpp.accuracy import LiveAccuracy
from vpp.alarms import Alarm, AlarmBook, Severity
from vpp.config import (
    REQUIRED_CAPABILITIES,
    SUNSPEC,
    BatteryAsset,
    LoadAsset,
    PvAsset,
    SiteConfig,
    WindAsset,
)
from vpp.devices import build_devices
from vpp.dispatch import (
    DispatchInputs,
    Schedule,
    SolveStatus,
    schedule_from_row,
    schedule_payload,
)
from vpp.enforce import BatteryNow, Command, EnforceParams, FlexNow, GeneratorNow, enforce
from vpp.fallback import LAST_GOOD, OPTIMAL, RULE_BASED, last_good, rule_based_plan
from vpp.forecasts import (
    SiteForecasts,
    clear_sky_envelope,
    die_with_parent,
    run_forecasts,
    warm_up,
)
from vpp.history import IntervalHistory
from vpp.instructions import (
    KEEP_ENDED,
    DemandResponse,
    ExportProfile,
    GridInstructions,
    Instruction,
    apply_record,
    to_record,
)
from vpp.metrics import Metrics
from vpp.mqtt import MqttBridge
from vpp.planning import dispatcher_for, flex_windows
from vpp.shardlink import ShardLink
from vpp.storage import Storage
from vpp.trend import Trend, TrendPoint
from vpp.weather import NwpArchive

log = logging.getLogger(__name__)
log_forecasting = logging.getLogger("forecasting")
# a reading beyond its asset's rating by more than this share is implausible (a device
# that lies): generators may overshoot their nameplate a little, never by half
PLAUSIBLE_RATIO = 0.2
# a county's demand may exceed its loads' typical peaks: by this factor at most
LOAD_PEAK_FACTOR = 2.0
# with the PCC meter lost, export estimated from every device's reading keeps control,
# with this much more margin (unmeasured losses, reading skew)
ESTIMATE_MARGIN_RATIO = 0.03
HEARTBEAT_VERIFY_EVERY = 3  # heartbeats read back: one in this many
DOWNSAMPLE_LAG = timedelta(minutes=10)  # buckets are made once this much older
DOWNSAMPLE_EVERY_WALL_S = 60.0
CONTROL_DELAY_STEPS = 20  # a cut's lead covers the slowest of this many recent steps
REACTIVE = "reactive"  # dispatch.planner: no plan, the real-time limiter alone
# flexible-load status register values (drivers/profiles/generic-flex-load.yaml)
FLEX_DONE, FLEX_MISSED = 4, 5


class Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...
    async def sleep_until(self, t: datetime) -> None: ...


def export_range_w(config: SiteConfig) -> tuple[float, float]:
    """The PCC export [W] the county's assets can physically make, widened as a reading's
    plausibility test: at most every generator at nameplate and every battery discharging,
    at least every load at twice its typical peak with every battery and flexible load
    drawing their most (a meter beyond it lies, and is not used)."""
    gen = sum(g.rated_power_w for g in config.of_kind("pv")) + sum(
        w.rated_power_w for w in config.of_kind("wind"))
    bats = config.of_kind("battery")
    draw = (LOAD_PEAK_FACTOR * sum(ld.peak_w or 0.0 for ld in config.of_kind("load"))
            + sum(ld.flexible.max_w for ld in config.of_kind("load") if ld.flexible)
            + sum(b.max_charge_w for b in bats))
    return (-(1 + PLAUSIBLE_RATIO) * draw - PLAUSIBLE_RATIO * gen,
            (1 + PLAUSIBLE_RATIO) * (gen + sum(b.max_discharge_w for b in bats)))


def _floor(t: datetime, step_s: float) -> datetime:
    return datetime.fromtimestamp(t.timestamp() // step_s * step_s, t.tzinfo)


@dataclass
class ControllerState:
    """What the controller knows now; read by the API, the live view and MQTT."""

    export_w: float | None = None
    command: Command | None = None
    schedule: Schedule | None = None
    last_solve: Schedule | None = None
    forecasts: dict[str, Forecast] = field(default_factory=dict)
    fallback_steps: int = 0
    control_steps: int = 0
    last_step_at: datetime | None = None
    written_w: dict[str, float] = field(default_factory=dict)
    export_cap_w: float = 0.0  # the cap in force now [W]
    plan_source: str | None = None  # optimal | last-good | rule-based | reactive
    plan_fallback_reason: str = ""
    operating_mode: str = "auto"  # auto (the configured planner) | reactive (commands)


class Controller:
    """Controls one site through its devices."""

    def __init__(self, config: SiteConfig, *, clock: Clock, storage: Storage | None = None,
                 mqtt: MqttBridge | None = None, metrics: Metrics | None = None,
                 control_interval_s: float | None = None) -> None:
        self.config = config
        self.clock = clock
        self.storage = storage
        self.mqtt = mqtt
        self.metrics = metrics
        self.control_interval_s = control_interval_s or config.control.interval_s
        self.state = ControllerState(export_cap_w=config.pcc.export_cap_w)
        # every sample, stamped at its read, goes through one bounded queue to storage
        self.samples = SampleQueue(maxlen=config.polling.sample_queue_size)
        self.connections: dict[tuple[str, int], ModbusConnection] = {}
        self.shard_link: ShardLink | None = None
        if config.polling.shards:  # polled by shards elsewhere, seen through the broker
            self.shard_link = ShardLink(config, clock=clock)
            self.devices = self.shard_link.devices(self.samples)
        else:
            self.connections, self.devices = build_devices(config, config.assets, clock=clock,
                                                           sink=self.samples)
        self.pv: list[PvAsset] = config.of_kind("pv")
        self.wind: list[WindAsset] = config.of_kind("wind")
        self.generators: list[PvAsset | WindAsset] = [*self.pv, *self.wind]
        self.batteries: list[BatteryAsset] = config.of_kind("battery")
        self.loads: list[LoadAsset] = config.of_kind("load")
        self.base_loads = config.base_loads()
        self.flex_loads = config.flexible_loads()
        fc = config.forecasting
        self.history = IntervalHistory(step_s=fc.step_s, max_intervals=(fc.history_days + 1) * 96)
        self.site_forecasts = SiteForecasts(config)
        self.accuracy = LiveAccuracy(self.site_forecasts.capacity_w,
                                     step_s=config.forecasting.step_s)
        # the PV plants' potential from the start, not only once forecasts are issued:
        # without it the loop must assume nameplate at night and holds everything back
        self._envelope: dict[str, pd.Series] = clear_sky_envelope(
            self.site_forecasts.geometry, clock.now(), 24.0)
        self.weather = NwpArchive(keep_days=fc.history_days + 3)
        self.forecasters = self.site_forecasts.forecasters
        self._geo = self.site_forecasts.geometry
        self.dispatcher = dispatcher_for(config)
        self.steps = self.dispatcher.steps
        # perfect foresight (comparison runs): (start, steps) -> actual means per series [W]
        self.oracle: Any = None
        self._solving: asyncio.Future[Schedule] | None = None
        self._out_of_service: frozenset[str] = frozenset()
        self._uncontrolled_since: dict[str, datetime] = {}  # clock time it was first held
        self._metrics_at: datetime | None = None  # the last metrics update (clock time)
        self.enforce_params = EnforceParams(margin_ratio=config.control.margin_ratio,
                                            soc_taper_s=config.control.soc_taper_s)
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="vpp-compute")
        # forecasts run in a process of their own: fits are Python-heavy, and in a thread
        # they would hold the interpreter the control loop needs every second
        self._forecaster_pool: ProcessPoolExecutor | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="vpp-storage")
        self._next_forecast: datetime | None = None
        self._last_short_term: datetime | None = None
        self.instructions = GridInstructions(export_cap_w=config.pcc.export_cap_w,
                                             import_limit_w=config.pcc.import_limit_w)
        self._replan = asyncio.Event()  # set: plan now, not at the next interval
        self._beat_withheld = False
        self._beats_from: datetime | None = None  # when the heartbeat loop first ran
        self._implausible: set[str] = set()  # assets whose readings their ratings rule out
        self._export_range_w = export_range_w(config)
        # devices whose writes fail while their reads succeed (frozen: they repeat old
        # replies): held until a heartbeat takes again, and read since (clock time), or None
        self._unresponsive: dict[str, datetime | None] = {}
        self._last_export_w: float | None = None  # the last step's PCC reading
        self._refused: dict[str, bool] = {}  # the last failed write was answered, not taken
        self._next_fit: datetime | None = None
        self._stored: dict[tuple[str, str], Sample] = {}
        self._next_publish_wall = 0.0
        self._last_output: dict[str, float] = {}
        self._mqtt_dropped_seen = 0
        self._inflight: dict[tuple[str, PollClass], asyncio.Task[Any]] = {}
        self._heartbeat = 0
        self._written_at: dict[str, datetime] = {}
        self.alarms = AlarmBook()
        self._next_downsample_wall = time.monotonic() + DOWNSAMPLE_EVERY_WALL_S
        self._unsettled: list[asyncio.Future[Any]] = []  # writes a command's answer awaits
        self._alarm_pending: dict[str, datetime] = {}  # condition seen since, not yet raised
        self.trend = Trend(step_s=max(60.0, self.control_interval_s))
        # [s] how long after its due time each recent control step had written its limits
        self._control_delays_s: deque[float] = deque(maxlen=CONTROL_DELAY_STEPS)

    # -- history ----------------------------------------------------------------------------

    def seed_history(self, frame: pd.DataFrame) -> None:
        """Past interval means [W] (columns: series; load as demand, positive)."""
        self.history.seed(frame)

    async def load_history(self) -> None:
        """Load the stored interval means of the last ``history_days``."""
        if self.storage is None:
            return
        since = self.clock.now() - timedelta(days=self.config.forecasting.history_days)
        loop = asyncio.get_running_loop()
        for name in self.forecasters:
            s = await loop.run_in_executor(self._io, self.storage.read_interval_means, name,
                                           since)
            if len(s):
                self.history.seed(s.to_frame(name))

    # -- the loops --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        self._forecast_pool()  # the forecast process starts while the devices are found
        await self.load_history()
        await self.restore()
        try:
            await self.discover()
        except Exception:  # never fatal: undiscovered devices are held, and retried
            log.exception("SunSpec discovery failed; retried on the slow poll")
        await asyncio.gather(*(d.poll(PollClass.ONCE) for d in self.devices.values()))
        await self.write_fallback_limits()
        beats = [d.profile.heartbeat.interval_s for d in self.devices.values()
                 if d.profile.heartbeat is not None]
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._every(self.control_interval_s, self.control_step),
                                        name="vpp.control"),
                         tg.create_task(self._every(self.config.dispatch.interval_s,
                                                    self.plan_step, wake=self._replan),
                                        name="vpp.planner"),
                         tg.create_task(self._every(self.config.polling.slow_interval_s,
                                                    self.slow_poll), name="vpp.slow_poll")]
                if beats:
                    tasks.append(tg.create_task(self._every(min(beats), self.heartbeat_step),
                                                name="vpp.heartbeat"))
                await stop.wait()
                # cancelled until they end: a loop may swallow one cancellation
                await cancel_and_wait(tasks)
        finally:
            await self.close()

    async def _every(self, interval_s: float, step: Any, *,
                     wake: asyncio.Event | None = None) -> None:
        """Run ``step`` every ``interval_s`` (and at once when ``wake`` is set); an error is
        logged and counted, never fatal."""
        nxt = self.clock.now()
        while True:
            ahead_s = (nxt - self.clock.now()).total_seconds()
            # the clock was set back (more than a step: a sleep that ends a little early
            # is no clock step, and taken for one it ran the step twice): carry on from now
            if ahead_s > 2 * interval_s:
                log.warning("%s: the clock went back %.0f s; the loop goes on from now",
                            step.__name__, ahead_s - interval_s)
                nxt = self.clock.now()
            woken = False
            if wake is None:
                await self.clock.sleep_until(nxt)
            else:  # until woken or nxt: later in wall time if the clock is held, but a
                # clock set back meanwhile is not waited out
                while not woken and 0 < (left_s := (nxt - self.clock.now()).total_seconds()
                                         ) <= 2 * interval_s:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left_s / self.clock.speed):
                            woken = await wake.wait()
                wake.clear()
            started = self.clock.now()
            try:
                await step()
            except DeviceError as exc:
                log.warning("%s: %s", step.__name__, exc)
            except Exception:
                log.exception("%s failed; the loop goes on", step.__name__)
                if self.metrics is not None:
                    self.metrics.loop_errors.labels(self.config.site.id, step.__name__).inc()
            if step == self.control_step:  # a delay beyond a step is a stall or a clock
                # stepped, not the loop's pace (the next step then starts at once)
                self._control_delays_s.append(min(interval_s, max(
                    0.0, (self.clock.now() - nxt).total_seconds())))
                if self.metrics is not None:
                    self.metrics.control_lag.set(max(0.0, (started - nxt).total_seconds())
                                                 / self.clock.speed)
            # a step woken early starts the interval again (adding it to a time still ahead
            # would look like a clock set back, and run the step again at once)
            nxt = (started if woken else nxt) + timedelta(seconds=interval_s)
            if nxt < self.clock.now():  # too far behind: skip missed steps, do not burst
                nxt = self.clock.now()

    def _poll_done(self, t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s failed: %r", t.get_name(), t.exception())
            if self.metrics is not None:
                self.metrics.loop_errors.labels(self.config.site.id, "poll").inc()

    def _start_polls(self, poll_class: PollClass) -> dict[str, asyncio.Task[Any]]:
        """A new poll task per device whose last poll has ended (only those are returned):
        a device still busy with an older poll is not asked again, and its late answer,
        read before this step's writes, is not taken as this step's."""
        tasks = {}
        for aid, dev in self.devices.items():
            t = self._inflight.get((aid, poll_class))
            if t is None or t.done():
                t = asyncio.create_task(self._timed_poll(dev, poll_class),
                                        name=f"vpp.poll.{aid}")
                t.add_done_callback(self._poll_done)
                self._inflight[(aid, poll_class)] = t
                tasks[aid] = t
        return tasks

    async def _timed_poll(self, dev: Device, poll_class: PollClass) -> Any:
        t0 = time.perf_counter()
        out = await dev.poll(poll_class)
        if self.metrics is not None and poll_class == PollClass.FAST:
            self.metrics.poll_latency[dev.asset_id].set(time.perf_counter() - t0)
        return out

    async def _poll_fast(self) -> set[str]:
        """Poll every device's fast points, waiting at most a share of the control step;
        returns the devices read in time by a poll of this step (a slow or dead one cannot
        stall the others, and is held)."""
        tasks = self._start_polls(PollClass.FAST)
        if not tasks:
            return set()
        deadline_s = max(0.05, 0.8 * self.control_interval_s / self.clock.speed)
        done, _ = await asyncio.wait(tasks.values(), timeout=deadline_s)
        return {aid for aid, t in tasks.items()
                if t in done and not t.cancelled() and t.exception() is None}

    async def discover(self) -> None:
        """Build the profiles of SunSpec devices from their model chains (retried later)."""
        for a in self.config.assets:
            dev = self.devices[a.id]
            if a.profile != SUNSPEC or dev.profile.points:
                continue
            try:
                blocks = await sunspec.discover(dev.connection, a.unit_id)
            except DeviceError as exc:
                log.warning("%s: SunSpec discovery failed: %s", a.id, exc)
                continue
            profile = sunspec.build_profile(blocks, kind=a.kind, name=SUNSPEC)
            lacking = REQUIRED_CAPABILITIES[a.kind] - profile.capabilities
            if lacking:
                log.error("%s: SunSpec models %s lack %s; the asset is held", a.id,
                          [b.model_id for b in blocks], sorted(c.value for c in lacking))
                continue
            new = Device(asset_id=a.id, profile=profile, connection=dev.connection,
                         unit_id=a.unit_id, now=self.clock.now, sink=self.samples)
            await new.poll(PollClass.ONCE)
            await new.poll(PollClass.FAST)
            if a.kind == "battery":
                await capabilities.make_setpoints_safe(new)
            else:
                await capabilities.make_limits_immediate(new)
            self.devices[a.id] = new
            log.info("%s: SunSpec models %s", a.id, [b.model_id for b in blocks])

    async def slow_poll(self) -> None:
        await self.discover()
        for d in self.devices.values():
            d.unsupported.clear()  # a refusal may have been passing (a device booting)
        self._start_polls(PollClass.SLOW)
        await self.write_fallback_limits(only_if_changed=True)

    # -- the export cap ---------------------------------------------------------------------

    def instruct_cap(self, effective: datetime, export_cap_w: float) -> None:
        """A grid instruction: from ``effective`` on, the export cap is ``export_cap_w``
        [W]. Plans made from now on keep it; enforcement meets it as it takes effect."""
        self.instructions.set_cap(effective, export_cap_w)
        self._keep_instruction((effective, export_cap_w))
        log.info("export cap %.1f MW from %s", export_cap_w / 1e6, effective.isoformat())
        self._replan.set()

    def instruct_demand_response(self, dr: DemandResponse) -> None:
        """A grid instruction: reduce export and/or import by the given amounts in a window."""
        self.instructions.add_demand_response(dr)
        self._keep_instruction(dr)
        log.info("demand response %s to %s: export -%.1f MW, import -%.1f MW",
                 dr.start.isoformat(), dr.end.isoformat(), dr.export_reduction_w / 1e6,
                 dr.import_reduction_w / 1e6)
        self._replan.set()

    def instruct_export_profile(self, profile: ExportProfile) -> None:
        """A grid instruction: export this profile where the cap allows."""
        self.instructions.set_profile(profile)
        self._keep_instruction(profile)
        log.info("export profile of %d steps from %s", len(profile.export_w),
                 profile.start.isoformat())
        self._replan.set()

    def export_cap_at(self, t: datetime) -> float:
        """The cap in force at ``t`` [W]: the last cap instruction effective by then (else
        the configured cap), less any demand response in force."""
        return self.instructions.cap_at(t)

    def cut_lead_s(self) -> float:
        """How far ahead the real-time loop meets a cut of the cap [s]: the next step may
        be the last before it takes effect, that step writes its limits as late after its
        due time as recent steps did (up to a step), and the plant then needs up to a step
        to follow. Milliseconds of delay at real time; at ×600 a busy host's few milliseconds
        late are seconds of simulated time, and a fixed lead of two steps was missed."""
        return 2 * self.control_interval_s + max(self._control_delays_s, default=0.0)

    def lowest_cap_w(self) -> float:
        """The lowest cap in force now or instructed for later [W]."""
        return self.instructions.lowest_cap_from(self.clock.now())

    async def write_fallback_limits(self, *, only_if_changed: bool = False) -> None:
        """Give each generator that has one a fallback limit: its share of the cap, applied
        by the device itself if heartbeats stop, so a dead controller still keeps the cap.
        Generators without a fallback may run at full power then: their rating comes off
        the budget first. Re-asserted on every slow poll (a device may have rebooted)."""
        has = {g.id: capabilities.has_fallback_limit(self.devices[g.id]) for g in self.generators}
        with_fallback = [g for g in self.generators if has[g.id]]
        if not with_fallback:
            return
        budget = self.lowest_cap_w() * (1.0 - self.config.control.margin_ratio) - sum(
            g.rated_power_w for g in self.generators if not has[g.id])
        if budget <= 0:
            log.error("generators without a fallback limit can exceed the cap on their own "
                      "if the controller stops; the others fall back to 0")
        total = sum(g.rated_power_w for g in with_fallback)
        for g in with_fallback:
            share = max(0.0, budget) * g.rated_power_w / total
            now = capabilities.fallback_limit_w(self.devices[g.id])
            if only_if_changed and now is not None and abs(now - share) <= 0.01 * share + 1:
                continue
            await self._write(g.id, capabilities.FALLBACK_W, share, record=False)

    async def heartbeat_step(self) -> None:
        """Beat only while control works: no successful step for a minute (half a typical
        device watchdog), no beat, and the devices' watchdogs take over."""
        now, last = self.clock.now(), self.state.last_step_at
        if self._beats_from is None:
            self._beats_from = now
        late_s = max(60.0, 3 * self.control_interval_s)
        if last is None or (now - last).total_seconds() > late_s:
            # at the start, no step yet is no fault until the time for one has passed
            since = last if last is not None else self._beats_from
            if not self._beat_withheld and (now - since).total_seconds() > late_s:
                log.warning("no control step succeeded lately: heartbeat withheld")
                self._beat_withheld = True
            return
        if self._beat_withheld:
            log.warning("control steps succeed again: heartbeat resumed")
        self._beat_withheld = False
        self._heartbeat = (self._heartbeat + 1) % 0x10000
        beating = [aid for aid, d in self.devices.items() if d.profile.heartbeat is not None]
        # a device that answers reads but refuses writes, or does not take them (frozen,
        # repeating old replies), is found by its beats, and held: a refusal at any beat,
        # a beat not taken at the beats read back (every few, to spare the links)
        verify = self._heartbeat % HEARTBEAT_VERIFY_EVERY == 0
        took = await asyncio.gather(*(
            self._write(aid, self.devices[aid].profile.heartbeat.point,  # type: ignore[union-attr]
                        float(self._heartbeat), record=False, verify=verify)
            for aid in beating))
        now = self.clock.now()
        for aid, ok in zip(beating, took, strict=True):
            dev = self.devices[aid]
            if not ok and dev.health is not Health.OFFLINE and self._refused.get(aid):
                if aid not in self._unresponsive or self._unresponsive[aid] is not None:
                    log.warning("%s answers reads but does not take writes: held, its "
                                "readings not trusted", aid)
                self._unresponsive[aid] = None
            elif ok and verify and aid in self._unresponsive and self._unresponsive[aid] is None:
                self._unresponsive[aid] = now  # trusted again once read after this
            self.set_alarm(f"device_unresponsive:{aid}", aid in self._unresponsive,
                           f"{aid} answers reads but does not take writes (frozen?): held")

    def _responsive(self, asset_id: str) -> bool:
        """False for a device whose writes fail while its reads succeed, until it has taken
        a heartbeat and been read after it (a reply served before that may be a frozen one)."""
        if asset_id not in self._unresponsive:
            return True
        since = self._unresponsive[asset_id]
        s = self.devices[asset_id].latest.get("active_power_w")
        if since is None or s is None or s.ts <= since:
            return False
        del self._unresponsive[asset_id]
        self.set_alarm(f"device_unresponsive:{asset_id}", False,
                       f"{asset_id} takes writes again")
        return True

    def _forecast_pool(self) -> ProcessPoolExecutor:
        if self._forecaster_pool is None:
            self._forecaster_pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent, initargs=(os.getpid(),))
            self._forecaster_pool.submit(warm_up)
        return self._forecaster_pool

    async def close(self) -> None:
        await cancel_and_wait(list(self._inflight.values()))
        for c in self.connections.values():
            c.close()
        if self.shard_link is not None:
            await self.shard_link.close()
        loop = asyncio.get_running_loop()
        # a running fit or solve is not waited for; queued storage writes still finish
        await loop.run_in_executor(None, partial(self._compute.shutdown, wait=False,
                                                 cancel_futures=True))
        if self._forecaster_pool is not None:
            # a round in progress is pure computation: stopped, not waited for (its CPU
            # belongs to whatever runs next on this machine); then the pool's manager
            # thread, which reaps the process, is waited for (off the loop: on a busy host
            # the reaping took seconds, and a thread outlived the controller)
            for proc in list(getattr(self._forecaster_pool, "_processes", {}).values()):
                proc.terminate()
            await loop.run_in_executor(None, partial(self._forecaster_pool.shutdown,
                                                     wait=True, cancel_futures=True))
        if self.storage is not None:  # the database still away at shutdown: stop waiting
            self.storage.stop_retrying()
        await loop.run_in_executor(None, self._io.shutdown, True)

    def _store(self, fn: Any, *args: Any) -> asyncio.Future[Any] | None:
        """Queue a storage write; a failure is logged and counted, not lost silently."""
        if self.storage is None:
            return None
        fut = asyncio.get_running_loop().run_in_executor(self._io, self.storage.retrying,
                                                         fn, *args)

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("storage %s failed: %s", fn.__name__, f.exception())
                if self.metrics is not None:
                    self.metrics.storage_errors.inc()
        fut.add_done_callback(done)
        return fut

    def _keep(self, fn: Any, *args: Any) -> None:
        """A write a command's answer waits for (:meth:`settle`): what is acknowledged is
        stored."""
        fut = self._store(fn, *args)
        if fut is not None:
            self._unsettled.append(fut)

    async def settle(self) -> bool:
        """Wait for the writes of the commands applied so far; False if one failed."""
        pending, self._unsettled = self._unsettled, []
        done = await asyncio.gather(*pending, return_exceptions=True)
        return not any(isinstance(d, BaseException) for d in done)

    def _keep_instruction(self, ins: Instruction) -> None:
        if self.storage is not None:
            kind, ends, body = to_record(ins)
            self._keep(self.storage.write_instruction, self.clock.now(), kind, ends, body)

    async def restore(self) -> None:
        """Resume from storage: the grid's instructions still of use, the operating mode,
        alarm state, and the last plan while it still covers now (as last-good)."""
        st = self.storage
        if st is None:
            return
        loop, now = asyncio.get_running_loop(), self.clock.now()
        rows = await loop.run_in_executor(self._io, st.read_instructions, now - KEEP_ENDED)
        for kind, body in rows:
            try:
                apply_record(self.instructions, kind, body)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("stored %s instruction not resumed (%s): %s", kind, exc, body)
        settings = await loop.run_in_executor(self._io, st.read_settings)
        mode = settings.get("operating_mode", "auto")
        if mode in ("auto", REACTIVE):
            self.state.operating_mode = mode
        self.alarms.load(await loop.run_in_executor(self._io, st.read_alarms))
        row = await loop.run_in_executor(self._io, st.latest_plan)
        plan = last_good(schedule_from_row(row), now) if row is not None else None
        if plan is not None:
            self.state.schedule, self.state.plan_source = plan, plan.source
            self.state.plan_fallback_reason = "resumed after a restart"
        self.state.export_cap_w = self.export_cap_at(now)
        if rows or plan is not None or "operating_mode" in settings:
            log.warning("resumed from storage: %d instruction(s), mode %s, %s", len(rows),
                        self.state.operating_mode, "the plan of " + plan.created_at.isoformat()
                        if plan is not None else "no plan still in force")

    # -- control ----------------------------------------------------------------------------

    def _potential(self, asset: PvAsset | WindAsset, now: datetime) -> float:
        if isinstance(asset, WindAsset):
            return asset.rated_power_w
        env = self._envelope.get(asset.id)
        if env is None or env.empty:
            return asset.rated_power_w
        t = pd.Timestamp(now).floor("1min")
        window = env[(env.index >= t) & (env.index <= t + pd.Timedelta(minutes=2))]
        if window.empty:
            return asset.rated_power_w
        margin = self.config.control.pv_potential_margin_ratio
        return float(min(asset.rated_power_w, window.max() * margin))

    def _planned(self, battery_id: str, now: datetime) -> float:
        sch = self.state.schedule
        if sch is None:
            return 0.0
        k = sch.step_at(now)
        if k is None:
            return 0.0
        return float(sch.battery_w[battery_id][k])

    async def control_step(self) -> None:
        """Poll, enforce, write: one step of the real-time loop."""
        now = self.clock.now()
        polled = await self._poll_fast()
        meter = self.devices[self.config.pcc.meter]
        s = meter.latest.get("export_w")
        fresh = self.config.pcc.meter in polled and s is not None and s.usable and (
            (now - s.ts).total_seconds() <= self.config.control.pcc_stale_s)
        export = s.value if fresh and s is not None else None
        if export is not None:  # a meter that lies is flagged, not trusted
            export = self._plausible(self.config.pcc.meter, export, *self._export_range_w)
            fresh = export is not None
        # the same reading as the last step's tells nothing new (a meter frozen before its
        # frozen check calls it stale): no limit is raised on it, or each step would hand
        # out the same room again on top of the last
        repeated = export is not None and export == self._last_export_w
        self._last_export_w = export
        written = self.state.written_w
        gens = []
        for g in self.generators:
            dev = self.devices[g.id]
            out, limit = dev.value("active_power_w"), capabilities.active_power_limit_w(dev)
            out = self._plausible(g.id, out, -PLAUSIBLE_RATIO * g.rated_power_w,
                                  (1 + PLAUSIBLE_RATIO) * g.rated_power_w)
            usable = (g.id in polled and out is not None and limit is not None
                      and self._responsive(g.id))
            if out is not None:
                self._last_output[g.id] = out
            gens.append(GeneratorNow(
                id=g.id, output_w=out if out is not None else self._last_output.get(g.id, 0.0),
                potential_w=self._potential(g, now), rated_power_w=g.rated_power_w,
                limit_w=limit if limit is not None else written.get(g.id, g.rated_power_w),
                controllable=usable, max_step_w=np.inf if g.ramp_rate_w_per_s is None
                else g.ramp_rate_w_per_s * self.control_interval_s))
        bats = []
        for b in self.batteries:
            dev = self.devices[b.id]
            p, soc = dev.value("active_power_w"), dev.value("soc")
            p = self._plausible(b.id, p, -(1 + PLAUSIBLE_RATIO) * b.max_charge_w,
                                (1 + PLAUSIBLE_RATIO) * b.max_discharge_w)
            usable = (b.id in polled and p is not None and soc is not None
                      and not capabilities.in_fault(dev) and self._responsive(b.id))
            bats.append(BatteryNow(
                id=b.id, power_w=p if p is not None else written.get(b.id, 0.0),
                soc=soc if soc is not None else b.soc_min, capacity_wh=b.capacity_wh,
                max_charge_w=b.max_charge_w, max_discharge_w=b.max_discharge_w,
                soc_min=b.soc_min, soc_max=b.soc_max, planned_w=self._planned(b.id, now),
                controllable=usable))
        flexes = self._flex_now(polled, now)
        self._note_availability(gens, bats, flexes)
        estimated = export is None
        if estimated:
            export = self._export_from_devices(polled, gens, bats)
            estimated = export is not None
        # a cut announced for the next steps is met already
        cap = min(self.export_cap_at(now), self.export_cap_at(
            now + timedelta(seconds=self.cut_lead_s())))
        self.state.export_cap_w = self.export_cap_at(now)
        params = self.enforce_params
        if estimated:
            params = dataclasses.replace(
                params, margin_ratio=params.margin_ratio + ESTIMATE_MARGIN_RATIO)
        cmd = enforce(export_w=None if repeated else export, cap_w=cap, generators=gens,
                      batteries=bats, params=params, flex_loads=flexes)
        if repeated:
            cmd.notes.append("PCC reading unchanged since the last step: nothing raised on it")
        if estimated:
            cmd.notes.append("PCC meter lost: export estimated from every device's reading")
        await self._apply(cmd, gens, bats, flexes)
        st = self.state
        st.export_w, st.command, st.last_step_at = export, cmd, now
        st.control_steps += 1
        if st.schedule is None or st.schedule.step_at(now) is None or st.plan_source in (
                LAST_GOOD, RULE_BASED):
            st.fallback_steps += 1
            if self.metrics is not None:
                self.metrics.fallbacks.inc()
        self._record(now, export)
        self._watch(now, export, fresh, gens, bats)

    def _flex_now(self, polled: set[str], now: datetime) -> list[FlexNow]:
        """The flexible loads the plan steers (none with the reactive planner: their own
        timers run them), as the enforcement step takes them."""
        if self.config.dispatch.planner == REACTIVE:
            return []
        out = []
        for ld in self.flex_loads:
            dev = self.devices[ld.id]
            p, due, status = (dev.value("active_power_w"), dev.value("energy_due_wh"),
                              dev.value("status"))
            assert ld.flexible is not None
            p = self._plausible(ld.id, p, -(1 + PLAUSIBLE_RATIO) * ld.flexible.max_w,
                                PLAUSIBLE_RATIO * ld.flexible.max_w)
            usable = (ld.id in polled and p is not None and due is not None
                      and self._responsive(ld.id))
            done = status is not None and int(status) in (FLEX_DONE, FLEX_MISSED)
            out.append(FlexNow(id=ld.id, draw_w=max(0.0, -(p or 0.0)), max_w=ld.flexible.max_w,
                               due_wh=0.0 if done or due is None else due,
                               planned_draw_w=self._planned_flex(ld, now),
                               controllable=usable))
        return out

    def _planned_flex(self, ld: LoadAsset, now: datetime) -> float:
        """The plan's draw for this step [W, positive]; below the load's least running
        power it runs at that power or not at all, whichever is nearer."""
        sch = self.state.schedule
        k = None if sch is None else sch.step_at(now)
        if sch is None or k is None or ld.id not in sch.flex_w or ld.flexible is None:
            return 0.0
        draw = float(sch.flex_w[ld.id][k])
        least = ld.flexible.min_w
        if draw < least:
            return least if draw >= least / 2 else 0.0
        return draw

    def _note_availability(self, gens: list[GeneratorNow], bats: list[BatteryNow],
                           flexes: list[FlexNow]) -> None:
        """An asset lost or back changes the plan's numbers: re-plan at once. Lost means
        out of control for ``control.asset_lost_after_s`` (the real-time loop holds it
        from the first step; a missed poll or two under load does not re-plan); back
        means in control again."""
        now = self.clock.now()
        state = [*((g.id, g.controllable) for g in gens), *((b.id, b.controllable) for b in bats),
                 *((f.id, f.controllable) for f in flexes)]
        for aid, controllable in state:
            if controllable:
                self._uncontrolled_since.pop(aid, None)
            else:
                self._uncontrolled_since.setdefault(aid, now)
        after = self.config.control.asset_lost_after_s
        out = frozenset(a for a, t in self._uncontrolled_since.items()
                        if (now - t).total_seconds() >= after)
        if out != self._out_of_service:
            lost, back = sorted(out - self._out_of_service), sorted(self._out_of_service - out)
            log.info("assets out of control %s, back %s: re-planning", lost, back)
            self._out_of_service = out
            self._replan.set()

    def _export_from_devices(self, polled: set[str], gens: list[GeneratorNow],
                             bats: list[BatteryNow]) -> float | None:
        """Export [W] as the sum of every generator, battery and load read good (and
        plausible) in this step, generator convention; None when any of them is not."""
        if not all(g.controllable for g in gens) or any(
                b.id not in polled or self.devices[b.id].value("active_power_w") is None
                for b in bats):
            return None
        loads = [self.devices[ld.id].value("active_power_w") if ld.id in polled else None
                 for ld in self.loads]
        if any(v is None for v in loads):
            return None
        return (sum(g.output_w for g in gens) + sum(b.power_w for b in bats)
                + sum(v for v in loads if v is not None))

    def _plausible(self, asset_id: str, value: float | None, lo: float,
                   hi: float) -> float | None:
        """A reading the device calls good but its asset's ratings rule out is not used
        (a device that lies is flagged, never trusted)."""
        if value is None:
            return None
        if lo <= value <= hi:
            self._implausible.discard(asset_id)
            return value
        if asset_id not in self._implausible:
            log.warning("%s reads %.0f W, outside what its ratings allow [%.0f, %.0f] W: "
                        "not used", asset_id, value, lo, hi)
            self._implausible.add(asset_id)
        return None

    def _unchanged(self, asset_id: str, new: float, readback: float | None,
                   scale: float) -> bool:
        """A setpoint within the deadband of both what was written and what the device
        says, and written recently enough that a reversion timer cannot lapse."""
        band = self.config.control.setpoint_deadband_ratio * scale
        written = self.state.written_w.get(asset_id)
        at = self._written_at.get(asset_id)
        fresh = at is not None and (self.clock.now() - at).total_seconds() < (
            self.config.control.limit_revert_s / 3)
        return (fresh and written is not None and abs(new - written) <= band
                and readback is not None and abs(new - readback) <= band)

    async def _apply(self, cmd: Command, gens: list[GeneratorNow], bats: list[BatteryNow],
                     flexes: list[FlexNow]) -> None:
        """Write what changed: first what lowers export; what raises it only if that worked."""
        lower: list[tuple[str, str, float]] = []
        raise_: list[tuple[str, str, float]] = []
        for g in gens:
            new = cmd.limits_w[g.id]
            if not g.controllable or self._unchanged(g.id, new, g.limit_w, g.rated_power_w):
                continue
            (lower if new < g.limit_w else raise_).append((g.id, "active_power_limit_w", new))
        for b in bats:
            new = cmd.battery_w[b.id]
            scale = max(b.max_charge_w, b.max_discharge_w, 1.0)
            readback = self.devices[b.id].value("power_setpoint_w")
            if not b.controllable or self._unchanged(b.id, new, readback, scale):
                continue
            (lower if new < b.power_w else raise_).append((b.id, "power_setpoint_w", new))
        for f in flexes:
            draw = cmd.flex_draw_w[f.id]
            readback = self.devices[f.id].value("power_setpoint_w")
            if not f.controllable or self._unchanged(
                    f.id, -draw, readback, f.max_w):
                continue
            # generator convention on the wire: drawing is negative; more draw lowers export
            (lower if draw > f.draw_w else raise_).append((f.id, "power_setpoint_w", -draw))
        ok = await asyncio.gather(*(self._write(a, p, v) for a, p, v in lower))
        if not all(ok):
            log.warning("a write that lowers export failed: export-raising writes wait a step")
            return
        await asyncio.gather(*(self._write(a, p, v) for a, p, v in raise_))

    async def _write(self, asset_id: str, point: str, value: float, *, record: bool = True,
                     verify: bool = True) -> bool:
        m = self.metrics
        # verified by read-back, retried within half a control step (wall time)
        deadline_s = 0.5 * self.control_interval_s / self.clock.speed
        dev = self.devices[asset_id]
        try:
            if point == capabilities.LIMIT_W:
                res = await capabilities.set_active_power_limit_w(
                    dev, value, revert_s=self.config.control.limit_revert_s,
                    deadline_s=deadline_s, verify=verify)
            elif point == capabilities.SETPOINT_W:
                res = await capabilities.set_battery_power_w(
                    dev, value, revert_s=self.config.control.limit_revert_s,
                    deadline_s=deadline_s, verify=verify)
            elif point == capabilities.FALLBACK_W:
                res = await capabilities.set_fallback_limit_w(dev, value, deadline_s=deadline_s,
                                                              verify=verify)
            else:
                res = await dev.write(point, value, deadline_s=deadline_s, verify=verify)
        except (DeviceError, ValueError, PermissionError, KeyError) as exc:
            # answered, and not taken: refused by the device, or read back different
            # (a timeout is the link's, and the poll's health says so)
            self._refused[asset_id] = isinstance(exc, WriteError) and isinstance(
                exc.__cause__, ExceptionReply | WriteError)
            log.warning("write %s.%s = %.0f failed: %s", asset_id, point, value, exc)
            if m is not None:
                m.writes[(asset_id, "failed")].inc()
            return False
        if record:
            self.state.written_w[asset_id] = res.written
            self._written_at[asset_id] = self.clock.now()
        if m is not None:
            m.writes[(asset_id, "clamped" if res.clamped else "ok")].inc()
        return True

    def _record(self, now: datetime, export: float | None) -> None:
        closed: list[tuple[str, datetime, float]] = []

        def add(series: str, value: float | None) -> None:
            if value is not None:
                c = self.history.add(series, now, value)
                if c is not None:
                    closed.append((series, c[0], c[1]))

        for g in self.generators:
            # forecasts learn what the plant could give, never a curtailed output
            add(g.id, self.devices[g.id].value("available_power_w"))
        if self.base_loads:  # the county load: flexible loads are planned, not forecast
            vals = [self.devices[ld.id].value("active_power_w") for ld in self.base_loads]
            if all(v is not None for v in vals):
                add("load", -sum(v for v in vals if v is not None))
        add("export", export)
        for series, start, mean in closed:
            self.accuracy.measured(series, start, mean)
        if self.storage is not None and closed:
            self._store(self.storage.write_interval_means, closed)
        self._update_metrics(export)
        self._store_samples()
        self._publish_telemetry(now)

    def _store_samples(self) -> None:
        """Drain the sample queue into storage: a point is stored once per
        ``storage.telemetry_interval_s``, and at once whenever its quality changes."""
        batch = self.samples.take()
        if self.storage is None or not batch:
            return
        every_s = self.config.storage.telemetry_interval_s
        keep = []
        for s in batch:
            key = (s.asset_id, s.point)
            last = self._stored.get(key)
            if last is None or last.quality != s.quality or (
                    (s.ts - last.ts).total_seconds() >= every_s):
                self._stored[key] = s
                keep.append(s)
        if keep:
            self._store(self.storage.write_telemetry, keep)

    def _update_metrics(self, export: float | None) -> None:
        m = self.metrics
        if m is None:
            return
        cmd = self.state.command
        now = self.clock.now()
        dt_s = 0.0 if self._metrics_at is None else (now - self._metrics_at).total_seconds()
        self._metrics_at = now
        for g in self.generators:
            dev = self.devices[g.id]
            top = 1.2 * g.rated_power_w  # a reading beyond its ratings is not counted
            avail, out = dev.value("available_power_w"), dev.value("active_power_w")
            if avail is not None and 0.0 <= avail <= top and g.id not in self._implausible:
                m.gen_available[g.id].set(avail)
                if out is not None and 0.0 <= out <= top and dt_s > 0:
                    m.curtailed[g.id].inc(max(0.0, avail - out) * dt_s)
        for aid, dev in self.devices.items():
            m.up[aid].set(1.0 if dev.health.value == "online" else 0.0)
            m.available[aid].set(0.0 if aid in self._out_of_service else 1.0)
            p = dev.value("active_power_w")
            if p is not None:
                m.power[aid].set(p)
        for b in self.batteries:
            soc = self.devices[b.id].value("soc")
            if soc is not None:
                m.soc[b.id].set(soc)
            if cmd is not None:
                m.setpoint[b.id].set(cmd.battery_w[b.id])
        if cmd is not None:
            for gid, lim in cmd.limits_w.items():
                m.limit[gid].set(lim)
            m.control_mode.state(cmd.mode.value)
            if cmd.worst_export_w == cmd.worst_export_w:
                m.worst_export.set(cmd.worst_export_w)
        if export is not None:
            m.pcc_export.set(export)
        m.export_cap.set(self.state.export_cap_w)
        for (series, horizon), acc in self.accuracy.accuracy().items():
            m.set_accuracy(series, horizon, acc)
        m.control_steps.inc()
        if self.mqtt is not None:
            m.mqtt_buffer.set(self.mqtt.buffered)
            m.mqtt_dropped.inc(self.mqtt.dropped - self._mqtt_dropped_seen)
            self._mqtt_dropped_seen = self.mqtt.dropped

    def _publish_telemetry(self, now: datetime) -> None:
        if self.mqtt is None:
            return
        wall = time.monotonic()
        min_wall = max(0.5, self.config.mqtt.telemetry_interval_s / self.clock.speed)
        if wall < self._next_publish_wall:
            return
        self._next_publish_wall = wall + min_wall
        for aid, dev in self.devices.items():
            self.mqtt.publish(f"telemetry/{aid}", {
                "ts": now, "asset": aid, "health": dev.health.value,
                "points": {n: {"value": s.value, "unit": s.unit, "quality": s.quality.value,
                               "ts": s.ts} for n, s in dev.latest.items()}})
        cmd = self.state.command
        self.mqtt.publish("pcc", {
            "ts": now, "export_w": self.state.export_w,
            "export_cap_w": self.state.export_cap_w,
            "mode": cmd.mode.value if cmd else None,
            "worst_export_w": cmd.worst_export_w if cmd else None})

    # -- alarms, the trend and commands --------------------------------------------------

    def _watch(self, now: datetime, export: float | None, pcc_fresh: bool,
               gens: list[GeneratorNow], bats: list[BatteryNow]) -> None:
        """Raise and clear the alarms of what this step saw; note the trend point."""
        delay = self.config.control.asset_lost_after_s
        for aid, dev in self.devices.items():
            self.set_alarm(f"device_offline:{aid}", dev.health.value == "offline",
                           f"{aid} is offline: neither read nor controlled", after_s=delay)
        st = self.state
        self.set_alarm("pcc_meter_stale", not pcc_fresh,
                       "the PCC meter is not read: export estimated from the devices or "
                       "generation held", severity=Severity.CRITICAL, after_s=delay)
        # raised above the cap; cleared once back inside half the enforcement margin
        was = "export_cap_exceeded" in self.alarms.active_keys()
        edge = st.export_cap_w * (1.0 - self.config.control.margin_ratio / 2 if was else 1.0)
        over = export is not None and export > edge
        self.set_alarm("export_cap_exceeded", over,
                       f"export {0 if export is None else export / 1e6:.2f} MW above the cap "
                       f"{st.export_cap_w / 1e6:.2f} MW", severity=Severity.CRITICAL)
        if not self.trend.due(now):
            return
        sch, curtailed = st.schedule, None
        k = None if sch is None else sch.step_at(now)
        avail = [self.devices[g.id].value("available_power_w") for g in gens]
        if all(a is not None for a in avail):
            curtailed = sum(max(0.0, (a or 0.0) - g.output_w) for a, g in zip(avail, gens,
                                                                               strict=True))
        self.trend.add(TrendPoint(
            ts=now, export_w=export, export_cap_w=st.export_cap_w,
            planned_export_w=None if sch is None or k is None or not len(
                sch.export_expected_w) else float(sch.export_expected_w[k]),
            uncontrolled_export_w=None if export is None or curtailed is None else
            export + curtailed - sum(b.power_w for b in bats),
            curtailed_w=curtailed, soc={b.id: self.devices[b.id].value("soc") for b in bats}))

    def set_alarm(self, key: str, active: bool, message: str, *,
                  severity: Severity = Severity.WARNING, after_s: float = 0.0) -> None:
        """The condition behind alarm ``key`` is (not) present; raised once it has been
        present for ``after_s`` (a missed poll or two under load is not an alarm)."""
        now = self.clock.now()
        if not active:
            self._alarm_pending.pop(key, None)
        elif after_s > 0 and key not in self.alarms.active_keys():
            since = self._alarm_pending.setdefault(key, now)
            if (now - since).total_seconds() < after_s:
                return
        changed = self.alarms.set(key, active, now, message=message, severity=severity)
        if changed is not None:
            (log.warning if active else log.info)("alarm %s %s: %s", key,
                                                  "raised" if active else "cleared", message)
            self._alarm_changed(changed)

    def _alarm_changed(self, alarm: Alarm) -> None:
        if self.storage is not None:
            self._store(self.storage.write_alarm, alarm.as_dict())
        if self.mqtt is not None:
            self.mqtt.publish(f"alarm/{alarm.key}", alarm.as_dict(), qos=1, retain=True)

    def acknowledge_alarm(self, key: str, by: str) -> Alarm:
        """An operator saw it (raises :class:`vpp.alarms.UnknownAlarmError`)."""
        alarm = self.alarms.acknowledge(key, by, self.clock.now())
        self._alarm_changed(alarm)
        return alarm

    def reload(self, new: SiteConfig) -> tuple[list[str], list[str]]:
        """Take a re-read configuration: what can change live changes (the connection's
        caps, the enforcement margin and SOC taper); anything else needs a restart and is
        only reported. Returns (applied, needing a restart), as dotted field names."""
        old = self.config
        live = {"pcc.export_cap_w", "pcc.import_limit_w", "control.margin_ratio",
                "control.soc_taper_s"}
        changed: list[str] = []
        for section in type(old).model_fields:
            o, n = getattr(old, section), getattr(new, section)
            if o == n:
                continue
            if isinstance(o, BaseModel) and type(o) is type(n):
                changed += [f"{section}.{k}" for k in type(o).model_fields
                            if getattr(o, k) != getattr(n, k)]
            else:
                changed.append(section)  # the assets: their list as a whole
        applied = [c for c in changed if c in live]
        restart = [c for c in changed if c not in live]
        if not applied:
            return applied, restart
        self.config = old.model_copy(update={
            "pcc": old.pcc.model_copy(update={"export_cap_w": new.pcc.export_cap_w,
                                              "import_limit_w": new.pcc.import_limit_w}),
            "control": old.control.model_copy(update={
                "margin_ratio": new.control.margin_ratio,
                "soc_taper_s": new.control.soc_taper_s})})
        self.instructions.base_cap_w = new.pcc.export_cap_w
        self.instructions.base_import_w = new.pcc.import_limit_w
        self.enforce_params = dataclasses.replace(
            self.enforce_params, margin_ratio=new.control.margin_ratio,
            soc_taper_s=new.control.soc_taper_s)
        self.state.export_cap_w = self.export_cap_at(self.clock.now())
        self._replan.set()
        return applied, restart

    def set_operating_mode(self, mode: str) -> str:
        """``auto`` or ``reactive``; re-plans at once. Returns the mode before."""
        if mode not in ("auto", REACTIVE):
            raise ValueError(f"mode {mode!r} is not one of ['auto', 'reactive']")
        before, self.state.operating_mode = self.state.operating_mode, mode
        if mode != before:
            log.warning("operating mode %s (was %s)", mode, before)
            self._replan.set()
        if self.storage is not None:
            self._keep(self.storage.write_setting, "operating_mode", mode, self.clock.now())
        return before

    # -- planning ---------------------------------------------------------------------------

    async def plan_step(self) -> None:
        """Issue forecasts when due, then re-solve the schedule."""
        now = self.clock.now()
        if self._next_forecast is None or now >= self._next_forecast:
            await self.issue_forecasts(now)
            self._next_forecast = _floor(now, self.config.forecasting.issue_interval_s) + \
                timedelta(seconds=self.config.forecasting.issue_interval_s)
        await self.solve(now)
        # downsampling, leaving late samples room to arrive; at most once a wall minute:
        # its pandas work holds the interpreter, which at high speed is simulated seconds
        wall = time.monotonic()
        if self.storage is not None and wall >= self._next_downsample_wall:
            self._next_downsample_wall = wall + DOWNSAMPLE_EVERY_WALL_S
            self._store(self.storage.downsample, now - DOWNSAMPLE_LAG)

    async def issue_forecasts(self, now: datetime) -> None:
        fit = self._next_fit is None or now >= self._next_fit
        short_term = self.site_forecasts.short_term_due(self._last_short_term, now)
        loop = asyncio.get_running_loop()
        history = {name: self.history.series(name) for name in self.forecasters}
        path = self.config.forecasting.weather_file
        if path is not None:
            await loop.run_in_executor(self._io, self.weather.poll_file, Path(path))
        weather = self.weather.snapshot() if self.weather.issues else None
        t_wall = time.monotonic()
        try:
            run = await loop.run_in_executor(self._forecast_pool(), partial(
                run_forecasts, self.site_forecasts, now, fit=fit, short_term=short_term,
                history=history, weather=weather))
        except BrokenProcessPool:  # the forecast process died: a new one next round
            log.error("the forecast process died; the last forecasts stay in force")
            self._forecaster_pool = None
            return
        # only a round that came back counts: a failed one is tried again in full
        if fit:
            self._next_fit = now + timedelta(seconds=self.config.forecasting.refit_interval_s)
        if short_term:
            self._last_short_term = now
        for record in run.log_records:  # the forecast process's own log, in this one
            if log_forecasting.isEnabledFor(record.levelno):
                log_forecasting.handle(record)
        log.info("forecasts issued at %s (%s%s) in %.2f s wall", now.isoformat(),
                 "refit, " if fit else "", "with short-term" if short_term else "ultra-short",
                 time.monotonic() - t_wall)
        self.site_forecasts = run.state
        self.forecasters = run.state.forecasters
        issued, combined = run.issued, run.combined
        self.state.forecasts = combined
        self._envelope = run.envelope
        for f in issued:
            self.accuracy.issued(f, self._envelope.get(f.series))
            name = f.series
            if self.metrics is not None and name in self.metrics.issues:
                self.metrics.issues[name].inc()
            if self.storage is not None:
                self._store(self.storage.write_forecast, f)
            if self.mqtt is not None:
                self.mqtt.publish(f"forecast/{name}/{f.horizon}", {
                    "issued_at": f.issued_at, "series": name, "horizon": f.horizon,
                    "model": f.model, "step_s": self.config.forecasting.step_s,
                    "start": f.index[0],
                    "quantiles_w": {f"p{round(q * 100):02d}": v for q, v in f.quantiles.items()}},
                    qos=1, retain=True)

    def dispatch_inputs(self, start: datetime) -> DispatchInputs:
        """The solve's numbers from the latest forecasts (or, for comparison runs, the
        oracle's actuals), the devices' state and the grid's instructions, on the plan's
        steps."""
        d, fcq = self.config.dispatch, self.config.forecasting.quantiles
        T = self.steps

        def aligned(name: str, level: float) -> np.ndarray:
            f = self.state.forecasts.get(name)
            if f is None:
                return np.zeros(T)
            q = min(fcq, key=lambda x: abs(x - level))
            arr = f.q(q)
            off = int((pd.Timestamp(start) - f.index[0]).total_seconds() // d.step_s)
            arr = arr[max(0, off):]
            if len(arr) < T:
                arr = np.concatenate([arr, np.full(T - len(arr), arr[-1] if len(arr) else 0.0)])
            return np.asarray(arr[:T], dtype=float)

        gens = [g.id for g in self.generators]
        if self.oracle is not None:
            actual = self.oracle(start, T)
            low = mid = high = {g: actual[g] for g in gens}
            load_low = load_mid = load_high = actual.get("load", np.zeros(T))
        else:
            low = {g: aligned(g, 1 - d.generation_quantile) for g in gens}
            mid = {g: aligned(g, 0.5) for g in gens}
            high = {g: aligned(g, d.generation_quantile) for g in gens}
            load_low, load_mid = aligned("load", d.load_quantile), aligned("load", 0.5)
            load_high = aligned("load", 1 - d.load_quantile)
        soc = {}
        for b in self.batteries:
            v = self.devices[b.id].value("soc")
            soc[b.id] = v if v is not None else b.soc_min
        windows = {}
        for ld in self.flex_loads:
            dev = self.devices[ld.id]
            status, due = dev.value("status"), dev.value("energy_due_wh")
            if status is not None and int(status) in (FLEX_DONE, FLEX_MISSED):
                due = 0.0
            windows[ld.id] = flex_windows(ld, start=start, steps=T, step_s=d.step_s,
                                          tz=self.config.site.timezone, due_today_wh=due)
        cap, imp, track = self.instructions.step_values(start, T, d.step_s)
        out = self._out_of_service
        return DispatchInputs(
            start=start, gen_low_w=low, gen_mid_w=mid, gen_high_w=high,
            load_low_w=load_low, load_mid_w=load_mid, load_high_w=load_high,
            export_cap_w=cap, import_limit_w=imp, soc=soc, track_export_w=track,
            flex_windows=windows,
            batteries_out=frozenset(b.id for b in self.batteries if b.id in out),
            generators_uncontrolled=frozenset(g for g in gens if g in out),
            flex_out=frozenset(x.id for x in self.flex_loads if x.id in out),
            forecast_issued_at={k: f.issued_at for k, f in self.state.forecasts.items()})

    async def solve(self, now: datetime) -> Schedule:
        """Plan: solve, or fall back (last good plan, then rules); see :mod:`vpp.fallback`."""
        d = self.config.dispatch
        start = _floor(now, d.step_s)
        inputs = self.dispatch_inputs(start)
        if d.planner == REACTIVE or self.state.operating_mode == REACTIVE:
            return self._adopt(self._reactive_plan(inputs, now), None)
        if self._solving is not None and not self._solving.done():
            sch = Schedule(created_at=now, start=start, step_s=d.step_s,
                           status=SolveStatus.TIME_LIMIT, solver=d.solver, solve_time_s=0.0,
                           inputs=inputs, message="the previous solve is still running")
            return self._adopt(None, sch)
        loop = asyncio.get_running_loop()
        self._solving = loop.run_in_executor(
            self._compute, lambda: self.dispatcher.solve(
                inputs, solvers=(d.solver, *d.fallback_solvers), time_limit_s=d.time_limit_s,
                created_at=now))
        try:
            # wall seconds: the solve runs on the machine's time, not the clock's
            sch = await asyncio.wait_for(asyncio.shield(self._solving), timeout=d.late_s)
        except TimeoutError:
            sch = Schedule(created_at=now, start=start, step_s=d.step_s,
                           status=SolveStatus.TIME_LIMIT, solver=d.solver, solve_time_s=d.late_s,
                           inputs=inputs, message=f"late: no answer within {d.late_s:g} s")
        except Exception as exc:  # a solver that crashes is a failed solve, never a stop
            log.exception("dispatch solve raised")
            sch = Schedule(created_at=now, start=start, step_s=d.step_s,
                           status=SolveStatus.ERROR, solver=d.solver, solve_time_s=0.0,
                           inputs=inputs, message=f"{type(exc).__name__}: {exc}")
        return self._adopt(sch if sch.status.usable else None, sch)

    def _reactive_plan(self, inputs: DispatchInputs, now: datetime) -> Schedule:
        """The reactive limiter's 'plan': batteries idle unless the real-time loop needs
        them, no limits planned, flexible loads on their own timers."""
        plan = rule_based_plan(self.dispatcher.fleet, inputs, step_s=self.dispatcher.step_s,
                               created_at=now, reason="reactive planner: no optimisation")
        zero = {k: np.zeros_like(v) for k, v in plan.battery_w.items()}
        return dataclasses.replace(plan, battery_w=zero, source=REACTIVE, solver="none")

    def _adopt(self, plan: Schedule | None, solve: Schedule | None) -> Schedule:
        """Put a plan in force: the solved one, else the fallback chain's; report it."""
        now = self.clock.now()
        if solve is not None:
            self.state.last_solve = solve
            if not solve.status.usable:
                log.warning("dispatch %s (%s)", solve.status, solve.message)
        reason = ""
        if plan is None:
            assert solve is not None
            reason = f"{solve.status.value}: {solve.message}".rstrip(": ")
            plan = last_good(self.state.schedule, now)
            if plan is None:
                assert solve.inputs is not None
                plan = rule_based_plan(self.dispatcher.fleet, solve.inputs,
                                       step_s=self.dispatcher.step_s, created_at=now,
                                       reason=reason)
        previous = self.state.plan_source
        self.state.schedule, self.state.plan_source = plan, plan.source
        self.state.plan_fallback_reason = reason
        if plan.source != previous and plan.source in (LAST_GOOD, RULE_BASED):
            log.error("dispatch fallback: %s plan in force (%s)", plan.source, reason)
        elif previous in (LAST_GOOD, RULE_BASED) and plan.source == OPTIMAL:
            log.warning("dispatch: optimal plans again")
        m = self.metrics
        if m is not None:
            if solve is not None:
                m.solves[solve.status.value].inc()
                m.solve_duration.set(solve.solve_time_s)
            m.plan_source.state(plan.source)
        if plan.source != previous:
            self.set_alarm("dispatch_fallback", plan.source in (LAST_GOOD, RULE_BASED),
                           f"no optimal plan: {plan.source} plan in force ({reason})")
        if self.storage is not None:
            if solve is not None and not solve.status.usable:
                self._store(self.storage.write_schedule, solve)
            if plan.source != LAST_GOOD:
                self._store(self.storage.write_schedule, plan)
        if self.mqtt is not None and plan.source != LAST_GOOD:
            self.mqtt.publish("schedule", schedule_payload(plan), qos=1, retain=True)
        return plan
