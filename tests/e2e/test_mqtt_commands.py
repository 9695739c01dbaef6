"""Commands over the real Mosquitto, sent and watched with its own clients: mosquitto_pub
sends, mosquitto_sub sees the documented topics and the answers on ``…/ack``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.e2e.test_chain import midday
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions

pytestmark = pytest.mark.e2e


class Watch:
    """mosquitto_sub -v on a topic filter: every (topic, payload) seen, in order."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.args = [require_tool("mosquitto_sub", "mosquitto-clients"), "-h", host,
                     "-p", str(port), "-t", topic, "-v", "-q", "1"]
        self.seen: list[tuple[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Watch:
        self._proc = await asyncio.create_subprocess_exec(*self.args,
                                                          stdout=asyncio.subprocess.PIPE)
        self._task = asyncio.create_task(self._read())
        await asyncio.sleep(0.3)
        return self

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            topic, _, payload = raw.decode().rstrip("\n").partition(" ")
            try:
                self.seen.append((topic, json.loads(payload)))
            except ValueError:
                self.seen.append((topic, payload))

    def last(self, topic: str) -> Any:
        return next((p for t, p in reversed(self.seen) if t == topic), None)

    async def wait_for(self, topic: str, pred: Any = lambda p: True,
                       timeout_s: float = 30.0) -> Any:
        for _ in range(int(timeout_s / 0.1)):
            for t, p in self.seen:
                if t == topic and pred(p):
                    return p
            await asyncio.sleep(0.1)
        raise AssertionError(f"{topic} not seen; seen: {sorted({t for t, _ in self.seen})}")

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            await self._proc.wait()
        if self._task is not None:
            await self._task


async def pub(host: str, port: int, topic: str, payload: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        require_tool("mosquitto_pub", "mosquitto-clients"), "-h", host, "-p", str(port),
        "-q", "1", "-t", topic, "-m", payload)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_commands_over_mosquitto_are_applied_refused_and_answered(
        demo_config: SiteConfig, mosquitto: tuple[str, int]) -> None:
    host, port = mosquitto
    cfg = midday(demo_config, embedded=False, host=host, port=port)
    base = f"vpp/{cfg.site.id}"
    demo = Demo(cfg, DemoOptions(speed=60.0, ephemeral_ports=True))
    async with Watch(host, port, f"{base}/#") as watch, demo:
        svc, ctrl = demo.services, demo.controller
        assert svc is not None
        grid = await svc.issue_token("grid", "dispatch-centre")
        viewer = await svc.issue_token("viewer", "screen")
        # what is published, as docs/mqtt.md says
        status = await watch.wait_for(f"{base}/status", lambda p: p.get("state") == "online")
        assert status["schema"] == 1
        # (the first may come before pv1's first fast poll: only its slow points, or none)
        tel = await watch.wait_for(f"{base}/telemetry/pv1",
                                   lambda p: "active_power_w" in p.get("points", {}))
        assert {"ts", "asset", "health", "points"} <= tel.keys()
        assert tel["points"]["active_power_w"]["unit"] == "W"
        pcc = await watch.wait_for(f"{base}/pcc")
        assert {"export_w", "export_cap_w", "mode", "worst_export_w"} <= pcc.keys()
        sch = await watch.wait_for(f"{base}/schedule", timeout_s=60)
        assert {"status", "solver", "battery_w", "export_worst_w", "export_cap_w",
                "inputs"} <= sch.keys()

        cap_w = 20e6
        effective = ctrl.clock.now() + timedelta(minutes=30)
        await pub(host, port, f"{base}/cmd/cap", json.dumps({
            "schema": 1, "id": "c-1", "token": grid, "export_cap_w": cap_w,
            "effective": effective.isoformat()}))
        ack = await watch.wait_for(f"{base}/cmd/cap/ack", lambda p: p["id"] == "c-1")
        assert ack["ok"] is True, ack
        assert ack["result"]["export_cap_w"] == cap_w
        assert ctrl.export_cap_at(effective + timedelta(seconds=1)) == cap_w
        caps_before = list(ctrl.instructions.caps)
        mode_before = ctrl.state.operating_mode

        refusals = [
            ("c-2", "cap", {"token": grid, "export_cap_w": "a lot"}, "export_cap_w"),
            ("c-3", "cap", {"token": viewer, "export_cap_w": 1e6}, "may not send:cap"),
            ("c-4", "cap", {"export_cap_w": 1e6}, "a valid bearer token is needed"),
            ("c-5", "cap", {"token": grid + "x", "export_cap_w": 1e6},
             "a valid bearer token is needed"),
            ("c-6", "mode", {"token": grid, "mode": "reactive"}, "may not set:mode"),
            ("c-7", "cap", {"token": grid, "schema": 9, "export_cap_w": 1e6}, "schema: 9"),
            ("c-8", "launch", {"token": grid}, "unknown command 'launch'"),
        ]
        for ident, action, body, reason in refusals:
            await pub(host, port, f"{base}/cmd/{action}", json.dumps({"id": ident, **body}))
            ack = await watch.wait_for(f"{base}/cmd/{action}/ack",
                                       lambda p, i=ident: p["id"] == i)
            assert ack["ok"] is False, ack
            assert reason in ack["detail"], (reason, ack)
        await pub(host, port, f"{base}/cmd/cap", "{this is not json")
        garbled = await watch.wait_for(f"{base}/cmd/cap/ack", lambda p: p["id"] is None)
        assert "not JSON" in garbled["detail"]
        assert ctrl.instructions.caps == caps_before  # nothing refused changed anything
        assert ctrl.state.operating_mode == mode_before

        audit = await asyncio.to_thread(svc.storage.read_audit, limit=50)
        mqtt_rows = [r for r in audit if r["channel"] == "mqtt"]
        assert len(mqtt_rows) == 1 + len(refusals) + 1
        applied = [r for r in mqtt_rows if r["ok"]]
        assert [(r["actor"], r["role"], r["action"]) for r in applied] == [
            ("dispatch-centre", "grid", "cap")]
        assert all("token" not in r["params"] for r in mqtt_rows)  # secrets are not kept
    assert demo.report()["cap_violation_s"] == 0
