"""Modbus polling benchmark: the project's drivers against a raw asyncio client.

N simulated devices, each a unit id with one contiguous block of 60 input registers (36
points, poll class fast), are polled once per second over loopback. The devices are served
by the project's simulator (``sim.modbus_server.ModbusTcpDeviceServer``) in a separate
process, pinned to its own core, 247 unit ids per port at most; the client runs in this
process, pinned to the other core. Per run it reports the achieved polls per second, the
poll latency (poll start, including the wait for the shared connection, to decoded
values), the client's CPU per poll and utilisation, and the server's CPU from ``/proc``.

Clients (``--clients``):

* ``poller``: the project's polling engine: a ``Device`` per unit id, one
  ``ModbusConnection`` per port shared by its devices, polled by ``drivers.Poller`` (fast
  class only) at a fixed rate, the devices spread over the interval, on loop timers and
  reply callbacks.
* ``fixed``: the same ``Device`` / ``ModbusConnection`` objects, each device in a task of
  its own awaiting ``Device.poll()`` at the same fixed rate: the awaitable API the
  controller uses.
* ``raw``: the upper bound for Python: one asyncio ``Protocol`` per port, hand-built MBAP
  frames, one request in flight per connection (no pipelining, like ``ModbusConnection``;
  ``--raw-depth`` allows more), the same registers decoded with one ``struct`` call into a
  dict of scaled values, scheduled by ``loop.call_later`` with the same fixed-rate rule.

Every client runs with asyncio's default loop and, when ``uvloop`` is importable, with
uvloop as well. uvloop is not a project dependency.

Usage::

    python -m bench.modbus_poll                       # N = 100, 1000, 5000; 10 s each
    python -m bench.modbus_poll --devices 1000 --seconds 5 --clients fixed raw
    python -m bench.modbus_poll --json results.json --profile fixed.prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import platform
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from drivers.connection import ModbusConnection
from drivers.device import Device, Health
from drivers.poller import Poller
from drivers.profile import Point, PollClass, Profile, Table
from drivers.registers import RegisterType
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit

HOST = "127.0.0.1"  # every request of this benchmark goes to loopback only
UNITS_PER_PORT = 247  # the Modbus limit of unit ids behind one gateway
CLIENTS = ("poller", "fixed", "raw")
MAX_DEVICES = 50_000
MAX_SECONDS = 600.0

# type, count, scale, unit: 16 + 4 + 12 + 8 + 16 + 4 = 60 registers in 36 points
LAYOUT: tuple[tuple[RegisterType, int, float, str], ...] = (
    (RegisterType.U16, 16, 0.1, "V"),
    (RegisterType.I16, 4, 1.0, "degC"),
    (RegisterType.I32, 6, 1.0, "W"),
    (RegisterType.U32, 4, 1.0, "var"),
    (RegisterType.U64, 4, 1.0, "Wh"),
    (RegisterType.F32, 2, 1.0, "Hz"),
)
STRUCT_CODE = {RegisterType.U16: "H", RegisterType.I16: "h", RegisterType.I32: "i",
               RegisterType.U32: "I", RegisterType.U64: "Q", RegisterType.F32: "f"}


# -- the devices --------------------------------------------------------------------------


def bench_profile() -> Profile:
    """The benchmark's device: 60 contiguous input registers, every point polled fast."""
    points: list[Point] = []
    address = 0
    for rtype, count, scale, unit in LAYOUT:
        for i in range(count):
            p = Point(name=f"{rtype.value}_{i}", table=Table.INPUT, address=address,
                      type=rtype, scale=scale, unit=unit, poll=PollClass.FAST)
            points.append(p)
            address += p.registers
    return Profile(name="bench-60", kind="meter", points=tuple(points))


def unit_values(profile: Profile, unit_id: int) -> dict[str, float]:
    """Constant engineering values of a unit id: distinct per unit, inside every type's range
    and never a "not implemented" sentinel."""
    out: dict[str, float] = {}
    for k, p in enumerate(profile.points):
        raw: float
        if p.type is RegisterType.U16:
            raw = (unit_id * 131 + k) % 60_000
        elif p.type is RegisterType.I16:
            raw = -((unit_id * 7 + k) % 30_000)
        elif p.type is RegisterType.I32:
            raw = -(unit_id * 100_003 + k)
        elif p.type is RegisterType.U32:
            raw = unit_id * 1_000_003 + k
        elif p.type is RegisterType.U64:
            raw = unit_id * 10**12 + k
        else:
            raw = unit_id + k / 4  # f32, exact in binary
        out[p.name] = raw * p.scale
    return out


