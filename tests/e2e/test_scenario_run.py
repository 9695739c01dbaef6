"""`vpp sim run`: a scenario against the real controller, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT = ROOT / "tests" / "data" / "scenario-midday-short.toml"
DEMO_KEYS = ("site", "start", "end", "seed", "speed", "sim_hours", "wall_seconds",
             "control_interval_s", "export_cap_w", "max_export_w", "cap_violation_s",
             "uncontrolled_max_export_w", "curtailed_energy_wh", "renewable_energy_wh",
             "battery_throughput_wh", "energy_balance_error_ratio", "control_steps")


def test_vpp_sim_run_writes_the_report_and_the_plots(tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "vpp.cli", "sim", "run", str(SHORT),
                          "--report", str(out)], capture_output=True, text=True, timeout=300,
                         check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "plots written" in res.stdout
    rep = json.loads((out / "report.json").read_text())
    for key in (*DEMO_KEYS, "scenario", "cap_changes", "faults", "bms_events", "plots",
                "warmup_s"):
        assert key in rep, key
    assert rep["scenario"] == "midday-short"
    # the books cover the scenario, not the warm-up
    assert datetime.fromisoformat(rep["start"]) == datetime.fromisoformat(
        "2026-04-15T11:30:00+08:00")
    assert 1.45 <= rep["sim_hours"] <= 1.6
    # the uncontrolled plant runs far over the cap, which is cut from 35 to 25 MW midway
    assert rep["uncontrolled_max_export_w"] > 2 * 25e6
    assert rep["cap_changes"] == [{"at": "2026-04-15T12:00:00+08:00",
                                   "export_cap_w": 25e6, "notice_s": 900.0}]
    # the cut is met as it takes effect, the meter's loss and the garbage cost nothing; the
    # battery trip throws its 20 MW of charging onto the PCC at once, and the controller
    # needs a control step to answer (6 simulated s at ×600); the loop's stalls hold the
    # paced clock, but readings taken milliseconds apart are seconds of ramp apart here
    step = rep["control_interval_s"]
    assert rep["cap_violation_s"] <= 5 * step, (rep["cap_violation_s"], res.stderr[-3000:])
    assert rep["cap_violation_elsewhere_s"] <= step, (  # nearly all at faults
        rep["cap_violations"], res.stderr[-3000:])
    assert sum(v["s"] for v in rep["cap_violations"]) == pytest.approx(
        rep["cap_violation_s"], abs=0.01 * len(rep["cap_violations"]) + 1e-6)
    assert rep["energy_balance_error_ratio"] < 1e-3
    assert [(f["device"], f["kind"], f["action"]) for f in rep["faults"]] == [
        ("bess1", "trip", "start"), ("bess1", "trip", "end"), ("pcc", "offline", "start"),
        ("pcc", "offline", "end"), ("wf1", "garbage", "start"), ("wf1", "garbage", "end")]
    assert set(rep["plots"]) == {"pcc_export.png", "generation_forecast.png",
                                 "battery_soc.png", "curtailment.png"}
    for name in rep["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name


def test_fault_spans_pair_starts_with_ends_and_run_to_the_end() -> None:
    from sim.inject import Event
    from vpp.simrun import fault_spans

    events = [Event(10.0, "bess1", "trip", "start", 1), Event(20.0, "pcc", "offline", "start", 2),
              Event(30.0, "bess1", "trip", "end", 1), Event(40.0, "wf1", "drop", "start", 3),
              Event(50.0, "wf1", "drop", "end", 3)]
    bms = [(15.0, "bess1", "trip"), (25.0, "bess1", "reset"), (60.0, "bess1", "trip")]
    assert fault_spans(events, bms, 100.0) == [
        (10.0, 30.0, "bess1 trip"), (15.0, 25.0, "bess1 BMS trip (hot)"),
        (20.0, 100.0, "pcc offline"), (40.0, 50.0, "wf1 drop"),
        (60.0, 100.0, "bess1 BMS trip (hot)")]


def test_violations_are_joined_into_stretches_of_consecutive_plant_steps() -> None:
    from vpp.simrun import violation_stretches

    steps = [(100.0, 1.0), (101.0, 1.0), (102.0, 0.5), (110.0, 1.0), (112.0, 1.0)]
    assert violation_stretches(steps) == [(100.0, 102.5, 2.5), (110.0, 111.0, 1.0),
                                          (112.0, 113.0, 1.0)]
    assert violation_stretches([]) == []


def test_violations_count_at_a_fault_within_a_minute_of_its_start_or_end() -> None:
    from vpp.simrun import FAULT_GRACE_S, violations_at_faults

    spans = [(100.0, 500.0, "bess1 trip"), (1000.0, 1060.0, "pcc offline")]
    violations = [(99.5, 0.5), (100.0, 1.0), (100.0 + FAULT_GRACE_S, 1.0),
                  (100.0 + FAULT_GRACE_S + 1, 1.0), (50.0, 2.0), (1010.0, 3.0),
                  (520.0, 0.5), (600.0, 4.0)]
    assert violations_at_faults(violations, spans) == 0.5 + 1.0 + 1.0 + 3.0 + 0.5
    assert violations_at_faults(violations, []) == 0.0
