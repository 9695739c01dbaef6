"""The whole chain for real: simulated plant on Modbus TCP → drivers → forecasts → cvxpy plan
→ enforcement → setpoints, with MQTT, HTTP and metrics; the cap judged by the simulator's meter.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.vpp.test_efile import read_efile
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions

pytestmark = pytest.mark.e2e


def midday(cfg: SiteConfig, **mqtt: Any) -> SiteConfig:
    start = "2026-04-15T11:00:00+08:00"
    update: dict[str, Any] = {"sim": cfg.sim.model_copy(update={"start": start})}
    if mqtt:
        update["mqtt"] = cfg.mqtt.model_copy(update=mqtt)
        update["site"] = cfg.site.model_copy(update={"id": f"e2e-{uuid.uuid4().hex[:6]}"})
    return cfg.model_copy(update=update)


async def collect(host: str, port: int, topic: str, out: dict[str, dict[str, Any]],
                  ready: asyncio.Event) -> None:
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic)
        ready.set()
        async for msg in client.messages:
            out[str(msg.topic)] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]


async def test_midday_cap_holds_on_the_meter_with_every_interface(demo_config: SiteConfig,
                                                                  promtool: str) -> None:
    cfg = midday(demo_config)
    demo = Demo(cfg, DemoOptions(hours=2.0, speed=600.0, ephemeral_ports=True))
    seen: dict[str, dict[str, Any]] = {}
    async with demo:
        svc = demo.services
        assert svc is not None and svc.broker is not None and svc.api is not None
        ready = asyncio.Event()
        sub = asyncio.create_task(collect("127.0.0.1", svc.broker.port,
                                          f"vpp/{cfg.site.id}/#", seen, ready))
        await asyncio.wait_for(ready.wait(), 10)
        token = await svc.issue_token("viewer", "chain-test")
        async with httpx.AsyncClient(base_url=svc.api.url, timeout=10, headers={
                "Authorization": f"Bearer {token}"}) as http:
            # the first forecasts (the forecast process starts, fits, issues) and plan
            for _ in range(120):
                health = (await http.get("/api/v1/health")).json()
                if health.get("dispatch") is not None:
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.0)  # 10 simulated minutes more: MQTT has it all
            assets = (await http.get("/api/v1/assets")).json()
            forecasts = (await http.get("/api/v1/forecasts")).json()
            one = await http.get("/api/v1/forecasts", params={"series": "pv1"})
            unknown = await http.get("/api/v1/forecasts", params={"series": "nope"})
            # "as issued at T": the stored vintage in force then, in JSON and CSV
            latest = one.json()["pv1"]
            vintages = {}
            for horizon in ("ultra-short", "short"):
                vintages[horizon] = await http.get("/api/v1/forecasts", params={
                    "series": "pv1", "horizon": horizon, "issued_at": latest["issued_at"]})
            as_csv = await http.get("/api/v1/forecasts", params={
                "series": "pv1", "issued_at": latest["issued_at"], "format": "csv"})
            as_efile = await http.get("/api/v1/forecasts", params={
                "series": "pv1", "issued_at": latest["issued_at"], "format": "efile",
                "horizon": "short"})
            before = await http.get("/api/v1/forecasts", params={
                "series": "pv1", "issued_at": "2000-01-01T00:00:00+00:00"})
            naive = await http.get("/api/v1/forecasts", params={
                "series": "pv1", "issued_at": "2026-04-15T12:00:00"})
            schedule = await http.get("/api/v1/schedule")
            metrics = (await http.get("/metrics")).text
            sim_curtailed_j = demo.sim.plant.stats.curtailed_wh * 3600.0
            openapi = (await http.get("/api/v1/openapi.json")).json()
        assert svc.storage is not None
        stored = await asyncio.to_thread(svc.storage.count, "telemetry")
        # sampled through the bounded queue, one row per point per simulated minute
        assert stored >= 5 * 30
        assert demo.controller.samples.dropped == 0
        await demo.wait()
        sub.cancel()
        await asyncio.gather(sub, return_exceptions=True)
    rep = demo.report()

    # the cap, as the simulated meter saw it
    cap = rep["export_cap_w"]
    assert rep["uncontrolled_max_export_w"] > 1.2 * cap  # control had work to do
    assert rep["cap_violation_s"] == 0
    assert rep["max_export_w"] <= 1.01 * cap
    assert rep["energy_balance_error_ratio"] < 0.005
    assert rep["curtailed_energy_wh"] < rep["renewable_available_wh"]
    assert rep["battery_throughput_wh"] > 0
    assert rep["sim_hours"] >= 2.0

    # HTTP
    assert health["status"] in ("ok", "degraded") and health["site"] == cfg.site.id
    assert health["dispatch"]["status"] == "optimal"
    assert {a["id"] for a in assets} == {"pv1", "wf1", "bess1", "load", "pcc"}
    pcc = next(a for a in assets if a["id"] == "pcc")
    assert pcc["points"]["export_w"]["quality"] == "good"
    assert pcc["points"]["export_w"]["unit"] == "W"
    assert set(forecasts) == {"pv1", "wf1", "load"}
    for f in forecasts.values():
        q = f["quantiles_w"]
        assert len(q["p10"]) == len(f["index"]) >= round(cfg.dispatch.horizon_h * 4)
        assert all(a <= b <= c for a, b, c in zip(q["p10"], q["p50"], q["p90"], strict=True))
    assert one.status_code == 200 and set(one.json()) == {"pv1"}
    assert unknown.status_code == 404 and "unknown series" in unknown.json()["detail"]
    for horizon, got in vintages.items():
        assert got.status_code == 200, (horizon, got.text)
        v = got.json()
        assert v["horizon"] == horizon and v["issued_at"] <= latest["issued_at"]
        assert set(v["quantiles_w"]) >= {"p10", "p50", "p90"} and len(v["index"]) >= 16
    # the latest forecast takes its first 4 h from the ultra-short vintage issued with it
    v = vintages["ultra-short"].json()
    assert latest["horizon"] == "combined" and v["issued_at"] == latest["issued_at"]
    assert v["quantiles_w"]["p50"][:16] == pytest.approx(latest["quantiles_w"]["p50"][:16])
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    lines = as_csv.text.splitlines()
    assert lines[0].startswith("# series=pv1 horizon=ultra-short issued_at=")
    assert "unit=W" in lines[0]
    assert lines[1].split(",")[0] == "valid_time" and "p50_w" in lines[1]
    assert len(lines) == 2 + len(v["index"])
    assert as_efile.status_code == 200, as_efile.text
    e = read_efile(as_efile.text)
    assert e["class"] == "DQYC" and e["entity"] == f"{cfg.site.id}.pv1"
    assert len(e["rows"]) == len(vintages["short"].json()["index"])
    assert float(e["rows"][0]["P50"]) == pytest.approx(
        vintages["short"].json()["quantiles_w"]["p50"][0] / 1e6, abs=1e-3)
    assert before.status_code == 404 and "issued at or before" in before.json()["detail"]
    assert naive.status_code == 422 and "UTC offset" in naive.json()["detail"]
    assert schedule.status_code == 200
    plan = schedule.json()
    assert plan["status"] == "optimal"
    worst, caps = plan["export_worst_w"], plan["export_cap_w"]
    # the plan keeps the cap in the dangerous case, unless a generator was out of control
    # when it was made (a device that missed its polls at ×600): then it says so, priced
    excess = max(w - c for w, c in zip(worst, caps, strict=True))
    if excess > 1.0:
        assert plan["inputs"]["generators_uncontrolled"], (excess, plan["message"])
        assert "the cap cannot be kept" in plan["message"] and plan["terms"]["cap_slack"] > 0
    assert "/api/v1/schedule" in openapi["paths"]
    # metrics
    assert f'vpp_pcc_export_watts{{site="{cfg.site.id}"}}' in metrics
    assert "vpp_battery_state_of_charge_ratio" in metrics
    assert 'vpp_dispatch_solves_total{site="demo-county",status="optimal"}' in metrics
    samples = {(s.name, s.labels.get("asset")): s.value
               for fam in text_string_to_metric_families(metrics) for s in fam.samples}
    # energy the simulator's books show curtailed is counted (from the devices' readings)
    counted_j = sum(samples[("vpp_curtailed_energy_joules_total", g)] for g in ("pv1", "wf1"))
    # (here about 1 MWh; counted from 1 s readings over control steps that stretch when the
    # loop lags at ×600, so within a factor, not a percent)
    if sim_curtailed_j > 1e9:
        assert counted_j > 0.5 * sim_curtailed_j, (counted_j, sim_curtailed_j)
    assert counted_j <= 2.0 * sim_curtailed_j + 1e9, (counted_j, sim_curtailed_j)
    for a in ("pv1", "wf1", "bess1", "pcc"):
        assert samples[("vpp_asset_available", a)] in (0.0, 1.0)
        assert 0 < samples[("vpp_device_poll_latency_seconds", a)] < 10.0
    assert samples[("vpp_generator_available_power_watts", "pv1")] > 0
    lint = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"],
                                   input=metrics, capture_output=True, text=True, timeout=60,
                                   check=False)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout + lint.stderr)  # Prometheus' own linter: names, units, help
    # MQTT
    base = f"vpp/{cfg.site.id}"
    for topic in ("status", "telemetry/pv1", "telemetry/pcc", "pcc", "schedule",
                  "forecast/pv1/ultra-short"):
        assert f"{base}/{topic}" in seen, sorted(seen)
        assert seen[f"{base}/{topic}"]["schema"] == 1
    assert seen[f"{base}/status"]["state"] == "online"
    assert seen[f"{base}/telemetry/pv1"]["points"]["active_power_w"]["unit"] == "W"


async def test_the_chain_publishes_through_mosquitto(demo_config: SiteConfig,
                                                     mosquitto: tuple[str, int]) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.fail("mosquitto_sub (package mosquitto-clients) is needed; .ci/run installs it")
    host, port = mosquitto
    cfg = midday(demo_config, embedded=False, host=host, port=port)
    topics = [f"vpp/{cfg.site.id}/{t}" for t in ("schedule", "pcc", "telemetry/bess1")]
    subs = [await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", host, "-p", str(port), "-t", t, "-v", "-C", "1", "-W", "30",
        stdout=asyncio.subprocess.PIPE) for t in topics]
    await asyncio.sleep(0.3)
    demo = Demo(cfg, DemoOptions(hours=0.5, speed=600.0, ephemeral_ports=True))
    async with demo:
        await demo.wait()
        outs = [await asyncio.wait_for(s.communicate(), 30) for s in subs]
    for topic, (out, _) in zip(topics, outs, strict=True):
        line = out.decode().strip()
        assert line.startswith(topic + " "), (topic, line[:200])
        assert json.loads(line.split(" ", 1)[1])["schema"] == 1
    assert demo.report()["cap_violation_s"] == 0


def test_vpp_demo_command_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "vpp.cli", "demo", "--hours", "0.5", "--speed",
                          "600", "--report", str(report)], capture_output=True, text=True,
                         timeout=180, check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    rep = json.loads(report.read_text())
    for key in ("export_cap_w", "max_export_w", "cap_violation_s", "uncontrolled_max_export_w",
                "curtailed_energy_wh", "renewable_energy_wh", "battery_throughput_wh",
                "energy_balance_error_ratio", "sim_hours", "wall_seconds", "control_interval_s"):
        assert key in rep
    assert rep["sim_hours"] >= 0.5
    assert "API" in res.stdout and "/metrics" in res.stdout and "mqtt://" in res.stdout


async def test_devices_lost_mid_run_the_cap_still_holds(demo_config: SiteConfig) -> None:
    """The battery drops off the network for good, then the PCC meter for a while."""
    demo = Demo(midday(demo_config), DemoOptions(hours=1.5, speed=600.0, ephemeral_ports=True))
    async with demo:
        ctrl = demo.controller
        await asyncio.sleep(2.0)
        await demo.sim.server_of("bess1").stop()
        await asyncio.sleep(1.5)
        steps_before = ctrl.state.control_steps
        assert ctrl.devices["bess1"].health.value == "offline"
        cmd = ctrl.state.command
        assert any("bess1 held" in n for n in cmd.notes), cmd.notes
        meter = demo.sim.server_of("pcc")
        await meter.stop()
        async with asyncio.timeout(5):  # a read in flight may wait out its 1 s timeout first
            while ctrl.state.command.mode.value != "pcc_lost":  # noqa: ASYNC110 (from outside)
                await asyncio.sleep(0.05)
        await meter.start()  # back on the same port
        async with asyncio.timeout(10):  # reconnect backoff is at most 5 s (wall)
            while ctrl.state.command.mode.value == "pcc_lost":  # noqa: ASYNC110 (watching from outside)
                await asyncio.sleep(0.1)
        await demo.wait()
    rep = demo.report()
    assert ctrl.state.control_steps > steps_before + 10  # control went on throughout
    assert rep["cap_violation_s"] == 0
    assert rep["max_export_w"] <= 1.01 * rep["export_cap_w"]


async def test_the_controller_dies_and_the_devices_watchdogs_keep_the_cap(
        demo_config: SiteConfig) -> None:
    """Midday, the controller stops for good; the plant runs on. Each device falls back to
    what the controller set for this case (its share of the cap; the battery to 0)."""
    demo = Demo(midday(demo_config), DemoOptions(hours=None, speed=600.0, ephemeral_ports=True))
    async with demo:
        await asyncio.sleep(2.0)  # 20 simulated minutes under control
        svc = demo.services
        assert svc is not None
        dying = demo.clock.time()
        await svc.__aexit__(None, None, None)  # the controller is gone
        demo.services = None
        dead = demo.clock.time()  # shutting down took this long (simulated)
        await asyncio.sleep(3.0)  # 30 simulated minutes alone
        plant = demo.sim.plant
        assert set(plant.fallbacks) == {"pv1", "wf1", "bess1"}
        # each fell back one watchdog timeout after the last heartbeat it heard
        assert all(dying < t <= dead + plant.watchdog_timeout_s(a) + 1
                   for a, t in plant.fallbacks.items())
        assert plant.battery_setpoint_w["bess1"] == 0.0
        cap = demo.config.pcc.export_cap_w
        assert sum(plant.limit_w.values()) <= cap  # the shares of the cap, in force
    rep = demo.report()
    assert rep["uncontrolled_max_export_w"] > 1.2 * rep["export_cap_w"]
    assert rep["cap_violation_s"] == 0


def sunspec_pv1(cfg: SiteConfig) -> SiteConfig:
    return cfg.model_copy(update={"assets": tuple(
        a.model_copy(update={"profile": "sunspec"}) if a.id == "pv1" else a
        for a in cfg.assets)})


async def test_a_sunspec_pv_inverter_is_discovered_and_limited(demo_config: SiteConfig) -> None:
    """pv1 speaks SunSpec: the controller discovers its models, reads it through the house
    names, and limits it with model 704's WMaxLimPct, enable flag and reversion timer (704
    wins over the legacy 123 beside it), with its reversion values set to its share of the
    cap."""
    from drivers import capabilities

    demo = Demo(sunspec_pv1(midday(demo_config)),
                DemoOptions(hours=1.5, speed=600.0, ephemeral_ports=True))
    async with demo:
        await asyncio.sleep(3.0)
        dev = demo.controller.devices["pv1"]
        assert dev.profile.name == "sunspec"
        assert {"active_power_limit_pct", "active_power_w", "wmax_w"} <= set(dev.profile.aliases)
        assert dev.profile.aliases["active_power_limit_pct"].point == "m704_wmaxlimpct"
        assert dev.value("active_power_w") is not None
        plant = demo.sim.plant
        assert plant.limit_enabled["pv1"]  # midday: pv1 is being limited through model 704
        assert plant.limit_w["pv1"] < plant.rated_w["pv1"]
        assert capabilities.has_fallback_limit(dev)
        fallback = plant.revert_to_w["pv1"]
        assert fallback is not None and 0 < fallback < plant.rated_w["pv1"]
        assert capabilities.fallback_limit_w(dev) == pytest.approx(fallback, rel=1e-3)
        await demo.wait()
    rep = demo.report()
    assert rep["uncontrolled_max_export_w"] > 1.2 * rep["export_cap_w"]
    assert rep["cap_violation_s"] == 0
    assert rep["max_export_w"] <= 1.01 * rep["export_cap_w"]
    assert not demo.sim.plant.reverts  # refreshed before its reversion timer lapsed


async def test_the_controller_dies_and_a_sunspec_704_inverter_reverts_to_its_share(
        demo_config: SiteConfig) -> None:
    """Midday, the controller stops; pv1 (SunSpec) is no longer refreshed, its 704 reversion
    timer lapses and it goes to its reversion limit (its share of the cap), not to full
    power: the cap holds with the controller gone."""
    demo = Demo(sunspec_pv1(midday(demo_config)),
                DemoOptions(hours=None, speed=600.0, ephemeral_ports=True))
    async with demo:
        await asyncio.sleep(2.0)
        svc = demo.services
        assert svc is not None
        fallback = demo.sim.plant.revert_to_w["pv1"]
        assert fallback is not None
        await svc.__aexit__(None, None, None)  # the controller is gone
        demo.services = None
        # the 300 s reversion timer (demo-county default), then 30 simulated minutes alone
        await asyncio.sleep((demo.config.control.limit_revert_s + 1800) / 600.0)
        plant = demo.sim.plant
        assert "pv1" in plant.reverts
        assert plant.limit_enabled["pv1"]
        assert plant.limit_w["pv1"] == pytest.approx(fallback)
        assert set(plant.fallbacks) == {"wf1", "bess1"}  # the generic devices' watchdogs
        assert sum(plant.limit_w.values()) <= demo.config.pcc.export_cap_w
    rep = demo.report()
    assert rep["uncontrolled_max_export_w"] > 1.2 * rep["export_cap_w"]
    assert rep["cap_violation_s"] == 0


async def test_a_sunspec_battery_is_discovered_and_dispatched(demo_config: SiteConfig) -> None:
    """bess1 speaks SunSpec (701/702/713/704): the controller discovers it, reads its SoC
    from 713, commands it through 704's WSet with its enable and reversion timer, refreshed
    before the timer lapses, and makes a lapsed setpoint idle (WSetRvrt 0 W)."""
    cfg = midday(demo_config)
    cfg = cfg.model_copy(update={"assets": tuple(
        a.model_copy(update={"profile": "sunspec"}) if a.id == "bess1" else a
        for a in cfg.assets)})
    demo = Demo(cfg, DemoOptions(hours=1.5, speed=600.0, ephemeral_ports=True))
    async with demo:
        await asyncio.sleep(3.0)
        dev = demo.controller.devices["bess1"]
        assert dev.profile.name == "sunspec"
        assert dev.profile.aliases["power_setpoint_w"].point == "m704_wset"
        assert dev.value("soc") == pytest.approx(demo.sim.plant.battery["bess1"].soc, abs=0.01)
        plant = demo.sim.plant
        assert plant.setpoint_enabled["bess1"]  # commanded through 704
        assert plant.revert_to_w["bess1"] == 0.0
        await demo.wait()
    rep = demo.report()
    assert rep["uncontrolled_max_export_w"] > 1.2 * rep["export_cap_w"]
    assert rep["cap_violation_s"] == 0
    assert rep["battery_throughput_wh"] > 0
    assert "bess1" not in demo.sim.plant.reverts  # refreshed before its timer lapsed


async def test_a_flexible_load_is_dispatched_into_the_midday_surplus(
        demo_config: SiteConfig) -> None:
    """A shiftable load (generic-flex-load) whose own timer would start it at 16:00: the
    plan moves its day's energy into the midday surplus, where the cap would otherwise
    curtail PV; the controller writes its setpoints and heartbeats it; the cap holds. Its
    past is not in the county load series (it is planned, not forecast)."""
    from tests.sim.test_flex_load import _with_boilers

    cfg = midday(_with_boilers(demo_config))
    cfg = cfg.model_copy(update={"assets": tuple(
        a.model_copy(update={"flexible": a.flexible.model_copy(update={
            "default_start_h": 16.0})}) if a.id == "boilers" and a.flexible else a
        for a in cfg.assets)})
    # the run starts with the first plan made (its forecasts' seconds of wall time would be
    # most of the 1.5 simulated hours at ×600)
    demo = Demo(cfg, DemoOptions(hours=1.5, speed=600.0, ephemeral_ports=True,
                                 start_planned=True))
    without = Demo(midday(demo_config), DemoOptions(hours=1.0, ephemeral_ports=True))
    assert demo.history_frame()["load"].equals(without.history_frame()["load"])
    async with demo:
        await demo.wait()
        sch = demo.controller.state.schedule
        assert sch.source == "optimal" and "boilers" in sch.flex_w
        assert demo.sim.plant.watchdog["boilers"] > 0
    rep = demo.report()
    # before 16:00 its own timer draws nothing: all of this is the plan's doing
    assert rep["flexible_load_energy_wh"] > 3e6
    assert rep["cap_violation_s"] == 0
    assert rep["energy_balance_error_ratio"] < 1e-9