@dataclass
class ConstantUnit(SimUnit):
    """A simulated unit with constant values: its reply words are encoded on the first read
    of a range and reused, so the server spends its time on the protocol, not on encoding."""

    _cache: dict[tuple[Table, int, int], list[int]] = field(default_factory=dict, init=False,
                                                             repr=False)

    def read(self, table: Table, address: int, count: int) -> list[int]:
        key = (table, address, count)
        words = self._cache.get(key)
        if words is None:
            words = self._cache[key] = super().read(table, address, count)
        return words


def _ignore_write(point: str, value: float) -> None:
    return None


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def server_main(n_ports: int, units_per_port: int, conn: Connection, lifetime_s: float,
                cpu: int | None) -> None:
    """Entry point of the server process: ``n_ports`` ports with ``units_per_port`` unit ids
    each. Sends the ports back on ``conn``; stops on any message or after ``lifetime_s``."""
    _pin(cpu)
    asyncio.run(_serve(n_ports, units_per_port, conn, lifetime_s))


async def _serve(n_ports: int, units_per_port: int, conn: Connection, lifetime_s: float) -> None:
    profile = bench_profile()
    units: dict[int, SimUnit] = {
        u: ConstantUnit(profile, partial(unit_values, profile, u), _ignore_write)
        for u in range(1, units_per_port + 1)}
    servers = []
    try:
        for _ in range(n_ports):
            srv = ModbusTcpDeviceServer(host=HOST, port=0, units=units)
            await srv.start()
            servers.append(srv)
        conn.send([s.port for s in servers])
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lifetime_s)
    finally:
        for srv in servers:
            await srv.stop()


class ServerProcess:
    """The simulator in a spawned process, and its CPU time from /proc."""

    def __init__(self, n_ports: int, units_per_port: int, lifetime_s: float,
                 cpu: int | None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=server_main, name="bench-modbus-server", daemon=True,
                                args=(n_ports, units_per_port, child, lifetime_s, cpu))
        self.proc.start()
        if not self._conn.poll(60):
            self.stop()
            raise RuntimeError("the benchmark server did not start within 60 s")
        self.ports: list[int] = self._conn.recv()

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int | None) -> float:
    """utime + stime of a process, in seconds (NaN where /proc is missing)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_s() -> float:
    """CPU seconds spent by the whole machine (all cores), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


# -- measurement --------------------------------------------------------------------------


@dataclass
class Context:
    devices: int
    ports: list[int]
    interval_s: float
    warmup_s: float
    seconds: float
    raw_depth: int
    server: ServerProcess
    profiler: cProfile.Profile | None = None

    def port_and_unit(self, i: int) -> tuple[int, int]:
        """Devices go round-robin over the ports, so each connection's devices are spread
        over the interval: device i is unit i // ports + 1 on port i % ports."""
        return self.ports[i % len(self.ports)], i // len(self.ports) + 1


@dataclass
class Window:
    """What happened between ``open`` and ``close``: polls, latencies, CPU."""

    active: bool = False
    polls: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0
    stubborn_tasks: int = 0
    _t0: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def add(self, latency: float, lag: float, error: bool) -> None:
        if self.active:
            self.polls += 1
            self.errors += error
            self.latencies.append(latency)
            self.lags.append(lag)

    def open(self, ctx: Context) -> None:
        self._t0 = (time.perf_counter(), time.process_time(), ctx.server.cpu_s(),
                    machine_busy_s())
        self.active = True
        if ctx.profiler is not None:
            ctx.profiler.enable()

    def close(self, ctx: Context) -> None:
        if ctx.profiler is not None:
            ctx.profiler.disable()
        self.active = False
        t, c, s, m = (time.perf_counter(), time.process_time(), ctx.server.cpu_s(),
                      machine_busy_s())
        self.wall_s, self.cpu_s = t - self._t0[0], c - self._t0[1]
        self.server_cpu_s, self.machine_cpu_s = s - self._t0[2], m - self._t0[3]


def next_due(due: float, interval: float, now: float) -> float:
    """The next start of a fixed-rate schedule; slots already missed are skipped."""
    due += interval
    if due < now:
        due += math.ceil((now - due) / interval) * interval
    return due


