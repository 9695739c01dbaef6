"""Shards over MQTT: N simulated devices polled by n shard processes, consumed by one.

* **Devices:** ``bench.modbus_poll``'s server process (the project's simulator,
  ``ConstantUnit`` s of 60 input registers in 36 points, 247 unit ids per port), each port a
  gateway endpoint of the site.
* **Shards:** ``vpp poll --shard i/n`` processes (the real CLI) on a site file made for the
  run: N meters with the benchmark's register map (a profile file), ``polling.shards = n``,
  ``control.interval_s`` the poll interval, MQTT to the broker given (Mosquitto).
* **Consumer:** this process: ``vpp.shardlink.ShardLink`` and its remote devices, the
  controller's side, with every device polled from its state once a second as the
  controller's control step does.

Measured over a window after a warm-up: the delay from each poll's read time (on the
shard) to its values in the consumer's device state, p50/p99; polls/s delivered per shard;
messages/s; CPU of every process from ``/proc`` (server, shards, consumer, mosquitto); and
how many devices the consumer saw fresh (online, read within 3 intervals) at the end.

Usage::

    python -m bench.shard_load                      # 10,000 devices, 4 shards, 1 s, 20 s
    python -m bench.shard_load --devices 2000 --shards 2 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.modbus_poll import (
    HOST,
    UNITS_PER_PORT,
    ServerProcess,
    bench_profile,
    machine_busy_s,
    machine_facts,
    percentile,
    proc_cpu_s,
)
from drivers import Health, PollClass
from sim.clock import WallClock
from vpp.config import load_config
from vpp.shardlink import ShardLink

START_TIMEOUT_S = 120.0  # for the shards to read the site file and poll every device once


def write_site(dirpath: Path, *, ports: list[int], devices: int, shards: int,
               interval_s: float, mqtt_host: str, mqtt_port: int, site_id: str) -> Path:
    """The run's site: the benchmark's devices as meters (its first i32 point read as
    ``export_w``, so the map is a meter's), round-robin over the server's ports."""
    profile = bench_profile()
    points = []
    for p in profile.points:
        d = p.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        d.update(name=p.name, table=p.table.value, address=p.address, type=p.type.value,
                 poll="fast")
        if p.name == "i32_0":
            d["name"] = "export_w"
        points.append(d)
    prof_path = dirpath / "bench-60.yaml"
    prof_path.write_text(yaml.safe_dump({"name": "bench-60", "kind": "meter",
                                         "word_order": "big", "points": points}))
    lines = [f'[site]\nid = "{site_id}"\nlatitude = 38.0\nlongitude = 106.0\n',
             '[pcc]\nmeter = "d0"\nexport_cap_w = 1e9\nimport_limit_w = 1e9\n',
             f"[control]\ninterval_s = {interval_s}\n",
             f"[polling]\nshards = {shards}\nmax_connections = {max(64, len(ports))}\n",
             f'[mqtt]\nenabled = true\nembedded = false\nhost = "{mqtt_host}"\n'
             f"port = {mqtt_port}\n"]
    for i in range(devices):
        port, unit = ports[i % len(ports)], i // len(ports) + 1
        lines.append(f'[[assets]]\nid = "d{i}"\nkind = "meter"\nprofile = "{prof_path}"\n'
                     f'host = "{HOST}"\nport = {port}\nunit_id = {unit}\n')
    path = dirpath / "site.toml"
    path.write_text("\n".join(lines))
    return path


def mosquitto_pids() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() == "mosquitto":
                    out.append(int(d.name))
    return out


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: proc_cpu_s(pid) for name, pid in pids.items()}


async def consume(cfg_path: Path, *, warmup_s: float, seconds: float,
                  shard_pids: dict[str, int], other_pids: dict[str, int],
                  profile: Path | None = None) -> dict[str, Any]:
    cfg = load_config(cfg_path)
    clock = WallClock()
    link = ShardLink(cfg, clock=clock, measure=5_000_000)
    devices = link.devices(None)
    link.start()
    interval = cfg.control.interval_s
    fresh: list[int] = []

    async def control_polls() -> None:
        """What the controller does each step: every device's newest values."""
        while True:
            t0 = time.monotonic()
            n = 0
            for d in devices.values():
                await d.poll(PollClass.FAST)
                n += d.health is Health.ONLINE
            fresh.append(n)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    poller = asyncio.create_task(control_polls())
    try:
        # started: every shard has polled each of its devices (once and fast) at least once
        t_start = time.monotonic()
        need = [2 * len(a) for a in link.assignment]
        while any(p < n for p, n in zip(link.polled, need, strict=True)):
            if time.monotonic() - t_start > START_TIMEOUT_S:
                raise RuntimeError(f"the shards did not start within {START_TIMEOUT_S:g} s: "
                                   f"polls {link.polled} of {need}")
            await asyncio.sleep(0.2)
        started_s = time.monotonic() - t_start
        await asyncio.sleep(warmup_s)
        pids = {**shard_pids, **other_pids}
        link.latencies_s.clear()
        e0, m0, bad0 = list(link.entries_by_shard), link.messages, link.bad_entries
        p0 = list(link.polled)
        c0, cpu0, w0 = time.process_time(), cpu_of(pids), time.monotonic()
        busy0 = machine_busy_s()
        fresh.clear()
        prof = cProfile.Profile() if profile is not None else None
        if prof is not None:
            prof.enable()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - w0
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(profile))
        c1, cpu1 = time.process_time(), cpu_of(pids)
        busy = (machine_busy_s() - busy0) / wall
        lat = list(link.latencies_s)
        e1, m1 = list(link.entries_by_shard), link.messages
        p1 = list(link.polled)
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await link.close()
    cpu = {k: round((cpu1[k] - cpu0[k]) / wall, 3) for k in pids}
    cpu["consumer"] = round((c1 - c0) / wall, 3)
    per_shard = [round((b - a) / wall, 1) for a, b in zip(e0, e1, strict=True)]
    return {
        "shards_started_s": round(started_s, 1), "window_s": round(wall, 2),
        "polls_delivered_per_s": round(sum(per_shard), 1),
        "polls_per_s_by_shard": per_shard,
        "polled_per_s_by_shard": [round((b - a) / wall, 1) for a, b in zip(p0, p1, strict=True)],
        "target_per_s": len(devices) / interval,
        "devices_by_shard": [len(a) for a in link.assignment],
        "messages_per_s": round((m1 - m0) / wall, 1),
        "bad_entries": link.bad_entries - bad0,
        "latency_p50_ms": round(1e3 * percentile(lat, 0.50), 1),
        "latency_p99_ms": round(1e3 * percentile(lat, 0.99), 1),
        "latency_max_ms": round(1e3 * max(lat), 1) if lat else math.nan,
        "fresh_devices_min": min(fresh) if fresh else 0,
        "fresh_devices_last": fresh[-1] if fresh else 0,
        "cpu_util": cpu,
        "cpu_util_total": round(sum(v for v in cpu.values() if v == v), 3),
        "machine_busy": round(busy, 3),
    }


