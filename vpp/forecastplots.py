"""The backtest's picture (PNG): the chosen forecast's band against the measurement, and
the daily accuracy of the choice and of each baseline against the pass mark."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from forecasting.backtest import SELECTED, BacktestResult
from forecasting.grading import PASS_MARK

MW = 1e6
PLOT_DAYS = 7  # the band panel shows the last week; the bars show every day


def write_backtest_plot(res: BacktestResult, path: Path, tz: str) -> Path:
    unit, scale = ("MW", MW) if res.capacity_w >= MW else ("kW", 1e3)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), constrained_layout=True)
    if len(res.plot_index):
        idx = res.plot_index.tz_convert(tz)
        keep = idx >= idx[-1] - pd.Timedelta(days=PLOT_DAYS)
        qs = sorted(res.plot_quantiles_w)
        lo, hi = res.plot_quantiles_w[qs[0]][keep], res.plot_quantiles_w[qs[-1]][keep]
        mid = res.plot_quantiles_w[0.5][keep] if 0.5 in res.plot_quantiles_w else None
        top.fill_between(idx[keep], lo / scale, hi / scale, color="tab:blue", alpha=0.25, lw=0,
                         label=f"P{round(qs[0] * 100)}-P{round(qs[-1] * 100)}")
        if mid is not None:
            top.plot(idx[keep], mid / scale, color="tab:blue", lw=1.2, label="P50")
        top.plot(idx[keep], res.plot_measured_w[keep] / scale, color="black", lw=1.0,
                 label="measured")
        top.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=tz))  # type: ignore[no-untyped-call]
    lead = "4 h ahead" if res.horizon == "ultra-short" else "day ahead"
    top.set_title(f"{res.series} ({res.kind}): {res.horizon} forecast, {lead}, chosen model",
                  loc="left", fontsize=11)
    top.set_ylabel(f"power [{unit}]")
    top.set_xlabel(f"local time ({tz})")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper right", fontsize=8)

    models = [SELECTED, *res.baselines]
    days = sorted(res.metrics.get(SELECTED, {}).get("daily_accuracy", {}))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(days))
    for k, m in enumerate(models):
        daily = res.metrics.get(m, {}).get("daily_accuracy", {})
        bottom.bar(x + k * width, [daily.get(d, np.nan) * 100 for d in days], width,
                   label=f"{m} ({res.metrics.get(m, {}).get('accuracy', float('nan')):.1%})")
    bottom.axhline(PASS_MARK[res.horizon] * 100, color="tab:red", lw=1, ls="--",
                   label=f"pass mark {PASS_MARK[res.horizon]:.0%}")
    bottom.set_xticks(x + 0.4 - width / 2, [d[5:] for d in days], rotation=90, fontsize=7)
    values = [v for m in models for v in res.metrics.get(m, {}).get("daily_accuracy", {}).values()]
    floor = min(values, default=0.5) * 100
    bottom.set_ylim(max(0.0, min(80.0, floor - 5.0)), 100)
    bottom.set_ylabel(f"daily accuracy [%] ({res.scorer})")
    bottom.set_title("daily accuracy: chosen model\nagainst the baselines", loc="left",
                     fontsize=11)
    bottom.grid(True, axis="y", alpha=0.3)
    bottom.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncols=3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
