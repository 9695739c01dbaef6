"""deploy/prometheus: the scrape configuration and the alert rules, checked by Prometheus'
own promtool, and every metric the rules name is one the controller exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from vpp.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=PROM)


def test_the_scrape_config_and_the_rules_are_valid(promtool: str) -> None:
    res = _promtool(promtool, "check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    res = _promtool(promtool, "check", "rules", "rules/vpp.rules.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 9 rules found" in res.stdout


def test_every_alert_passes_its_unit_tests(promtool: str) -> None:
    res = _promtool(promtool, "test", "rules", "rules/vpp.rules.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "rules" / "vpp.rules.test.yml")
                            .read_text()))
    defined = set(re.findall(r"alert: (\w+)", (PROM / "rules" / "vpp.rules.yml").read_text()))
    assert tested == defined  # each alert has a test


def test_the_rules_name_only_metrics_the_controller_exports() -> None:
    m = Metrics(site="c1", assets=[("pv1", "pv"), ("bess1", "battery"), ("pcc", "meter")],
                version="test")
    exported = {f.name for f in m.registry.collect()}
    exported |= {f"{n}_total" for n in exported}  # counters are named without the suffix
    named = set(re.findall(r"\b(vpp_[a-z_]+)", (PROM / "rules" / "vpp.rules.yml").read_text()))
    assert named, "no metric in the rules"
    assert named <= exported, named - exported
