"""Benchmark: the dispatch LP's build and solve times from 1 to 1,000 assets × 96 steps.

For each size, three ways to the plan:

- ``full``: the LP with one set of variables per asset (``vpp.dispatch.Dispatcher``):
  build, first solve, re-solve with new forecasts and SOCs (cvxpy Parameters, HiGHS);
- ``aggregate``: the LP over the classes of assets (``vpp.aggregate``), split back to
  every asset; the objective of its plan against the full LP's optimum;
- ``matrix``: the full LP's own matrices (cvxpy's problem data) solved directly by HiGHS
  through scipy, without cvxpy: what the modelling layer costs.

The county: half PV plants, a quarter wind farms, a quarter batteries (in stations of ten
identical containers that the station keeps at one SOC), on four feeders with export
limits; forecasts differ per plant.

Usage::

    python -m bench.dispatch_scale                      # 1, 10, 100, 1000 (about 4 min)
    python -m bench.dispatch_scale --sizes 10 100 --time-limit 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linprog

from bench.report import write_runs
from vpp.aggregate import AggregateDispatcher
from vpp.dispatch import (
    BatteryModel,
    Dispatcher,
    DispatchInputs,
    Fleet,
    GeneratorModel,
    GroupLimit,
    Weights,
)

T, STEP_S = 96, 900
START = datetime(2026, 4, 15, tzinfo=UTC)
STATION = 10  # containers per battery station


def county(n: int) -> Fleet:
    n_bat, n_wind = n // 4, max(1, n // 4)
    n_pv = n - n_bat - n_wind
    pv = tuple(GeneratorModel(id=f"pv{i}", kind="pv", rated_power_w=(2 + i % 7) * 1e6)
               for i in range(n_pv))
    wind = tuple(GeneratorModel(id=f"wf{i}", kind="wind", rated_power_w=(5 + i % 5) * 2e6)
                 for i in range(n_wind))
    bats = []
    for i in range(n_bat):
        hours = (1, 2, 4)[(i // STATION) % 3]  # a station's containers are alike
        bats.append(BatteryModel(id=f"b{i}", capacity_wh=2.5e6 * hours,
                                 max_charge_w=2.5e6, max_discharge_w=2.5e6, soc_min=0.05,
                                 soc_max=0.95, charge_efficiency=0.95,
                                 discharge_efficiency=0.95))
    groups: tuple[GroupLimit, ...] = ()
    if n >= 100:  # four feeders; a station's containers on one
        rated = sum(g.rated_power_w for g in (*pv, *wind))
        groups = tuple(GroupLimit(
            id=f"feeder{k}", max_export_w=0.2 * rated,
            assets=tuple([g.id for g in pv[k::4]] + [g.id for g in wind[k::4]]
                         + [b.id for i, b in enumerate(bats) if (i // STATION) % 4 == k]))
            for k in range(4))
    return Fleet(generators=pv + wind, batteries=tuple(bats), groups=groups)


def inputs(fleet: Fleet, seed: int) -> DispatchInputs:
    rng = np.random.default_rng(seed)
    h = np.arange(T) * STEP_S / 3600
    sun = np.clip(np.sin((h - 6) / 12 * np.pi), 0, None)
    low, mid, high = {}, {}, {}
    for g in fleet.generators:
        if g.kind == "pv":
            m = g.rated_power_w * sun * rng.uniform(0.7, 1.0) * (1 - 0.15 * rng.random(T))
        else:
            m = np.clip(g.rated_power_w * (0.45 + 0.3 * rng.standard_normal(T).cumsum()
                                           / np.sqrt(T)), 0, g.rated_power_w)
        low[g.id], mid[g.id], high[g.id] = 0.8 * m, m, 1.15 * m
    rated = sum(g.rated_power_w for g in fleet.generators)
    load = 0.25 * rated * (1 + 0.3 * np.exp(-0.5 * ((h - 19.5) / 2) ** 2))
    station_soc = rng.uniform(0.2, 0.8, len(fleet.batteries) // STATION + 1)
    soc = {b.id: float(station_soc[i // STATION] + rng.uniform(0, 0.002))
           for i, b in enumerate(fleet.batteries)}
    return DispatchInputs(
        start=START, gen_low_w=low, gen_mid_w=mid, gen_high_w=high,
        load_low_w=0.95 * load, load_mid_w=load, load_high_w=1.05 * load,
        export_cap_w=np.full(T, 0.35 * rated), import_limit_w=np.full(T, rated), soc=soc)


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def matrix_solve_s(d: Dispatcher, time_limit_s: float) -> tuple[float | None, float, str]:
    """The full LP's matrices from cvxpy, solved by HiGHS through scipy: (objective, s)."""
    data, _, _ = d.problem.get_problem_data(solver="CLARABEL")  # A x + s = b, s in K
    z, A, b, c = data["dims"].zero, data["A"].tocsr(), data["b"], data["c"]
    t0 = time.perf_counter()
    res = linprog(c, A_ub=A[z:], b_ub=b[z:], A_eq=A[:z], b_eq=b[:z], bounds=(None, None),
                  method="highs", options={"time_limit": time_limit_s})
    elapsed = time.perf_counter() - t0
    obj = float(res.fun) + float(data.get("offset", 0.0)) if res.status == 0 else None
    return obj, elapsed, res.message


