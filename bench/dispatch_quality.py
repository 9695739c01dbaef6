"""Benchmark: dispatch quality on the simulator's scenarios, three planners side by side.

Each shipped scenario (sim/scenarios) is played against the real controller over Modbus
TCP, once per planner:

- ``optimal``: the controller as shipped (forecast quantiles, receding horizon);
- ``perfect``: the same model shown the actual weather and load (an upper bound);
- ``reactive``: no plan; the real-time limiter alone (battery absorbs the excess, else
  curtail), as common open EMS feed-in controllers do.

The figures are the simulator's meter's: cap violation seconds, max export, curtailed
energy and battery throughput. Targets (issue 6): no violation for ``optimal``; its
curtailment within 10% of ``perfect`` and below ``reactive``.

Usage::

    python -m bench.dispatch_quality                         # all, about 20 minutes
    python -m bench.dispatch_quality --scenarios windy-night-cap-cut --planners optimal
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import write_runs
from sim.scenario import load_scenario, shipped_scenarios
from vpp.cli import default_demo_config
from vpp.config import load_config
from vpp.simrun import PLANNERS, ScenarioRun, with_planner

WARMUP_S = 3600.0  # the controller's first fits and plan come before the books open

KEYS = ("cap_violation_s", "cap_violation_at_faults_s", "cap_violation_elsewhere_s",
        "max_export_w", "uncontrolled_max_export_w", "curtailed_energy_wh",
        "battery_throughput_wh", "renewable_energy_wh", "steps_without_plan")


async def one_run(scenario: str, planner: str, speed: float | None) -> dict[str, Any]:
    sc = load_scenario(scenario)
    sc = sc.model_copy(update={"warmup_s": max(sc.warmup_s, WARMUP_S)})
    cfg = with_planner(load_config(default_demo_config()), planner)
    run = ScenarioRun(sc, cfg, speed=speed, ephemeral_ports=True,
                      perfect_foresight=planner == "perfect")
    t0 = time.perf_counter()
    async with run:
        await run.wait()
    rep = run.report()
    row: dict[str, Any] = {"scenario": scenario, "planner": planner,
                           "wall_s": round(time.perf_counter() - t0, 1),
                           "sim_hours": round(rep["sim_hours"], 2)}
    row.update({k: rep.get(k) for k in KEYS})
    row["export_cap_w"] = min([rep["export_cap_w"], *(c["export_cap_w"]
                                                      for c in rep["cap_changes"])])
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of docs/dispatch.md."""
    out = ["| scenario | planner | cap violation [s] (at faults) | max export [MW] "
           "| curtailed [MWh] | vs perfect | battery throughput [MWh] |",
           "|---|---|---:|---:|---:|---:|---:|"]
    perfect = {r["scenario"]: r["curtailed_energy_wh"] for r in rows if r["planner"] == "perfect"}
    for r in rows:
        ref = perfect.get(r["scenario"])
        rel = (f"{(r['curtailed_energy_wh'] - ref) / ref:+.1%}" if ref and ref > 1e3 else "–")
        out.append(f"| {r['scenario']} | {r['planner']} | {r['cap_violation_s']:.1f} "
                   f"({r['cap_violation_at_faults_s']:.1f}) "
                   f"| {r['max_export_w'] / 1e6:.2f} | {r['curtailed_energy_wh'] / 1e6:.2f} "
                   f"| {rel} | {r['battery_throughput_wh'] / 1e6:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dispatch_quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=shipped_scenarios(),
                    choices=shipped_scenarios())
    ap.add_argument("--planners", nargs="+", default=list(PLANNERS), choices=PLANNERS)
    ap.add_argument("--speed", type=float, help="time acceleration (default: the scenario's)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.speed is not None and not 0 < args.speed <= 10_000:
        ap.error("--speed must be in (0, 10000]")
    logging.basicConfig(level=logging.ERROR)
    rows = []
    runs = [(s, p) for s in args.scenarios for p in args.planners]
    for k, (scenario, planner) in enumerate(runs, 1):
        print(f"[{k}/{len(runs)}] {scenario} with {planner} ...", file=sys.stderr, flush=True)
        rows.append(asyncio.run(one_run(scenario, planner, args.speed)))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        write_runs(args.json, "bench.dispatch_quality", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
