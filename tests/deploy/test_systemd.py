"""deploy/systemd: the units pass systemd's own checks (``systemd-analyze verify``, the
``security`` exposure score offline, ``systemd-sysusers`` on the user file), keep their
hardening, and start the commands the CLI and the example site file agree with.

``systemd-analyze verify`` insists that ExecStart names an executable that exists; the
units name /opt/county-vpp/bin/vpp (docs/deploy.md installs the project there), so each
unit is verified as a copy in a temporary folder with that path rewritten to this venv's
``vpp``, and nothing else changed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from tests.conftest import require_tool
from vpp.cli import app
from vpp.config import load_config
from vpp.devices import parse_shard

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
INSTALLED_VPP = "/opt/county-vpp/bin/vpp"
EXAMPLE = ROOT / "deploy" / "examples" / "bashang-county.toml"
MAX_EXPOSURE = 1.5  # systemd-analyze security, offline; 1.2 and 1.3 when written


@pytest.fixture
def systemd_analyze() -> str:
    return require_tool("systemd-analyze", "systemd")


def _settings(unit: Path) -> dict[str, list[str]]:
    """Each key of the unit's sections with all its values, in order (continuation
    lines joined)."""
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _exec_start(unit: Path) -> list[str]:
    (cmd,) = _settings(unit)["ExecStart"]
    return shlex.split(cmd)


def _venv_copy(unit: Path, tmp_path: Path) -> Path:
    vpp = Path(sys.executable).with_name("vpp")
    assert vpp.exists(), vpp
    text = unit.read_text()
    assert INSTALLED_VPP in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_VPP, str(vpp)))
    return copy


def test_the_units_are_there() -> None:
    assert [u.name for u in UNITS] == ["county-vpp-poll@.service", "county-vpp-sim.service",
                                       "county-vpp.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_finds_nothing(systemd_analyze: str, unit: Path,
                                              tmp_path: Path) -> None:
    copy = _venv_copy(unit, tmp_path)
    res = subprocess.run([systemd_analyze, "verify", "--man=no", str(copy)],
                         capture_output=True, text=True, timeout=60, check=False,
                         cwd=tmp_path)
    # verify logs every unknown key, bad value or missing binary, sometimes with exit 0
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout + res.stderr == ""


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_the_exposure_score_stays_low(systemd_analyze: str, unit: Path,
                                      tmp_path: Path) -> None:
    copy = _venv_copy(unit, tmp_path)
    res = subprocess.run([systemd_analyze, "security", "--offline=yes", "--no-pager",
                          str(copy)], capture_output=True, text=True, timeout=60,
                         check=False, cwd=tmp_path)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_the_hardening_is_kept(unit: Path) -> None:
    s = _settings(unit)

    def one(key: str) -> str:
        assert key in s, f"{unit.name}: {key}= is missing"
        return s[key][-1]

    assert one("User") == "county-vpp" and one("Group") == "county-vpp"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictSUIDSGID", "LockPersonality", "RestrictRealtime",
                "MemoryDenyWriteExecute"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert s["SystemCallFilter"][0] == "@system-service"
    assert one("Restart") == "on-failure" and "RestartSec" in s
    assert "WatchdogSec" not in s  # the controller does not notify systemd
    assert "ReadWritePaths" not in s  # StateDirectory is the only writable path
    assert "DynamicUser" not in s  # a static user: it may read the root:county-vpp site file


def test_the_controller_unit_runs_the_site_file_in_its_state_directory(
        systemd_analyze: str) -> None:
    s = _settings(SYSTEMD / "county-vpp.service")
    assert _exec_start(SYSTEMD / "county-vpp.service") == [
        INSTALLED_VPP, "run", "-c", "/etc/county-vpp/site.toml"]
    assert s["StateDirectory"] == ["county-vpp"]
    assert s["EnvironmentFile"] == ["/etc/county-vpp/secrets.env"]
    # the example site keeps its data (the MQTT outbox) where systemd lets it write
    cfg = load_config(EXAMPLE)
    assert cfg.storage.data_dir == "/var/lib/county-vpp"
    assert s["WorkingDirectory"] == [cfg.storage.data_dir]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_the_command_line_is_one_the_cli_accepts(unit: Path) -> None:
    argv = _exec_start(unit)
    assert argv[0] == INSTALLED_VPP
    group = get_command(app)
    words = argv[1:]
    cmd = group
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:  # type: ignore[attr-defined]
        cmd = cmd.commands[words.pop(0)]  # type: ignore[attr-defined]
    assert cmd is not group, argv
    ctx = cmd.make_context(cmd.name or "vpp", words)  # raises on an unknown option
    assert ctx.params


def test_the_sim_unit_serves_the_site_file_the_controller_runs() -> None:
    argv = _exec_start(SYSTEMD / "county-vpp-sim.service")
    assert argv[1:4] == ["sim", "serve", "/etc/county-vpp/site.toml"]
    assert argv[argv.index("--control-host") + 1] == "127.0.0.1"  # no authentication
    forecast = argv[argv.index("--forecast-file") + 1]
    state = _settings(SYSTEMD / "county-vpp-sim.service")["StateDirectory"]
    assert forecast.startswith(f"/var/lib/{state[-1]}/")


def test_the_poll_template_runs_the_shard_its_instance_names(systemd_analyze: str,
                                                            tmp_path: Path) -> None:
    """county-vpp-poll@2-4.service (systemd-escape's name for shard 2/4) runs ``vpp poll
    --shard 2/4``: %I is the instance as systemd unescapes it."""
    escape = require_tool("systemd-escape", "systemd")
    unit = SYSTEMD / "county-vpp-poll@.service"
    argv = _exec_start(unit)
    assert argv[1:4] == ["poll", "--shard", "%I"]
    assert argv[argv.index("--config") + 1] == "/etc/county-vpp/site.toml"
    assert _settings(unit)["RestartPreventExitStatus"] == ["2"]  # vpp poll's refused --shard

    def run(*args: str) -> str:
        res = subprocess.run([escape, *args], capture_output=True, text=True, timeout=60,
                             check=True)
        return res.stdout.strip()
    name = run("--template", unit.name, "2/4")
    assert name == "county-vpp-poll@2-4.service"
    assert parse_shard(run("--unescape", name.split("@")[1].removesuffix(".service"))) == (2, 4)
    # and the instance passes verify (the template's copy, as above)
    _venv_copy(unit, tmp_path)
    res = subprocess.run([systemd_analyze, "verify", "--man=no", name], capture_output=True,
                         text=True, timeout=60, check=False, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_sysusers_creates_the_user_with_its_state_directory_as_home(
        systemd_analyze: str, tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    res = subprocess.run([sysusers, f"--root={tmp_path}", "-"],
                         input=(SYSTEMD / "county-vpp.sysusers").read_text(),
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    (entry,) = [line.split(":") for line in passwd if line.startswith("county-vpp:")]
    assert int(entry[2]) < 1000  # a system user
    assert entry[5] == "/var/lib/county-vpp" and entry[6].endswith("nologin")
    assert any(g.startswith("county-vpp:") for g in
               (tmp_path / "etc" / "group").read_text().splitlines())
