"""deploy/examples: every site file loads and `vpp check-config` accepts it; the realistic
county's fleet adds up (ratings against the cap and the import limit, PV DC/AC ratios,
battery durations, the feeder group) and it is set up for production (PostgreSQL without
a password in the URL, an external broker with credentials, the systemd state
directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from vpp.cli import app
from vpp.config import (
    BatteryAsset,
    LoadAsset,
    PvAsset,
    SiteConfig,
    WindAsset,
    load_config,
)
from vpp.simbridge import plant_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.toml"))
REALISTIC = ROOT / "deploy" / "examples" / "bashang-county.toml"
MW = 1e6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_check_config_accepts_it(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.site.timezone == "Asia/Shanghai"
    plant_spec(cfg)  # the simulator can model it too (HIL bench)
    res = CliRunner().invoke(app, ["check-config", str(path)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"ok {path}")


@pytest.fixture(scope="module")
def county() -> SiteConfig:
    return load_config(REALISTIC)


def _rated(cfg: SiteConfig, kind: type[PvAsset] | type[WindAsset]) -> float:
    return sum(a.rated_power_w for a in cfg.assets if isinstance(a, kind))


def test_the_realistic_fleet(county: SiteConfig) -> None:
    kinds = [a.kind for a in county.assets]
    assert (kinds.count("pv"), kinds.count("wind"), kinds.count("battery"),
            kinds.count("meter")) == (3, 2, 2, 1)
    assert len(county.base_loads()) >= 1 and len(county.flexible_loads()) == 1
    assert 100 * MW <= county.pcc.export_cap_w <= 200 * MW
    assert county.asset(county.pcc.meter).kind == "meter"


def test_the_cap_binds_and_the_county_can_be_supplied(county: SiteConfig) -> None:
    cap = county.pcc.export_cap_w
    generation = _rated(county, PvAsset) + _rated(county, WindAsset)
    base_peak = sum(a.peak_w or 0.0 for a in county.base_loads())
    flex_max = sum(a.flexible.max_w for a in county.flexible_loads() if a.flexible)
    batteries = [a for a in county.assets if isinstance(a, BatteryAsset)]
    charge = sum(b.max_charge_w for b in batteries)
    # a sunny, windy noon exports more than the cap even with every battery charging
    # and the loads at peak: the controller has to curtail, not only store
    assert generation - charge - base_peak - flex_max > cap
    # but storage and the flexible load cover a good share of the excess over the cap
    assert charge + flex_max >= 0.25 * (generation - cap)
    # a windless night with empty batteries: the grid supplies the loads at peak
    assert base_peak + flex_max <= county.pcc.import_limit_w
    # the batteries can meet the cap's order of magnitude for a few hours
    assert 0.25 * cap <= sum(b.max_discharge_w for b in batteries) <= cap


def test_the_realistic_ratings_are_plausible(county: SiteConfig) -> None:
    for a in county.assets:
        if isinstance(a, PvAsset):
            assert 1.0 <= a.dc_power_w / a.rated_power_w <= 1.5, a.id  # DC/AC ratio
        elif isinstance(a, BatteryAsset):
            assert 1.0 <= a.capacity_wh / a.max_discharge_w <= 4.0, a.id  # hours
            assert a.soc_max - a.soc_min >= 0.7, a.id
        elif isinstance(a, LoadAsset) and a.flexible is not None:
            f = a.flexible
            window_h = f.deadline_h - f.default_start_h
            # the VPP has room to shift it: it needs less than 60 % of its window
            assert f.daily_energy_wh <= 0.6 * f.max_w * window_h, a.id


def test_the_feeder_group_binds(county: SiteConfig) -> None:
    for g in county.dispatch.groups:
        members = [county.asset(i) for i in g.assets]
        gen = sum(a.rated_power_w for a in members if isinstance(a, PvAsset | WindAsset))
        assert g.max_export_w < gen, g.id  # a limit that never binds is noise
        assert g.max_export_w <= county.pcc.export_cap_w + sum(
            b.max_charge_w for b in county.assets if isinstance(b, BatteryAsset)), g.id


def test_the_realistic_site_is_set_up_for_production(county: SiteConfig) -> None:
    assert county.storage.url is not None
    url = make_url(county.storage.url)
    assert url.get_backend_name() == "postgresql"
    assert url.password is None  # libpq reads PGPASSWORD from secrets.env
    assert county.storage.data_dir == "/var/lib/county-vpp"  # StateDirectory=county-vpp
    mq = county.mqtt
    assert mq.enabled and not mq.embedded
    assert mq.username and mq.password is not None and mq.client_id
    assert county.api.host == "127.0.0.1"
    endpoints = [(a.host, a.port, a.unit_id) for a in county.assets]
    assert len(set(endpoints)) == len(endpoints)
    assert all(a.host.startswith("10.20.") for a in county.assets)  # the OT network
