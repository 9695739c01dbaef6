"""The plots of a simulated run (PNG): PCC export against the cap, generation against its
forecast, the batteries' SOC, and curtailment. Times are the site's local time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sim.plant import RunStats

MW = 1e6


def _frame(stats: RunStats, tz: str) -> pd.DataFrame:
    df = pd.DataFrame(stats.trace)
    if df.empty:
        return df
    df.index = pd.DatetimeIndex(pd.to_datetime(df.pop("t_s"), unit="s", utc=True)
                                ).tz_convert(tz)
    return df


def _axis(ax: Any, tz: str, ylabel: str, title: str) -> None:
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))  # type: ignore[no-untyped-call]
    ax.set_xlabel(f"local time ({tz})")
    ax.legend(loc="best", fontsize=8, framealpha=0.9)


def _spans(ax: Any, spans: Sequence[tuple[float, float, str]], tz: str) -> None:
    """Shade each (start_s, end_s, label) span, labelled at the top of the axes."""
    for k, (t0, t1, label) in enumerate(spans):
        a, b = (pd.Timestamp(t, unit="s", tz="UTC").tz_convert(tz) for t in (t0, t1))
        ax.axvspan(a, b, color="tab:purple", alpha=0.12, lw=0,
                   label="fault in force" if k == 0 else None)
        ax.annotate(label, xy=(a, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -10 - 9 * (k % 4)), textcoords="offset points", fontsize=7,
                    color="tab:purple")


def forecast_at_lead(vintages: list[Any], lead_s: float, level: float) -> pd.Series:
    """For each step, the quantile ``level`` of the newest forecast issued at least
    ``lead_s`` before the step began [W]."""
    out: dict[pd.Timestamp, float] = {}
    for fc in sorted(vintages, key=lambda f: f.issued_at):
        if level not in fc.quantiles:
            continue
        issued = pd.Timestamp(fc.issued_at)
        for t, v in zip(fc.index, fc.quantiles[level], strict=True):
            if (t - issued).total_seconds() >= lead_s:
                out[t] = float(v)  # a newer vintage overwrites an older one
    return pd.Series(out, dtype=float).sort_index()


def write_plots(stats: RunStats, *, out_dir: Path, tz: str, generators: list[str],
                batteries: list[str], forecasts: dict[str, list[Any]], title: str,
                lead_s: float = 3600.0,
                spans: Sequence[tuple[float, float, str]] = ()) -> list[Path]:
    """Write the run's PNG plots into ``out_dir``; returns their paths. ``spans``
    (start_s, end_s, label) shade the faults on the export and SOC plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = _frame(stats, tz)
    paths: list[Path] = []
    if df.empty:
        return paths

    def save(fig: Any, name: str) -> None:
        fig.suptitle(title, fontsize=12)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(df.index, df["uncontrolled_w"] / MW, color="0.6", lw=1,
            label="export without control (minute max)")
    ax.plot(df.index, df["max_export_w"] / MW, color="tab:blue", lw=1.2,
            label="PCC export (minute max)")
    ax.step(df.index, df["cap_w"] / MW, where="post", color="tab:red", lw=1.5,
            label="export cap")
    _spans(ax, spans, tz)
    _axis(ax, tz, "power [MW]", "PCC export against the cap (simulator's meter)")
    save(fig, "pcc_export.png")

    fig, axes = plt.subplots(len(generators), 1, figsize=(11, 3.2 * len(generators)),
                             squeeze=False)
    for ax, gid in zip(axes[:, 0], generators, strict=True):
        ax.plot(df.index, df[f"{gid}.available_w"] / MW, color="tab:green", lw=1,
                label="available (actual)")
        ax.plot(df.index, df[f"{gid}.power_w"] / MW, color="tab:blue", lw=1,
                label="delivered")
        vint = forecasts.get(gid, [])
        levels = sorted({q for f in vint for q in f.quantiles})
        if vint and levels:
            lo, hi = levels[0], levels[-1]
            mid = min(levels, key=lambda q: abs(q - 0.5))
            f_lo = forecast_at_lead(vint, lead_s, lo)
            f_hi = forecast_at_lead(vint, lead_s, hi)
            f_mid = forecast_at_lead(vint, lead_s, mid)
            f_mid = f_mid[(f_mid.index >= df.index[0]) & (f_mid.index <= df.index[-1])]
            if len(f_mid):
                idx = f_mid.index.tz_convert(tz)
                ax.fill_between(idx, f_lo.reindex(f_mid.index) / MW,
                                f_hi.reindex(f_mid.index) / MW, step="post",
                                color="tab:orange", alpha=0.25,
                                label=f"forecast P{lo * 100:.0f}-P{hi * 100:.0f}")
                ax.step(idx, f_mid / MW, where="post", color="tab:orange", lw=1.2,
                        label=f"forecast P{mid * 100:.0f}, issued {lead_s / 3600:g} h ahead")
        _axis(ax, tz, "power [MW]", f"{gid}: generation against its forecast")
    save(fig, "generation_forecast.png")

    if batteries:
        fig, ax = plt.subplots(figsize=(11, 3.5))
        for bid in batteries:
            ax.plot(df.index, 100 * df[f"{bid}.soc"], lw=1.2, label=f"{bid} SOC")
        ax.set_ylim(0, 100)
        _spans(ax, [sp for sp in spans if any(b in sp[2] for b in batteries)], tz)
        _axis(ax, tz, "state of charge [%]", "Battery state of charge")
        save(fig, "battery_soc.png")

    fig, ax = plt.subplots(figsize=(11, 3.5))
    curtailed = [np.clip((df[f"{g}.available_w"] - df[f"{g}.power_w"]) / MW, 0, None)
                 for g in generators]
    ax.stackplot(df.index, *curtailed, labels=[f"{g} curtailed" for g in generators],
                 alpha=0.8)
    _axis(ax, tz, "power [MW]", "Curtailment (available − delivered)")
    save(fig, "curtailment.png")
    return paths
