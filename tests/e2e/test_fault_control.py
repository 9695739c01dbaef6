"""Fault injection at run time: `vpp sim serve` in its own process, broken and mended with
`vpp sim fault` over its HTTP control, and the broken device seen over Modbus TCP."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from drivers import Device, ModbusConnection, PollClass, capabilities, load_profile
from tests.e2e.test_two_processes import _site, _stop
from vpp.config import load_config

CLI = [sys.executable, "-m", "vpp.cli"]
SPEED = 10.0


def _vpp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "sim", *args], capture_output=True, text=True, timeout=60)


def _bess_in_fault(site: Path) -> bool:
    """bess1's status as the drivers read it over Modbus TCP."""
    a = load_config(site).asset("bess1")

    async def read() -> bool:
        dev = Device(asset_id=a.id, profile=load_profile(a.profile),
                     connection=ModbusConnection(host=a.host, port=a.port, timeout_s=1.0),
                     unit_id=a.unit_id, now=lambda: datetime.now(UTC))
        try:
            await dev.poll(PollClass.FAST)
            assert dev.value("status") is not None
            return capabilities.in_fault(dev)
        finally:
            dev.connection.close()
    return asyncio.run(read())


def test_faults_injected_at_run_time_from_another_process(tmp_path: Path) -> None:
    site = _site(tmp_path)
    sim = subprocess.Popen([*CLI, "sim", "serve", str(site), "--speed", str(SPEED),
                            "--start", "2026-04-15T11:00:00+08:00", "--control-port", "0"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        assert sim.stdout is not None
        url = None
        for line in sim.stdout:
            m = re.search(r"fault control on (http://\S+)", line)
            url = m.group(1) if m else url
            if "simulated time starts" in line:
                break
        assert url is not None, _stop(sim)
        ctl = ("--control", url)

        assert not _bess_in_fault(site)
        got = _vpp("fault", "bess1", "trip", *ctl)
        assert got.returncode == 0, got.stderr
        assert re.search(r"fault 1: trip on bess1 since .* until ended", got.stdout)
        assert _bess_in_fault(site)

        # refused with the reason, nothing changed
        bad = _vpp("fault", "pv1", "trip", *ctl)
        assert bad.returncode == 1 and "only a battery can suffer 'trip', not 'pv1'" in bad.stderr
        bad = _vpp("fault", "pv1", "garbage", *ctl)
        assert bad.returncode == 1 and "kind 'garbage' needs 'point'" in bad.stderr
        bad = _vpp("fault", "pv1", "melt", *ctl)
        assert bad.returncode == 1 and "kind:" in bad.stderr and "'trip'" in bad.stderr

        # a fault with a duration ends by itself on the simulated clock
        got = _vpp("fault", "wf1", "offline", "--for", "20", *ctl)
        assert got.returncode == 0 and "fault 2: offline on wf1" in got.stdout, got.stderr
        listed = _vpp("faults", *ctl)
        assert listed.returncode == 0 and "wf1" in listed.stdout and "bess1" in listed.stdout
        deadline = time.monotonic() + 20 / SPEED + 15
        while "wf1" in _vpp("faults", *ctl).stdout.split("event(s)")[0]:
            assert time.monotonic() < deadline, "the 20 s fault did not end"
            time.sleep(0.5)

        ended = _vpp("fault-end", "1", *ctl)
        assert ended.returncode == 0 and "fault 1: trip on bess1 ended" in ended.stdout
        assert not _bess_in_fault(site)
        again = _vpp("fault-end", "1", *ctl)
        assert again.returncode == 1 and "404 no fault 1 in force" in again.stderr
        assert sim.poll() is None
    finally:
        _, errs = _stop(sim)
    assert "Traceback" not in errs, errs[-3000:]


def test_fault_commands_say_when_no_plant_is_served() -> None:
    got = _vpp("faults", "--control", "http://127.0.0.1:9")
    assert got.returncode == 1
    assert "no simulated plant's fault control at http://127.0.0.1:9" in got.stderr


def test_a_taken_control_port_is_named(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        got = subprocess.run([*CLI, "sim", "serve", str(_site(tmp_path)), "--control-port",
                              str(port)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 1
    assert f"cannot serve fault control on 127.0.0.1:{port}" in got.stderr
    assert "choose another with --control-port" in got.stderr
