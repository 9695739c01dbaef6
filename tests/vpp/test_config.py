"""Site configuration: the demo parses; bad input is named field by field, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_CONFIG
from vpp.config import ConfigError, load_config, parse_config


def demo_data() -> dict[str, Any]:
    return tomllib.loads(DEMO_CONFIG.read_text())


def test_demo_config_is_valid() -> None:
    cfg = load_config(DEMO_CONFIG)
    assert cfg.site.id == "demo-county"
    assert cfg.pcc.meter == "pcc"
    assert {a.kind for a in cfg.assets} == {"pv", "wind", "battery", "load", "meter"}
    with pytest.raises(Exception, match="frozen"):
        cfg.pcc.export_cap_w = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["pcc"].update(export_cap_w=-1), "pcc.export_cap_w: -1 is not allowed: Input "
                                                 "should be greater than 0"),
    (lambda d: d["assets"][2].update(soc_max=1.5), "assets[2] (bess1).soc_max: 1.5 is not allowed"),
    (lambda d: d["assets"][2].update(soc_min=0.9, soc_max=0.5),
     "soc_min (0.9) must be below soc_max (0.5)"),
    (lambda d: d["assets"][0].update(kind="solar"),
     "assets[0] (pv1).kind: 'solar' is not a kind; allowed: pv, wind, battery, load, meter"),
    (lambda d: d["assets"][1].pop("rated_power_w"),
     "assets[1] (wf1).rated_power_w: required key is missing"),
    (lambda d: d["assets"][0].update(profile="nope"), "unknown profile 'nope'"),
    (lambda d: d["assets"][0].update(profile="generic-battery"),
     "asset pv1 is a pv but profile generic-battery is for a battery"),
    (lambda d: d["site"].update(timezone="Mars/Base"), "site.timezone: 'Mars/Base'"),
    (lambda d: d["pcc"].update(meter="pv1"), "pcc.meter = 'pv1' must name an asset of kind"),
    (lambda d: d["control"].update(bogus=1), "control.bogus: unknown key"),
    (lambda d: d["assets"][1].update(port=15021), "assets pv1 and wf1 share 127.0.0.1:15021"),
    (lambda d: d["forecasting"].update(quantiles=[0.9, 0.1]), "strictly increasing"),
])
def test_each_bad_value_is_named(mutate: Any, expected: str) -> None:
    data = demo_data()
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "x.toml")
    assert any(expected in p for p in exc.value.problems), exc.value.problems


def test_every_problem_is_reported_at_once() -> None:
    data = demo_data()
    data["pcc"]["export_cap_w"] = 0
    data["assets"][2]["capacity_wh"] = "lots"
    data["api"]["port"] = 70000
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert len(exc.value.problems) == 3


def _vpp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpp.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_check_config_cli(tmp_path: Path) -> None:
    ok = _vpp("check-config", str(DEMO_CONFIG))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok")
    assert "pv1" in ok.stdout and "35.00 MW" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO_CONFIG.read_text().replace("export_cap_w = 35_000_000",
                                                   "export_cap_w = -5"))
    res = _vpp("check-config", str(bad))
    assert res.returncode == 1
    assert "pcc.export_cap_w: -5 is not allowed" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\nid = 1")
    res = _vpp("check-config", str(broken))
    assert res.returncode == 1 and "not valid TOML" in res.stderr
    assert "Traceback" not in res.stderr
    res = _vpp("check-config", str(tmp_path / "missing.toml"))
    assert res.returncode == 1 and "cannot read the file" in res.stderr


def test_every_command_has_help() -> None:
    for cmd in (["--help"], ["demo", "--help"], ["run", "--help"], ["check-config", "--help"],
                ["sim", "serve", "--help"]):
        res = _vpp(*cmd)
        assert res.returncode == 0, (cmd, res.stderr)
        assert "Usage" in res.stdout


def test_every_config_key_is_documented() -> None:
    from pydantic import BaseModel

    from vpp import config as c

    doc = (DEMO_CONFIG.parent.parent.parent / "docs" / "config.md").read_text()
    sections = {"site": c.SiteSection, "pcc": c.PccSection, "forecasting": c.ForecastingSection,
                "dispatch": c.DispatchSection, "control": c.ControlSection,
                "polling": c.PollingSection, "mqtt": c.MqttSection, "storage": c.StorageSection,
                "api": c.ApiSection, "metrics": c.MetricsSection, "sim": c.SimSection}
    models: list[type[BaseModel]] = [*sections.values(), c.PvAsset, c.WindAsset, c.BatteryAsset,
                                     c.LoadAsset, c.MeterAsset]
    missing = [f"{m.__name__}.{f}" for m in models for f in m.model_fields
               if f"`{f}`" not in doc]
    assert not missing, f"keys missing from docs/config.md: {missing}"
    assert all(f"## `[{s}]`" in doc for s in sections)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["dispatch"].update(step_s=300), "dispatch.step_s (300) must equal"),
    (lambda d: (d["forecasting"].update(short_term_horizon_h=36),
                d["dispatch"].update(horizon_h=24)),
     "dispatch.horizon_h (24.0) must not exceed"),
    (lambda d: d["dispatch"].update(load_quantile=0.9), "dispatch.load_quantile (0.9) < 0.5"),
    (lambda d: d["dispatch"].update(generation_quantile=0.95), "must include [0.05, 0.95]"),
    (lambda d: d["sim"].update(start="yesterday"), "sim.start: 'yesterday' is not allowed: not"),
    (lambda d: d["sim"].update(start="2026-04-15T00:00:00"), "give the UTC offset"),
    (lambda d: d["storage"].update(url="mysql://x@h/db"), "backend 'mysql' is not supported"),
    (lambda d: d["storage"].update(url="::nonsense"), "not a database URL"),
    (lambda d: d["dispatch"].update(export_ramp_weight_per_wh=0.5),
     "2 × export_ramp_weight_per_wh + tracking_weight_per_wh = 1.05 must be below"),
    (lambda d: d["dispatch"].update(planner="rule-based"), "planner"),
    (lambda d: d["storage"].update(keep_raw_days=400),
     "storage.keep_1min_days: each coarser resolution must be kept at least as long: "
     "keep_raw_days 400 <= keep_1min_days 180"),
])
def test_cross_checks_name_the_fields(mutate: Any, expected: str) -> None:
    data = demo_data()
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert any(expected in p for p in exc.value.problems), exc.value.problems


def test_a_profile_must_give_what_its_kind_needs(tmp_path: Path) -> None:
    prof = tmp_path / "meterless.yaml"
    prof.write_text("name: meterless\nkind: meter\npoints:\n"
                    "  - {name: frequency_hz, table: input, address: 0, type: u16}\n")
    data = demo_data()
    data["assets"][4]["profile"] = str(prof)
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert any("lacks what a meter needs: ['reads_export']" in p for p in exc.value.problems)
