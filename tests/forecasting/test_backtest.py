"""Rolling-origin backtests on simulated series: every candidate graded, the choice beats
the naive baselines, and the CLI writes its report and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forecasting import backtest, load_series
from forecasting.backtest import SELECTED
from tests.forecasting.conftest import CAPACITY_W, KIND, SITE
from vpp.cli import app


@pytest.mark.parametrize(("name", "horizon"), [("pv1", "ultra-short"), ("wf1", "short"),
                                               ("load", "ultra-short")])
def test_backtest_grades_every_candidate(sim_files: dict[str, Path], name: str,
                                         horizon: str) -> None:
    data, _ = load_series(sim_files[name], kind=KIND[name], capacity_w=CAPACITY_W[name],  # type: ignore[arg-type]
                          site=SITE)
    res = backtest(data, horizon=horizon, max_days=3)
    assert len(res.choices) == 3
    assert "persistence" in res.baselines and "seasonal-naive-day" in res.baselines
    sel = res.metrics[SELECTED]
    assert sel["days"] >= 3 and 0 < sel["accuracy"] <= 1
    assert sel["accuracy"] > res.metrics["persistence"]["accuracy"]
    assert sel["pinball_mean"] < res.metrics["persistence"]["pinball_mean"]
    assert set(sel["accuracy_by_scorer"]) == {"north-china", "southern-grid"}
    assert 0 <= sel["coverage"]["observed"] <= 1
    if horizon == "ultra-short":
        assert 0 < sel["accuracy_lead_4h"] <= 1
    assert len(res.plot_index) == len(res.plot_measured_w) > 0


def test_cli_backtest_writes_metrics_and_plot(sim_files: dict[str, Path],
                                              tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["forecast", "backtest", "--data", str(sim_files["pv1"]),
                                 "--kind", "pv", "--capacity-w", "60e6", "--horizon", "short",
                                 "--report", str(out), "--max-days", "2"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["horizon"] == "short" and SELECTED in metrics["models"]
    assert {"accuracy", "nmae", "nrmse", "bias_w", "pinball", "coverage", "skill"} <= set(
        metrics["models"][SELECTED])
    assert (out / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chosen per day" in r.output


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "hydro"], "--kind 'hydro' is not allowed: use one of pv, wind, load"),
    (["--horizon", "medium"], "--horizon 'medium' is not allowed"),
    (["--capacity-w", "0"], "--capacity-w 0.0 is not allowed"),
    (["--scorer", "east"], "--scorer 'east' is not allowed"),
])
def test_cli_names_the_bad_option(sim_files: dict[str, Path], tmp_path: Path,
                                  args: list[str], message: str) -> None:
    base = {"--data": str(sim_files["pv1"]), "--kind": "pv", "--capacity-w": "60e6",
            "--horizon": "short", "--report": str(tmp_path)}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    r = CliRunner().invoke(app, ["forecast", "backtest", *[x for kv in base.items() for x in kv]])
    assert r.exit_code == 2
    assert message in r.output
