"""Benchmark: one simulated day of a 100-device county, the real controller against the
simulator over Modbus TCP, at accelerated speed.

The county: 40 PV plants, 30 wind farms, 20 batteries, 9 feeder loads and the PCC meter,
ten devices (unit ids 1-10) behind each simulated gateway port. Each run reports the wall
time, the process's CPU, the control step the speed allowed, the steps done, the plans
solved and their solve times, and the simulator meter's verdict on the cap.

Usage::

    python -m bench.county_day                          # one day at ×600
    python -m bench.county_day --hours 2 --speed 300 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.report import write_runs
from vpp.config import SiteConfig, load_config
from vpp.demo import Demo, DemoOptions

UNITS_PER_GATEWAY = 10
FLEET = (("pv", 40), ("wind", 30), ("battery", 20), ("load", 9))


def county_toml(data_dir: Path, base_port: int) -> str:
    """A 100-device county as a site configuration (validated when loaded)."""
    lines = ['[site]\nid = "bench-county"\nname = "Benchmark county (100 devices)"',
             'timezone = "Asia/Shanghai"\nlatitude = 38.47\nlongitude = 106.27',
             "altitude_m = 1110\n",
             '[pcc]\nmeter = "pcc"\nexport_cap_w = 150_000_000\nimport_limit_w = 300_000_000\n']
    k = 0

    def endpoint() -> str:
        nonlocal k
        port, unit = base_port + k // UNITS_PER_GATEWAY, k % UNITS_PER_GATEWAY + 1
        k += 1
        return f'host = "127.0.0.1"\nport = {port}\nunit_id = {unit}'

    for kind, n in FLEET:
        for i in range(1, n + 1):
            head = f'[[assets]]\nid = "{kind}{i}"\nkind = "{kind}"\n'
            if kind == "pv":
                body = ('profile = "generic-pv"\nrated_power_w = 5_000_000\n'
                        f"dc_power_w = 6_000_000\ntilt_deg = 30\nazimuth_deg = {160 + i}")
            elif kind == "wind":
                body = 'profile = "generic-wind"\nrated_power_w = 5_000_000'
            elif kind == "battery":
                body = ('profile = "generic-battery"\ncapacity_wh = 10_000_000\n'
                        "max_charge_w = 5_000_000\nmax_discharge_w = 5_000_000\n"
                        "soc_min = 0.1\nsoc_max = 0.95")
            else:
                body = 'profile = "generic-load"\npeak_w = 12_000_000'
            lines.append(head + body + "\n" + endpoint() + "\n")
    lines.append('[[assets]]\nid = "pcc"\nkind = "meter"\nprofile = "generic-meter"\n'
                 + endpoint() + "\n")
    lines.append("[dispatch]\nhorizon_h = 12\n")
    lines.append("[mqtt]\nenabled = false\n[api]\nport = 0\n")
    lines.append(f'[storage]\ndata_dir = "{data_dir}"\n')
    lines.append('[sim]\nseed = 3\nstart = "2026-04-15T00:00:00+08:00"\ncloudiness = 0.3\n'
                 "mean_wind_m_s = 8\nhistory_days = 7\n")
    return "\n".join(lines)


async def one_run(config: SiteConfig, hours: float, speed: float) -> dict[str, Any]:
    demo = Demo(config, DemoOptions(hours=hours, speed=speed, ephemeral_ports=True))
    t0 = time.perf_counter()
    solve_s: list[float] = []
    async with demo:
        # start-up (history, first fits, discovery) is timed apart; the books open after it
        startup_s = time.perf_counter() - t0
        demo.options.hours = demo.clock.elapsed_s() / 3600.0 + hours
        demo.sim.plant.advance_to(demo.clock.time())
        demo.sim.plant.open_books()
        steps0, wall0, cpu0 = demo.controller.state.control_steps, time.perf_counter(), \
            time.process_time()
        last = None

        def tick() -> None:
            nonlocal last
            sch = demo.controller.state.last_solve if demo.controller else None
            if sch is not None and sch is not last:
                last = sch
                solve_s.append(sch.solve_time_s)

        await demo.wait(on_tick=tick, tick_wall_s=0.05)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        steps = demo.controller.state.control_steps - steps0
    rep = demo.report()
    solve_s.sort()
    return {
        "speed": speed, "startup_wall_s": round(startup_s, 1),
        "sim_hours": round(rep["sim_hours"], 3), "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1), "cpu_share_of_wall": round(cpu / wall, 2),
        "control_interval_s": rep["control_interval_s"], "control_steps": steps,
        "steps_per_wall_s": round(steps / wall, 1),
        "expected_steps": int(rep["sim_hours"] * 3600 / rep["control_interval_s"]),
        "plans_seen": len(solve_s),
        "solve_p50_s": round(solve_s[len(solve_s) // 2], 3) if solve_s else None,
        "solve_max_s": round(solve_s[-1], 3) if solve_s else None,
        "cap_violation_s": round(rep["cap_violation_s"], 1),
        "max_export_w": round(rep["max_export_w"]),
        "uncontrolled_max_export_w": round(rep["uncontrolled_max_export_w"]),
        "export_cap_w": rep["export_cap_w"],
        "energy_balance_error_ratio": rep["energy_balance_error_ratio"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.county_day", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours per run")
    ap.add_argument("--speed", type=float, nargs="+", default=[600.0])
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if not 0 < args.hours <= 48 or not all(0 < s <= 10_000 for s in args.speed):
        ap.error("--hours must be in (0, 48] and --speed in (0, 10000]")
    logging.basicConfig(level=logging.ERROR)
    rows = []
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "county.toml"
        path.write_text(county_toml(Path(tmp) / "data", 16000), encoding="utf-8")
        cfg = load_config(path)
        print(f"# {len(cfg.assets)} devices, {os.cpu_count()} CPUs, Python "
              f"{sys.version.split()[0]}", flush=True)
        for speed in args.speed:
            row = asyncio.run(one_run(cfg, args.hours, speed))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        write_runs(args.json, "bench.county_day", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
