"""The MQTT bridge with real brokers: Mosquitto (seen by mosquitto_sub) and the embedded one."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid

import aiomqtt
import pytest

from vpp.broker import EmbeddedBroker, free_port
from vpp.mqtt import SCHEMA_VERSION, MqttBridge


async def _run_bridge(bridge: MqttBridge) -> asyncio.Task[None]:
    return asyncio.create_task(bridge.run(), name="test.mqtt")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_mosquitto_sub_sees_the_documented_topics(mosquitto: tuple[str, int]) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.fail("mosquitto_sub (package mosquitto-clients) is needed; .ci/run installs it")
    host, port = mosquitto
    site = f"t{uuid.uuid4().hex[:8]}"
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", host, "-p", str(port), "-t", f"vpp/{site}/#", "-v", "-C", "4",
        "-W", "20", stdout=asyncio.subprocess.PIPE)
    await asyncio.sleep(0.5)  # let the subscription land
    bridge = MqttBridge(host=host, port=port, site=site)
    task = await _run_bridge(bridge)
    try:
        bridge.publish("telemetry/pv1", {"asset": "pv1", "points": {
            "active_power_w": {"value": 1.0e6, "unit": "W", "quality": "good"}}})
        bridge.publish("pcc", {"export_w": 3.2e7, "export_cap_w": 3.5e7})
        bridge.publish("schedule", {"status": "optimal", "battery_w": {"b": [1.0, 2.0]}},
                       qos=1, retain=True)
        out, _ = await asyncio.wait_for(sub.communicate(), 25)
    finally:
        await _stop(task)
    lines = out.decode().strip().splitlines()
    topics = {ln.split(" ", 1)[0]: json.loads(ln.split(" ", 1)[1]) for ln in lines}
    assert set(topics) == {f"vpp/{site}/{t}" for t in ("status", "telemetry/pv1", "pcc",
                                                       "schedule")}
    for payload in topics.values():
        assert payload["schema"] == SCHEMA_VERSION
    assert topics[f"vpp/{site}/status"]["state"] == "online"
    assert topics[f"vpp/{site}/telemetry/pv1"]["points"]["active_power_w"]["unit"] == "W"
    assert topics[f"vpp/{site}/pcc"]["export_w"] == 3.2e7


async def test_nothing_queued_is_lost_while_the_broker_is_away() -> None:
    port = free_port()
    site = f"t{uuid.uuid4().hex[:8]}"
    bridge = MqttBridge(host="127.0.0.1", port=port, site=site)
    task = await _run_bridge(bridge)
    broker = EmbeddedBroker(host="127.0.0.1", port=port)
    try:
        for i in range(20):  # published while no broker listens
            bridge.publish(f"test/{i}", {"seq": i}, qos=1, retain=True)
        await asyncio.sleep(0.3)
        assert bridge.buffered == 20 and not bridge.connected
        await broker.start()
        got: dict[str, int] = {}
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(f"vpp/{site}/test/#", qos=1)
            async with asyncio.timeout(20):
                async for msg in client.messages:
                    got[str(msg.topic)] = json.loads(bytes(msg.payload))["seq"]  # type: ignore[arg-type]
                    if len(got) == 20:
                        break
        assert sorted(got.values()) == list(range(20))
        assert bridge.buffered == 0 and bridge.dropped == 0
    finally:
        await _stop(task)
        await broker.stop()


async def test_a_full_buffer_drops_oldest_qos0_first() -> None:
    bridge = MqttBridge(host="127.0.0.1", port=1, site="s", max_buffer=3)
    bridge.publish("a", {}, qos=1)
    bridge.publish("b", {})
    bridge.publish("c", {}, qos=1)
    bridge.publish("d", {})  # full: drops "b", the oldest QoS 0
    assert bridge.dropped == 1
    assert [m.topic.rsplit("/", 1)[1] for m in bridge._buffer] == ["a", "c", "d"]
