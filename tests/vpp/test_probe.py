"""``vpp probe`` against simulated devices over real TCP, as an engineer runs it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from drivers import load_profile
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit
from sim.sunspec import SunSpecSimUnit
from vpp.probe import parse_url


async def _probe(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vpp.cli", "probe", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={"COLUMNS": "160", "PATH": ""})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def test_parse_url() -> None:
    t = parse_url("modbus://10.0.0.5:5020/3")
    assert (t.host, t.port, t.unit_id) == ("10.0.0.5", 5020, 3)
    assert parse_url("modbus://meter").port == 502
    with pytest.raises(ValueError, match="modbus://host"):
        parse_url("http://x")


async def test_probe_prints_every_point_with_unit_and_quality() -> None:
    profile = load_profile("generic-meter")
    unit = SimUnit(profile, lambda: {"export_w": 12.5e6, "energy_export_wh": 7e8,
                                     "energy_import_wh": 1e6, "frequency_hz": 50.02},
                   lambda p, v: None)
    srv = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={4: unit})
    await srv.start()
    try:
        code, out, err = await _probe(f"modbus://127.0.0.1:{srv.port}/4", "--profile",
                                      "generic-meter")
    finally:
        await srv.stop()
    assert code == 0, err
    for p in profile.points:
        assert p.name in out
    assert "1.25e+07" in out and "50.02" in out and "good" in out and "online" in out


async def test_probe_sunspec_lists_the_models() -> None:
    unit = SunSpecSimUnit([1, 103, 120, 123], lambda: {"m103_w": 5000.0, "m103_w_sf": 0.0},
                          lambda p, v: None, text={"m1_mn": "County", "m1_md": "PV-100",
                                                   "m1_sn": "A1"})
    srv = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={1: unit})
    await srv.start()
    try:
        code, out, err = await _probe(f"modbus://127.0.0.1:{srv.port}/1", "--profile",
                                      "sunspec")
    finally:
        await srv.stop()
    assert code == 0, err
    assert "SunSpec models found: 1 (common)" in out and "103 (inverter_three_phase)" in out
    assert "m103_w " in out and "PV-100" in out


async def test_probe_of_nothing_is_a_clear_error() -> None:
    code, _out, err = await _probe("modbus://127.0.0.1:1/1", "--profile", "generic-pv",
                                  "--timeout", "0.5")
    assert code == 1
    assert "probe failed" in err or "no point could be read" in err
    assert "Traceback" not in err
