"""Benchmark: forecasting a fleet of series on 2 cores, as the controller would.

Two phases over N series (default 200: a third each PV, wind and load, 28 days of 15-minute
history with day-ahead weather forecasts, from seeded simulations of the demo county,
each series scaled by its own factor):

1. **short-term with fit**: fit every candidate, calibrate, choose, and issue 72 h;
2. **ultra-short refresh**: with the fitted models, issue the next 4 h from the latest data.

The series are spread over worker processes (default 2, one per core); each worker builds
its series before the clock starts and keeps its fitted models, as a forecast worker would.
Reported: each phase's wall time (until the slowest worker is done), per-series times, and
each worker's peak resident memory.

Usage::

    python -m bench.forecast_fleet                   # 200 series, 2 workers
    python -m bench.forecast_fleet --series 60 --workers 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

SEEDS = 6  # distinct simulated weather histories; the series cycle through them


def _series(indices: list[int], days: int) -> list[Any]:
    from forecasting import Site
    from forecasting.data import STEP_S
    from forecasting.series import PowerCurve, SeriesData
    from forecasting.solar import PvPlantGeometry, interval_clear_sky_power_w
    from vpp.cli import default_demo_config
    from vpp.config import load_config
    from vpp.forecastdata import simulated_series

    cfg = load_config(default_demo_config())
    site = Site(latitude=cfg.site.latitude, longitude=cfg.site.longitude,
                altitude_m=cfg.site.altitude_m, tz=cfg.site.timezone)
    cache: dict[int, dict[str, Any]] = {}
    out = []
    for i in indices:
        seed = i % SEEDS
        if seed not in cache:
            cache[seed] = simulated_series(cfg, start=datetime(2026, 3, 1, tzinfo=UTC),
                                           days=days, seed=seed)
        name, kind, cap = [("pv1", "pv", 60e6), ("wf1", "wind", 30e6),
                           ("load", "load", 35e6)][i % 3]
        frame = cache[seed][name]
        scale = 0.5 + (i * 0.618) % 1.0
        grid = frame.index
        cs = None
        if kind == "pv":
            geo = PvPlantGeometry(latitude=site.latitude, longitude=site.longitude,
                                  altitude_m=site.altitude_m, tilt_deg=30, azimuth_deg=180,
                                  dc_power_w=70e6 * scale, rated_power_w=cap * scale)
            cs = interval_clear_sky_power_w(grid, STEP_S, geo)
        out.append(SeriesData(
            name=f"{name}-{i}", kind=kind, capacity_w=cap * scale, index=grid,  # type: ignore[arg-type]
            y_w=frame["power_w"].to_numpy(dtype=float) * scale, site=site,
            exog=frame.drop(columns="power_w"), clear_sky_w=cs,
            curve=PowerCurve(rated_power_w=cap * scale) if kind == "wind" else None))
    return out


def _worker(indices: list[int], days: int, conn: Any) -> None:
    from forecasting import SeriesForecaster

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = _series(indices, days)
    conn.send("ready")
    fitted: list[tuple[Any, Any]] = []
    for cmd in iter(conn.recv, "stop"):
        t0 = time.perf_counter()
        times = []
        if cmd == "fit":
            for d in data:
                ts = time.perf_counter()
                end = len(d) - 288
                f = SeriesForecaster(d.name)
                f.fit(d, end)
                f.quantile_paths(d, np.array([end]), 288, "short")
                fitted.append((f, d))
                times.append(time.perf_counter() - ts)
        elif cmd == "refresh":
            for f, d in fitted:
                ts = time.perf_counter()
                end = len(d) - 288 + 16  # 4 h later: new measurements, same models
                f.quantile_paths(d, np.array([end]), 16, "ultra-short")
                times.append(time.perf_counter() - ts)
        conn.send({"wall_s": time.perf_counter() - t0, "times_s": times,
                   "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run(n_series: int, workers: int, days: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    chunks = [list(range(k, n_series, workers)) for k in range(workers)]
    procs, conns = [], []
    for chunk in chunks:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(chunk, days, child), daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
    for c in conns:
        assert c.recv() == "ready"
    out: dict[str, Any] = {"series": n_series, "workers": workers, "history_days": days,
                           "cpus": os.cpu_count()}
    for phase in ("fit", "refresh"):
        t0 = time.perf_counter()
        for c in conns:
            c.send(phase)
        res = [c.recv() for c in conns]
        wall = time.perf_counter() - t0
        times = np.concatenate([r["times_s"] for r in res])
        out[phase] = {"wall_s": round(wall, 2),
                      "per_series_median_s": round(float(np.median(times)), 4),
                      "per_series_max_s": round(float(times.max()), 4),
                      "worker_max_rss_mib": [round(r["max_rss_mib"], 1) for r in res]}
        rss = ", ".join(f"{r['max_rss_mib']:.0f}" for r in res)
        print(f"{phase:8s} {n_series} series on {workers} workers: {wall:7.2f} s wall, "
              f"median {np.median(times) * 1000:8.1f} ms, max {times.max() * 1000:8.1f} ms "
              f"per series, peak RSS {rss} MiB", flush=True)
    for c in conns:
        c.send("stop")
    for p in procs:
        p.join(timeout=10)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--days", type=int, default=28, help="days of history per series")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    a = ap.parse_args(argv)
    out = run(a.series, a.workers, a.days + 3)  # + the 72 h issued into
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
