"""Pollers as shards over the real Mosquitto, all separate processes but the controller:
`vpp sim serve` (the plant on Modbus TCP), `vpp poll --shard 0/2` and `1/2`, and a
`Controller` in this process whose devices are the shards' remote devices. A mosquitto_sub
process watches the topics. Children write to files, read at the end."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from drivers import Device, Health, ModbusConnection, PollClass, Quality, WriteError
from drivers import load_profile as profile_of
from drivers.remote import RemoteDevice
from sim import SimClock
from tests.conftest import DEMO_CONFIG, require_tool
from vpp.broker import free_ports
from vpp.config import SiteConfig, load_config
from vpp.controller import Controller
from vpp.devices import assign_shards
from vpp.shardlink import ShardLink

pytestmark = [pytest.mark.e2e, pytest.mark.services]
CLI = [sys.executable, "-m", "vpp.cli"]
WAIT_S = 30.0  # the most any one condition below may take to come true


def _site(tmp_path: Path, site_id: str, host: str, port: int) -> Path:
    """The demo county on free Modbus ports, polled by 2 shards via Mosquitto."""
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    ports = iter(free_ports(5))
    text = re.sub(r"^port = 150\d\d", lambda m: f"port = {next(ports)}", text, flags=re.M)
    text = text.replace('id = "demo-county"', f'id = "{site_id}"')
    text = text.replace("[mqtt]\nenabled = true\nembedded = true\nhost = \"127.0.0.1\"\n"
                        "port = 1884", f"[mqtt]\nenabled = true\nembedded = false\nhost = "
                        f"\"{host}\"\nport = {port}")
    text = re.sub(r"(\[api\]\nhost = \"127.0.0.1\"\n)port = 8080", r"\1port = 0", text)
    text = text.replace("[storage]\n", f"[storage]\ndata_dir = \"{tmp_path / 'data'}\"\n")
    text += "\n[polling]\nshards = 2\n"
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Children:
    """Child processes, each writing stdout and stderr to its own files."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.out", "wb") as out, \
                open(self.dir / f"{name}.err", "wb") as err:
            p = subprocess.Popen(args, cwd=self.dir, stdout=out, stderr=err)
        self.procs[name] = p
        return p

    def text(self, name: str, stream: str = "out") -> str:
        return (self.dir / f"{name}.{stream}").read_text(encoding="utf-8", errors="replace")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    ch = Children(tmp_path)
    try:
        yield ch
    finally:
        ch.stop_all()


async def until(what: str, cond: Callable[[], bool], *, step: Callable[[], object] | None = None,
                timeout_s: float = WAIT_S) -> None:
    """Wait until ``cond()`` holds, running ``step`` (maybe a coroutine) between looks."""
    for _ in range(int(timeout_s / 0.2)):
        if step is not None:
            r = step()
            if asyncio.iscoroutine(r):
                await r
        if cond():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


async def read_from_simulator(cfg: SiteConfig, asset_id: str, point: str) -> float | None:
    """A point as the simulated device holds it, read over its own Modbus connection."""
    a = cfg.asset(asset_id)
    conn = ModbusConnection(host=a.host, port=a.port, timeout_s=2.0)
    try:
        dev = Device(asset_id=a.id, profile=profile_of(a.profile), connection=conn,
                     unit_id=a.unit_id, now=partial(datetime.now, UTC))
        for pc in (PollClass.ONCE, PollClass.FAST, PollClass.SLOW):
            await dev.poll(pc)
        return dev.value(point)
    finally:
        conn.close()