def run_consumer(args: argparse.Namespace, cfg_path: Path, shard_pids: dict[str, int],
                 other_pids: dict[str, int]) -> dict[str, Any]:
    coro = consume(cfg_path, warmup_s=args.warmup, seconds=args.seconds,
                   shard_pids=shard_pids, other_pids=other_pids, profile=args.profile)
    if args.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop
            return uvloop.run(coro)  # type: ignore[no-any-return]
    return asyncio.run(coro)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.shard_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval [s]")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window [s]")
    ap.add_argument("--warmup", type=float, default=5.0,
                    help="from the moment every shard has polled each of its devices to the "
                         "window [s]")
    ap.add_argument("--units-per-port", type=int, default=UNITS_PER_PORT,
                    help=f"unit ids behind each simulated gateway (default {UNITS_PER_PORT}); "
                         "one request is in flight per gateway connection")
    ap.add_argument("--mqtt", default="127.0.0.1:1883", help="broker host:port (Mosquitto)")
    ap.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                    help="the consumer on uvloop, when importable (the shards use it "
                         "whenever it is, as `vpp poll` does)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--profile", type=Path, help="cProfile the consumer's window; pstats here")
    args = ap.parse_args(argv)
    if not 1 <= args.devices <= 50_000 or not 1 <= args.shards <= 64:
        ap.error("--devices within 1..50000, --shards within 1..64")
    if not 1 <= args.units_per_port <= UNITS_PER_PORT:
        ap.error(f"--units-per-port within 1..{UNITS_PER_PORT}")
    if not 0 < args.seconds <= 120 or not 0 <= args.warmup <= 120:
        ap.error("--seconds within (0, 120], --warmup within 0..120")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host, _, port_s = args.mqtt.rpartition(":")
    facts = machine_facts()
    upp = args.units_per_port
    n_ports = math.ceil(args.devices / upp)
    site_id = f"bench-shards-{uuid.uuid4().hex[:6]}"
    print(f"# {facts['cpu']}, {facts['cpus']} CPUs, Python {facts['python']}; "
          f"{args.devices} devices on {n_ports} ports, {args.shards} shards, "
          f"{args.interval:g} s polls, {args.warmup:g} + {args.seconds:g} s", flush=True)
    server = ServerProcess(n_ports, upp, args.warmup + args.seconds + 120, None)
    shards: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="vpp-shard-bench-") as tmp:
        d = Path(tmp)
        site = write_site(d, ports=server.ports, devices=args.devices, shards=args.shards,
                          interval_s=args.interval, mqtt_host=host, mqtt_port=int(port_s),
                          site_id=site_id)
        try:
            for i in range(args.shards):
                with open(d / f"shard{i}.log", "wb") as log:
                    shards.append(subprocess.Popen(
                        [sys.executable, "-m", "vpp.cli", "poll", "--shard",
                         f"{i}/{args.shards}", "--config", str(site)],
                        stdout=log, stderr=subprocess.STDOUT))
            mosq = mosquitto_pids()
            others = {"server": server.proc.pid or 0}
            if mosq:
                others["mosquitto"] = mosq[0]
            row = run_consumer(args, site, {f"shard{i}": p.pid for i, p in enumerate(shards)},
                               others)
        finally:
            for p in shards:
                p.terminate()
            for p in shards:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
            server.stop()
            logs = {f"shard{i}": (d / f"shard{i}.log").read_text(errors="replace")[-2000:]
                    for i in range(len(shards))}
        # the retained status and snapshots of this run's unique site go with it
        for i in range(args.shards):
            for kind in ("status", "snapshot"):
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(["mosquitto_pub", "-h", host, "-p", port_s, "-r", "-n",
                                    "-t", f"vpp/{site_id}/shard/{i}/{kind}"], timeout=10,
                                   check=False)
    for name, text in logs.items():
        if "Traceback" in text:
            print(f"{name} failed:\n{text}", file=sys.stderr)
    cpu = row["cpu_util"]
    kept = row["polls_delivered_per_s"] >= 0.98 * row["target_per_s"]
    print(f"delivered {row['polls_delivered_per_s']:,.0f} polls/s of {row['target_per_s']:,.0f}"
          f" ({'kept' if kept else 'NOT kept'} the interval); by shard "
          f"{row['polls_per_s_by_shard']} (polled there {row['polled_per_s_by_shard']}) for "
          f"{row['devices_by_shard']} devices; "
          f"{row['messages_per_s']:.0f} messages/s")
    print(f"latency read -> controller state: p50 {row['latency_p50_ms']} ms, p99 "
          f"{row['latency_p99_ms']} ms, max {row['latency_max_ms']} ms; shards started in "
          f"{row['shards_started_s']} s; fresh devices "
          f"min {row['fresh_devices_min']:,} / {args.devices:,}")
    print("CPU (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
          + f"; total {row['cpu_util_total']:.2f}; the whole machine {row['machine_busy']:.2f} "
          f"of {facts['cpus']} (other jobs: "
          f"{row['machine_busy'] - row['cpu_util_total']:.2f})")
    row.update(devices=args.devices, shards=args.shards, interval_s=args.interval,
               kept_interval=kept, loadavg_1m_after=os.getloadavg()[0])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python -m bench.shard_load " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": facts,
            "settings": {"warmup_s": args.warmup, "seconds": args.seconds,
                         "units_per_port": upp, "ports": n_ports,
                         "points_per_device": len(bench_profile().points),
                         "consumer_uvloop": args.uvloop},
            "runs": [row]}, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