def _check_values(profile: Profile, got: list[tuple[int, dict[str, float]]]) -> int:
    """Decoded values that differ from what the server serves (should be 0)."""
    bad = 0
    for unit_id, values in got:
        expected = unit_values(profile, unit_id)
        bad += sum(1 for name, v in expected.items()
                   if not math.isclose(values.get(name, math.nan), v, rel_tol=1e-6,
                                       abs_tol=1e-6))
    return bad


# -- client A: the project's drivers -------------------------------------------------------


def _driver_devices(ctx: Context, profile: Profile) -> tuple[list[ModbusConnection],
                                                             list[Device]]:
    conns = {p: ModbusConnection(host=HOST, port=p, timeout_s=1.0) for p in ctx.ports}
    devices = []
    for i in range(ctx.devices):
        port, unit = ctx.port_and_unit(i)
        devices.append(Device(asset_id=f"dev{i}", profile=profile, connection=conns[port],
                              unit_id=unit, now=partial(datetime.now, UTC)))
    return list(conns.values()), devices


def _driver_check(profile: Profile, devices: list[Device]) -> int:
    sample = devices[:: max(1, len(devices) // 20)]
    return _check_values(profile, [
        (d.unit_id, {k: s.value for k, s in d.latest.items() if s.value is not None})
        for d in sample])


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> int:
    """Cancel tasks until they are done; returns how many ignored the first cancel.

    On Python 3.11 ``asyncio.wait_for`` returns a result and drops a cancel that arrives
    just after it (pymodbus' client, which the drivers used before, awaited each reply so):
    such a task polls on, and one ``cancel()`` is not enough. Counted to show it is gone.
    """
    stubborn = 0
    for attempt in range(100):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        if attempt == 1:
            stubborn = len(pending)
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.2)
    await asyncio.gather(*tasks, return_exceptions=True)
    return stubborn


async def client_poller(ctx: Context) -> tuple[Window, int]:
    profile = bench_profile()
    conns, devices = _driver_devices(ctx, profile)
    w = Window()
    keep = int((ctx.warmup_s + ctx.seconds) / ctx.interval_s) + 100
    poller = Poller(devices, fast_interval_s=ctx.interval_s, classes=(PollClass.FAST,),
                    keep_durations=keep)
    try:
        async with poller:
            await asyncio.sleep(ctx.warmup_s)
            before = {k: (st.polls, st.failures, len(st.durations_s))
                      for k, st in poller.stats.items()}
            w.open(ctx)
            await asyncio.sleep(ctx.seconds)
            w.close(ctx)
        for k, st in poller.stats.items():
            polls, failures, n = before[k]
            w.polls += st.polls - polls
            w.errors += st.failures - failures
            w.latencies.extend(list(st.durations_s)[n:])
        await asyncio.sleep(2 * 1.0)  # polls in flight end (answer or 1 s timeout)
    finally:
        for c in conns:
            c.close()
    return w, _driver_check(profile, devices)


async def client_fixed(ctx: Context) -> tuple[Window, int]:
    profile = bench_profile()
    conns, devices = _driver_devices(ctx, profile)
    w = Window()
    clock = time.perf_counter
    start = clock() + 0.05
    stop_at = start + ctx.warmup_s + ctx.seconds + 2 * ctx.interval_s
    max_polls = int((ctx.warmup_s + ctx.seconds) / ctx.interval_s) + 10
    running = True

    async def run(dev: Device, due: float) -> None:
        for _ in range(max_polls):
            now = clock()
            if not running or now >= stop_at:
                return
            if due > now:
                await asyncio.sleep(due - now)
            t0 = clock()
            await dev.poll(PollClass.FAST)
            t1 = clock()
            w.add(t1 - t0, t0 - due, dev.health is not Health.ONLINE)
            due = next_due(due, ctx.interval_s, t1)

    n = len(devices)
    tasks = [asyncio.create_task(run(d, start + i * ctx.interval_s / n))
             for i, d in enumerate(devices)]
    try:
        await asyncio.sleep(ctx.warmup_s)
        w.open(ctx)
        await asyncio.sleep(ctx.seconds)
        w.close(ctx)
        running = False
        await asyncio.wait(tasks, timeout=ctx.interval_s + 5)
    finally:
        w.stubborn_tasks = await stop_tasks(tasks)
        for c in conns:
            c.close()
    return w, _driver_check(profile, devices)


# -- client B: raw asyncio -----------------------------------------------------------------


class RawDevice:
    __slots__ = ("conn", "due", "t_submit", "unit", "values")

    def __init__(self, conn: RawConnection, unit: int, due: float) -> None:
        self.conn = conn
        self.unit = unit
        self.due = due
        self.t_submit = 0.0
        self.values: dict[str, float] = {}


class RawConnection(asyncio.Protocol):
    """One TCP connection: MBAP frames out, replies matched by transaction id, decoded with
    one struct call. At most ``depth`` requests in flight; the rest wait in a FIFO."""

    def __init__(self, profile: Profile, window: Window, interval_s: float, depth: int,
                 stop_at: float) -> None:
        first = profile.points[0]
        self.fc = 4 if first.table is Table.INPUT else 3
        self.start = first.address
        self.count = sum(p.registers for p in profile.points)
        self.fmt = struct.Struct(">" + "".join(STRUCT_CODE[p.type] for p in profile.points))
        self.names = [p.name for p in profile.points]
        self.scales = [p.scale for p in profile.points]
        self.window = window
        self.interval_s = interval_s
        self.depth = depth
        self.stop_at = stop_at
        self.running = True
        self.waiting: deque[RawDevice] = deque()
        self.inflight: dict[int, RawDevice] = {}
        self.buf = bytearray()
        self.tid = 0
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclass of asyncio.Transport, hence no isinstance check
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def schedule(self, dev: RawDevice) -> None:
        self.loop.call_later(max(0.0, dev.due - time.perf_counter()), self.submit, dev)

    def submit(self, dev: RawDevice) -> None:
        if not self.running or self.transport is None or self.transport.is_closing():
            return
        dev.t_submit = time.perf_counter()
        if len(self.inflight) < self.depth:
            self._send(dev)
        else:
            self.waiting.append(dev)

    def _send(self, dev: RawDevice) -> None:
        self.tid = (self.tid + 1) & 0xFFFF
        self.inflight[self.tid] = dev
        assert self.transport is not None
        self.transport.write(struct.pack(">HHHBBHH", self.tid, 0, 6, dev.unit, self.fc,
                                         self.start, self.count))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 8:  # each pass consumes one frame or stops
            tid, _, length, _unit = struct.unpack_from(">HHHB", buf)
            end = 6 + length
            if len(buf) < end:
                break
            dev = self.inflight.pop(tid, None)
            ok = buf[7] == self.fc and buf[8] == 2 * self.count and length == 3 + 2 * self.count
            if ok and dev is not None:
                raw = self.fmt.unpack_from(buf, 9)
                dev.values = dict(zip(self.names, [r * s for r, s in
                                                   zip(raw, self.scales, strict=True)],
                                      strict=True))
            del buf[:end]
            if dev is None:
                continue
            t1 = time.perf_counter()
            self.window.add(t1 - dev.t_submit, dev.t_submit - dev.due, not ok)
            if self.running and t1 < self.stop_at:
                dev.due = next_due(dev.due, self.interval_s, t1)
                self.schedule(dev)
        while self.waiting and len(self.inflight) < self.depth:
            self._send(self.waiting.popleft())


async def client_raw(ctx: Context) -> tuple[Window, int]:
    profile = bench_profile()
    loop = asyncio.get_running_loop()
    w = Window()
    start = time.perf_counter() + 0.2
    stop_at = start + ctx.warmup_s + ctx.seconds + 2 * ctx.interval_s
    conns: dict[int, RawConnection] = {}
    for port in ctx.ports:
        _, proto = await loop.create_connection(
            partial(RawConnection, profile, w, ctx.interval_s, ctx.raw_depth, stop_at),
            HOST, port)
        conns[port] = proto
    devices = []
    n = ctx.devices
    for i in range(n):
        port, unit = ctx.port_and_unit(i)
        dev = RawDevice(conns[port], unit, start + i * ctx.interval_s / n)
        devices.append(dev)
        dev.conn.schedule(dev)
    try:
        await asyncio.sleep(ctx.warmup_s)
        w.open(ctx)
        await asyncio.sleep(ctx.seconds)
        w.close(ctx)
    finally:
        for c in conns.values():
            c.running = False
        await asyncio.sleep(0.1)
        for c in conns.values():
            if c.transport is not None:
                c.transport.close()
        await asyncio.wait([c.closed for c in conns.values()], timeout=5)
    sample = devices[:: max(1, n // 20)]
    return w, _check_values(profile, [(d.unit, d.values) for d in sample])


RUNNERS: dict[str, Callable[[Context], Awaitable[tuple[Window, int]]]] = {
    "poller": client_poller, "fixed": client_fixed, "raw": client_raw}


# -- running and reporting -----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # optional: not a project dependency
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run_one(client: str, loop_name: str, ctx: Context) -> dict[str, Any]:
    factory = uvloop_factory() if loop_name == "uvloop" else None
    gc.collect()
    limit = ctx.warmup_s + ctx.seconds + 60

    async def guarded() -> tuple[Window, int]:
        async with asyncio.timeout(limit):
            return await RUNNERS[client](ctx)

    with asyncio.Runner(loop_factory=factory) as runner:
        w, bad_values = runner.run(guarded())
    target = ctx.devices / ctx.interval_s
    rate = w.polls / w.wall_s if w.wall_s > 0 else 0.0
    polls = max(1, w.polls)
    other = w.machine_cpu_s - w.cpu_s - w.server_cpu_s
    return {
        "client": client, "loop": loop_name, "devices": ctx.devices, "ports": len(ctx.ports),
        "seconds": round(w.wall_s, 3), "target_per_s": target,
        "achieved_per_s": round(rate, 1), "kept_interval": rate >= 0.98 * target,
        "polls": w.polls, "errors": w.errors, "value_mismatches": bad_values,
        "p50_ms": round(1e3 * percentile(w.latencies, 0.50), 3),
        "p99_ms": round(1e3 * percentile(w.latencies, 0.99), 3),
        "start_lag_p99_ms": (round(1e3 * percentile(w.lags, 0.99), 3) if w.lags else None),
        "client_cpu_us_per_poll": round(1e6 * w.cpu_s / polls, 1),
        "client_cpu_util": round(w.cpu_s / w.wall_s, 3) if w.wall_s else None,
        "server_cpu_us_per_poll": round(1e6 * w.server_cpu_s / polls, 1),
        "server_cpu_util": round(w.server_cpu_s / w.wall_s, 3) if w.wall_s else None,
        "other_cpu_util": round(other / w.wall_s, 3) if w.wall_s else None,
        "tasks_ignoring_first_cancel": w.stubborn_tasks,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| N | ports | client | loop | polls/s (target) | kept 1 s? | p50 ms | p99 ms "
            "| client µs/poll | client CPU | server µs/poll | server CPU | errors |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        lines.append(
            f"| {r['devices']:,} | {r['ports']} | {r['client']} | {r['loop']} "
            f"| {r['achieved_per_s']:,.0f} ({r['target_per_s']:,.0f}) "
            f"| {'yes' if r['kept_interval'] else 'no'} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['client_cpu_us_per_poll']:.0f} | {100 * r['client_cpu_util']:.0f}% "
            f"| {r['server_cpu_us_per_poll']:.0f} | {100 * r['server_cpu_util']:.0f}% "
            f"| {r['errors'] + r['value_mismatches']} |")
    return "\n".join(lines)


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts: dict[str, Any] = {
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
        "pymodbus": importlib.metadata.version("pymodbus"),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        facts["uvloop"] = importlib.metadata.version("uvloop")
    t0 = time.perf_counter()
    for _ in range(1000):
        sum(range(1000))
    facts["calibration_sum_range_1000_us"] = round((time.perf_counter() - t0) * 1e3, 1)
    return facts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.modbus_poll", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[100, 1000, 5000],
                    help="device counts to run (default: 100 1000 5000)")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="measured seconds per run (default: 10)")
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="seconds before the measurement starts (default: 3)")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval (default: 1 s)")
    ap.add_argument("--ports", type=int, default=0,
                    help="server ports (= client connections) for every N; default: the "
                         "fewest that hold N devices at --units-per-port each")
    ap.add_argument("--units-per-port", type=int, default=UNITS_PER_PORT,
                    help=f"unit ids served per port (default: {UNITS_PER_PORT})")
    ap.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS),
                    help="clients to run (default: all)")
    ap.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=None,
                    help="also run every client on uvloop (default: when importable; "
                         "--uvloop requires it, --no-uvloop skips it)")
    ap.add_argument("--raw-depth", type=int, default=1,
                    help="raw client: requests in flight per connection (default 1: none "
                         "pipelined, like the drivers)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin the client to CPU 0 and the server to CPU 1 (default: on)")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--profile", type=Path,
                    help="cProfile the client during the measured windows; write pstats here")
    args = ap.parse_args(argv)
    if not all(1 <= n <= MAX_DEVICES for n in args.devices):
        ap.error(f"--devices must be within 1..{MAX_DEVICES}")
    if not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.warmup <= MAX_SECONDS:
        ap.error(f"--seconds and --warmup must be within 0..{MAX_SECONDS:.0f}")
    if not 0.01 <= args.interval <= 60:
        ap.error("--interval must be within 0.01..60 s")
    if not 1 <= args.units_per_port <= UNITS_PER_PORT:
        ap.error(f"--units-per-port must be within 1..{UNITS_PER_PORT}")
    if not 1 <= args.raw_depth <= 64:
        ap.error("--raw-depth must be within 1..64")
    if args.ports and any(math.ceil(n / args.ports) > args.units_per_port for n in args.devices):
        ap.error("--ports too few: some port would need more than --units-per-port unit ids")
    if args.uvloop and uvloop_factory() is None:
        ap.error("--uvloop: uvloop is not importable")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loops = ["asyncio"] + (["uvloop"] if args.uvloop is not False and uvloop_factory() else [])
    upp = args.units_per_port

    def ports_for(n: int) -> int:
        return min(n, int(args.ports)) if args.ports else math.ceil(n / upp)

    n_ports = max(ports_for(n) for n in args.devices)
    runs = [(n, c, lp) for n in args.devices for c in args.clients for lp in loops]
    lifetime = len(runs) * (args.warmup + args.seconds + 3 * args.interval + 30) + 60
    pin = args.pin and (os.cpu_count() or 1) >= 2
    facts = machine_facts()
    print(f"# {facts['cpu']}, {facts['cpus']} CPUs, Python {facts['python']}, pymodbus "
          f"{facts['pymodbus']}" + (f", uvloop {facts['uvloop']}" if "uvloop" in facts else "")
          + f"; loops: {', '.join(loops)}; {len(runs)} runs of {args.warmup:g} + "
          f"{args.seconds:g} s", flush=True)
    server = ServerProcess(n_ports, upp, lifetime, 1 if pin else None)
    if pin:
        _pin(0)
    profiler = cProfile.Profile() if args.profile else None
    rows: list[dict[str, Any]] = []
    try:
        for n, client, loop_name in runs:
            ctx = Context(devices=n, ports=server.ports[: ports_for(n)],
                          interval_s=args.interval, warmup_s=args.warmup,
                          seconds=args.seconds, raw_depth=args.raw_depth, server=server,
                          profiler=profiler)
            row = run_one(client, loop_name, ctx)
            row["loadavg_1m_before"] = os.getloadavg()[0]
            rows.append(row)
            print(f"N={n:>5} {client:>6} {loop_name:>7}: {row['achieved_per_s']:>8,.0f}/s "
                  f"(target {row['target_per_s']:,.0f}) p50 {row['p50_ms']:.2f} ms "
                  f"p99 {row['p99_ms']:.2f} ms, client {row['client_cpu_us_per_poll']:.0f} "
                  f"µs/poll at {100 * row['client_cpu_util']:.0f}%, server "
                  f"{row['server_cpu_us_per_poll']:.0f} µs/poll at "
                  f"{100 * row['server_cpu_util']:.0f}%, other "
                  f"{100 * (row['other_cpu_util'] or 0):.0f}%, errors {row['errors']}, "
                  f"value mismatches {row['value_mismatches']}, tasks ignoring a cancel "
                  f"{row['tasks_ignoring_first_cancel']}", flush=True)
    finally:
        server.stop()
    print()
    print(table(rows))
    if profiler is not None:
        profiler.dump_stats(str(args.profile))
        print(f"\nprofile written to {args.profile}")
    if args.json:
        profile = bench_profile()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python -m bench.modbus_poll " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": facts,
            "settings": {"interval_s": args.interval, "warmup_s": args.warmup,
                         "seconds": args.seconds, "units_per_port": upp,
                         "registers_per_device": sum(p.registers for p in profile.points),
                         "points_per_device": len(profile.points),
                         "raw_depth": args.raw_depth, "pinned": pin},
            "runs": rows}, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
