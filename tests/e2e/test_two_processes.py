"""Real hardware-in-the-loop: `vpp sim serve` and `vpp run` as two processes that share
nothing but Modbus TCP and the simulator's clock; the simulator's meter judges the cap."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import DEMO_CONFIG
from vpp.broker import free_ports

SPEED = 120.0
# simulated: the controller process starts meanwhile (imports, storage, services: 5.8 s
# wall here, 11 s with both cores kept busy; a clock shared by two processes is not paced)
WARMUP_S = 2400.0
RUN_WALL_S = 20.0  # measured, after the warm-up


def _site(tmp_path: Path) -> Path:
    """The demo county on free ports, MQTT off, the API on any port, storage in tmp."""
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    ports = iter(free_ports(5))
    text = re.sub(r"^port = 150\d\d", lambda m: f"port = {next(ports)}", text, flags=re.M)
    text = text.replace("[mqtt]\nenabled = true", "[mqtt]\nenabled = false")
    text = re.sub(r"(\[api\]\nhost = \"127.0.0.1\"\n)port = 8080", r"\1port = 0", text)
    text = text.replace("[storage]\n", f"[storage]\ndata_dir = \"{tmp_path / 'data'}\"\n")
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _stop(p: subprocess.Popen[str]) -> tuple[str, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        return p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()


def test_simulator_and_controller_as_separate_processes(tmp_path: Path) -> None:
    site = _site(tmp_path)
    clock, books = tmp_path / "clock.json", tmp_path / "meter.json"
    cli = [sys.executable, "-m", "vpp.cli"]
    sim = subprocess.Popen(
        [*cli, "sim", "serve", str(site), "--speed", str(SPEED),
         "--start", "2026-04-15T11:00:00+08:00", "--clock-file", str(clock),
         "--report", str(books), "--warmup", str(WARMUP_S), "--control-port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctrl = None
    try:
        for _ in range(300):
            if clock.exists() or sim.poll() is not None:
                break
            time.sleep(0.05)
        assert clock.exists(), _stop(sim)
        ctrl = subprocess.Popen([*cli, "run", "--config", str(site), "--sim-clock", str(clock)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(WARMUP_S / SPEED + RUN_WALL_S)
        assert ctrl.poll() is None, _stop(ctrl)
        assert sim.poll() is None, _stop(sim)
    finally:
        c_out, c_err = _stop(ctrl) if ctrl is not None else ("", "")
        s_out, s_err = _stop(sim)
    assert "Traceback" not in c_err, c_err[-3000:]
    assert "Traceback" not in s_err, s_err[-3000:]
    assert "controller for site" in c_out
    assert "simulated time starts" in s_out
    rep = json.loads(books.read_text(encoding="utf-8"))
    hours = rep["sim_hours"]
    assert RUN_WALL_S * SPEED / 3600 * 0.8 < hours < (RUN_WALL_S + 30) * SPEED / 3600
    cap = rep["export_cap_w"]
    assert rep["uncontrolled_max_export_w"] > 1.1 * cap, rep  # the plant alone would break it
    assert rep["cap_violation_s"] == 0, rep
    assert rep["max_export_w"] <= cap * (1 + rep["violation_tolerance_ratio"])
    assert rep["curtailed_energy_wh"] > 0 or rep["battery_throughput_wh"] > 0
    assert rep["energy_balance_error_ratio"] < 1e-6