async def test_shards_poll_publish_and_write_through_mosquitto(
        tmp_path: Path, mosquitto: tuple[str, int], children: Children) -> None:
    host, port = mosquitto
    site_id = f"shard-test-{uuid.uuid4().hex[:8]}"
    site = _site(tmp_path, site_id, host, port)
    cfg = load_config(site)
    shards = assign_shards(cfg.assets, 2)
    assert all(shards), [[a.id for a in s] for s in shards]  # each shard polls something
    clock_file = tmp_path / "clock.json"
    sub = require_tool("mosquitto_sub", "mosquitto-clients")
    children.start("watch", [sub, "-h", host, "-p", str(port), "-v", "-q", "1",
                             "-t", f"vpp/{site_id}/shard/#"])
    sim = children.start("sim", [*CLI, "sim", "serve", str(site), "--speed", "1",
                                 "--start", "2026-04-15T12:00:00+08:00",
                                 "--clock-file", str(clock_file), "--control-port", "0"])
    await until("the simulator serves", lambda: clock_file.exists() or sim.poll() is not None)
    assert sim.poll() is None, children.text("sim", "err")[-3000:]
    for i in range(2):
        children.start(f"shard{i}", [*CLI, "poll", "--shard", f"{i}/2", "--config", str(site),
                                     "--sim-clock", str(clock_file)])
    clock = SimClock.from_json(json.loads(clock_file.read_text(encoding="utf-8")))
    ctrl = Controller(cfg, clock=clock)
    remote = ctrl.devices
    assert all(isinstance(d, RemoteDevice) for d in remote.values())
    assert ctrl.connections == {}  # no Modbus from the controller: the shards poll
    try:
        # 1. telemetry from every asset reaches the controller's state, good and online
        def all_good() -> bool:
            return all(d.health is Health.ONLINE and d.value("active_power_w" if a.kind != "meter"
                                                             else "export_w") is not None
                       for a, d in zip(cfg.assets, remote.values(), strict=True))

        await until("every asset read through its shard", all_good, step=ctrl._poll_fast)
        pv = remote["pv1"]
        # the nameplate (poll class once) came too, and is the simulator's
        await until("pv1's nameplate", lambda: pv.value("rated_power_w") is not None,
                    step=lambda: pv.poll(PollClass.ONCE))
        assert pv.value("rated_power_w") == pytest.approx(60e6)
        meter = remote["pcc"].latest["export_w"]
        assert meter.quality is Quality.GOOD
        assert abs((clock.now() - meter.ts).total_seconds()) < 10  # stamped at the read
        assert len(ctrl.samples) > 0  # and into the sample queue, for storage

        # 2. a control step: limits and setpoints written through the shards, verified
        await ctrl.control_step()
        written = dict(ctrl.state.written_w)
        assert "pv1" in written and "wf1" in written, (written, ctrl.state.command)
        held = await read_from_simulator(cfg, "pv1", "active_power_limit_w")
        assert held == pytest.approx(written["pv1"], rel=1e-3, abs=1.0)

        # 3. a setpoint and its ack, with the write guard on the shard: clamped, refused
        bess = remote["bess1"]
        assert isinstance(bess, RemoteDevice)
        res = await bess.write("power_setpoint_w", -1_234_000.0, deadline_s=2.0)
        assert (res.point, res.clamped) == ("power_setpoint_w", False)
        assert res.written == pytest.approx(-1_234_000.0, abs=1.0)
        assert await read_from_simulator(cfg, "bess1", "power_setpoint_w") == \
            pytest.approx(res.written, abs=1.0)
        big = await bess.write("power_setpoint_w", 1e12, deadline_s=2.0)
        assert big.clamped and big.written < 1e12
        with pytest.raises(PermissionError, match="read-only"):
            await bess.write("soc", 0.5, deadline_s=2.0)

        # 4. a controller that starts later has every class at once: the retained snapshots
        def snapshots() -> bool:
            text = children.text("watch")
            return all(f"shard/{i}/snapshot " in text for i in range(2))

        await until("both shards' snapshots", snapshots)
        late = ShardLink(cfg, clock=clock)
        try:
            late_pv = late.devices(None)["pv1"]
            await until("the nameplate, from the snapshot",
                        lambda: late_pv.value("rated_power_w") is not None,
                        step=lambda: late_pv.poll(PollClass.ONCE))
            assert late_pv.value("rated_power_w") == pytest.approx(60e6)
        finally:
            await late.close()

        # 5. a shard killed: its devices go offline at the controller, not trusted; the
        # other shard's stay online
        dead_shard = bess.shard
        dead = [a.id for a in shards[dead_shard]]
        alive = [a.id for a in shards[1 - dead_shard]]
        children.procs[f"shard{dead_shard}"].send_signal(signal.SIGKILL)
        children.procs[f"shard{dead_shard}"].wait(timeout=10)

        def flagged() -> bool:
            return all(remote[a].health is Health.OFFLINE for a in dead) and all(
                remote[a].health is Health.ONLINE for a in alive)

        await until("the killed shard's devices offline", flagged, step=ctrl._poll_fast)
        for a in dead:
            dev = remote[a]
            fast = [p.name for p in dev.profile.points if p.poll is PollClass.FAST]
            assert all(dev.latest[n].quality is Quality.STALE for n in fast), a
            assert dev.value("active_power_w") is None and dev.value("export_w") is None
        polled = await ctrl._poll_fast()
        assert all(remote[a].value("active_power_w") is not None or a == "pcc" for a in alive)
        assert set(polled) >= set(alive)
        with pytest.raises(WriteError, match=f"no answer from shard {dead_shard}"):
            await bess.write("power_setpoint_w", 0.0, deadline_s=0.5)
        await ctrl.control_step()  # runs on, holding what it cannot see
    finally:
        await ctrl.close()
        children.stop_all()
        pub = require_tool("mosquitto_pub", "mosquitto-clients")
        for i in range(2):  # the retained messages of this run go with it
            for kind in ("status", "snapshot"):
                proc = await asyncio.create_subprocess_exec(
                    pub, "-h", host, "-p", str(port), "-r", "-n", "-t",
                    f"vpp/{site_id}/shard/{i}/{kind}")
                await asyncio.wait_for(proc.wait(), 10)

    # 6. what crossed the broker, as mosquitto_sub saw it
    seen: dict[str, list[str]] = {}
    for line in children.text("watch").splitlines():
        topic, _, payload = line.partition(" ")
        seen.setdefault(topic, []).append(payload)
    base = f"vpp/{site_id}/shard"
    for i in range(2):
        assert f"{base}/{i}/telemetry" in seen, sorted(seen)
        assert f"{base}/{i}/status" in seen
        assert f"{base}/{i}/snapshot" in seen
        tel = json.loads(seen[f"{base}/{i}/telemetry"][-1])
        assert tel["shard"] == i and tel["schema"] == 1
    assert f"{base}/{dead_shard}/setpoint" in seen and f"{base}/{dead_shard}/ack" in seen
    acks = [json.loads(p) for p in seen[f"{base}/{dead_shard}/ack"]]
    assert any(a["ok"] and a["clamped"] for a in acks)
    assert any(not a["ok"] and a["error"] == "read_only" for a in acks)
    statuses = [json.loads(p)["state"] for p in seen[f"{base}/{dead_shard}/status"]]
    assert statuses[-1] == "offline"  # the killed shard's last will
    for name in ("sim", "shard0", "shard1"):
        assert "Traceback" not in children.text(name, "err"), children.text(name, "err")[-3000:]
    for i in range(2):
        assert f"shard {i}/2 of site" in children.text(f"shard{i}")
