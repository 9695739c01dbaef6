"""deploy/grafana: the operator dashboard asks only for metrics the controller exports, in
queries Prometheus parses (each checked by promtool as a recording rule)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from vpp.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "vpp-operator.json"


def _exprs(*, variables: bool = True) -> list[str]:
    """The panels' PromQL, and the variables' queries (Grafana's label_values(...))."""
    dash = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    if variables:
        out += [v["query"]["query"] for v in dash["templating"]["list"]
                if isinstance(v.get("query"), dict)]
    return out


def _exported() -> set[str]:
    m = Metrics(site="c1", assets=[("pv1", "pv"), ("bess1", "battery"), ("pcc", "meter")],
                version="test")
    names = set()
    for fam in m.registry.collect():
        names.add(fam.name)
        names.update(s.name for s in fam.samples)  # _total, _info as scraped
        names.add({"counter": f"{fam.name}_total", "info": f"{fam.name}_info"}.get(
            fam.type, fam.name))
    return names


def test_the_dashboard_names_only_metrics_the_controller_exports() -> None:
    exprs = _exprs()
    assert len(exprs) >= 15
    named = {n for e in exprs for n in re.findall(r"\b(vpp_[a-z_]+)", e)}
    assert named <= _exported(), named - _exported()
    # what an operator needs to see is there
    for must in ("vpp_pcc_export_watts", "vpp_export_cap_watts",
                 "vpp_battery_state_of_charge_ratio", "vpp_curtailed_energy_joules_total",
                 "vpp_forecast_accuracy_ratio", "vpp_device_up", "vpp_dispatch_plan_source"):
        assert must in named, must


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$site", "c1")}
        for i, e in enumerate(_exprs(variables=False))]}]}
    path = tmp_path / "dashboard.rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