def one_size(n: int, time_limit_s: float, full_up_to: int) -> dict[str, Any]:
    fleet = county(n)
    first, second = inputs(fleet, 1), inputs(fleet, 2)
    second = replace(second, soc={k: min(0.95, v + 0.05) for k, v in second.soc.items()})
    w, ramp = Weights(), 0.1 * sum(g.rated_power_w for g in fleet.generators)
    row: dict[str, Any] = {"assets": len(fleet.asset_ids), "steps": T,
                           "generators": len(fleet.generators),
                           "batteries": len(fleet.batteries), "groups": len(fleet.groups)}
    agg, row["aggregate_build_s"] = _timed(lambda: AggregateDispatcher(
        fleet, steps=T, step_s=STEP_S, weights=w, export_ramp_w_per_step=ramp))
    a1, row["aggregate_first_solve_s"] = _timed(lambda: agg.solve(first, solvers=("HIGHS",),
                                                                  time_limit_s=time_limit_s))
    a2, row["aggregate_resolve_s"] = _timed(lambda: agg.solve(second, solvers=("HIGHS",),
                                                              time_limit_s=time_limit_s))
    row["aggregate_status"] = a2.status.value
    row["aggregate_pools"] = len(agg.inner.fleet.batteries) if agg.inner else 0
    row["aggregate_lp_solve_s"] = round(a2.solve_time_s, 3)
    if n <= full_up_to:
        full, row["full_build_s"] = _timed(lambda: Dispatcher(
            fleet, steps=T, step_s=STEP_S, weights=w, export_ramp_w_per_step=ramp))
        f1, row["full_first_solve_s"] = _timed(lambda: full.solve(
            first, solvers=("HIGHS",), time_limit_s=time_limit_s))
        f2, row["full_resolve_s"] = _timed(lambda: full.solve(
            second, solvers=("HIGHS",), time_limit_s=time_limit_s))
        row["full_status"] = f2.status.value
        row["full_variables"] = sum(v.size for v in full.problem.variables())
        row["full_first_status"] = f1.status.value
        if f1.status.usable and a1.status.usable:
            row["first_objective_gap_ratio"] = (a1.objective - f1.objective) / abs(f1.objective)
        # the matrix form of the re-solve's LP: the reference where cvxpy's solve ran out
        obj, row["matrix_solve_s"], msg = matrix_solve_s(full, time_limit_s)
        row["matrix_status"] = "optimal" if obj is not None else msg
        ref = f2.objective if f2.status.usable else obj
        if ref is not None and a2.status.usable:
            row["aggregate_objective_gap_ratio"] = (a2.objective - ref) / abs(ref)
        if obj is not None and f2.status.usable:
            row["matrix_objective_gap_ratio"] = (obj - f2.objective) / abs(f2.objective)
    return {k: round(v, 4) if isinstance(v, float) and not k.endswith("_ratio") else v
            for k, v in row.items()}  # times to 0.1 ms; gaps as they are


def table(rows: list[dict[str, Any]]) -> str:
    def s(r: dict[str, Any], k: str) -> str:
        v = r.get(k)
        return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    def gap(r: dict[str, Any]) -> str:
        v, first = r.get("aggregate_objective_gap_ratio"), r.get("first_objective_gap_ratio")
        return " / ".join("–" if x is None else f"{x:+.1e}" for x in (first, v))

    out = ["| assets | full: build / first / re-solve [s] | matrix HiGHS [s] | aggregate: "
           "build / first / re-solve [s] | pools | objective gap first / re-solve |",
           "|---:|---|---:|---|---:|---:|"]
    for r in rows:
        full = (f"{s(r, 'full_build_s')} / {s(r, 'full_first_solve_s')} / "
                f"{s(r, 'full_resolve_s')}" + ("" if r.get("full_status") in (None, "optimal")
                                               else f" ({r['full_status']})"))
        out.append(f"| {r['assets']} | {full} | {s(r, 'matrix_solve_s')} | "
                   f"{s(r, 'aggregate_build_s')} / {s(r, 'aggregate_first_solve_s')} / "
                   f"{s(r, 'aggregate_resolve_s')} | {r['aggregate_pools']} | {gap(r)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dispatch_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--time-limit", type=float, default=60.0, help="per solve [s]")
    ap.add_argument("--full-up-to", type=int, default=1000,
                    help="solve the full LP up to this many assets")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if any(n < 1 or n > 10_000 for n in args.sizes):
        ap.error("--sizes must be in [1, 10000]")
    warnings.simplefilter("ignore")  # cvxpy's "solution may be inaccurate" on time limits
    rows = []
    for n in args.sizes:
        print(f"{n} assets ...", file=sys.stderr, flush=True)
        rows.append(one_size(n, args.time_limit, args.full_up_to))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        write_runs(args.json, "bench.dispatch_scale", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
