"""The controller's end of the poller shards: one MQTT client for every remote device.

Topics, under ``{mqtt.topic_prefix}/{site}/shard/{i}/`` (payloads: :mod:`drivers.remote`):

* ``telemetry`` (shard, QoS 0): every poll, batched: a message per ~0.1 s or 500 polls;
* ``snapshot`` (shard, QoS 1, retained): the newest poll of every class of every device,
  every slow interval, so a controller that starts later has the nameplates at once;
* ``status`` (shard, QoS 1, retained, the last will): ``{"state": "online" | "offline",
  "assets", "assignment"}``;
* ``setpoint`` (controller, QoS 1): a write request; ``ack`` (shard, QoS 1): its result.

A shard is *alive* while its status is online and its messages keep coming (none for
``STALE_AFTER_INTERVALS`` fast intervals: silent). The devices of a shard that is not alive
read stale and offline, so the controller holds them. The link connects when it is first
used and reconnects with backoff; a setpoint waits for the connection within its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiomqtt

from drivers import Device, SampleQueue, load_profile
from drivers.remote import (
    SCHEMA,
    STALE_AFTER_INTERVALS,
    EntryError,
    RemoteDevice,
    SetpointRequest,
    WireError,
    check_entry,
    parse_ack,
    parse_telemetry,
    remote_device,
    setpoint_message,
)
from vpp.config import MqttSection, SiteConfig
from vpp.devices import assign_shards, assignment_digest
from vpp.mqtt import tls_context

log = logging.getLogger(__name__)

INCOMING_QUEUE_SIZE = 10_000  # aiomqtt's queue of received messages
MAX_PENDING_SETPOINTS = 10_000  # requests waiting for an ack; beyond, a request fails at once
KEEPALIVE_S = 10  # a shard that dies unseen is offline (its last will) within 1.5 × this


class _Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...


@dataclass(frozen=True)
class ShardTopics:
    """The topics of shard i: under ``{prefix}/{site}/shard/{i}`` (``base``)."""

    base: str
    telemetry: str
    snapshot: str
    status: str
    setpoint: str
    ack: str

    @classmethod
    def of(cls, mq: MqttSection, site: str, shard: int | str) -> ShardTopics:
        base = f"{mq.topic_prefix}/{site}/shard/{shard}"
        return cls(base, *(f"{base}/{kind}" for kind in ("telemetry", "snapshot", "status",
                                                           "setpoint", "ack")))


def status_message(state: str, **extra: Any) -> bytes:
    return json.dumps({"schema": SCHEMA, "state": state, **extra}).encode()


def mqtt_client(mq: MqttSection, *, identifier: str, will: aiomqtt.Will | None,
                max_queued: int = INCOMING_QUEUE_SIZE) -> aiomqtt.Client:
    """A broker connection with the site's MQTT settings (credentials, TLS)."""
    tls = tls_context(ca_file=mq.tls_ca_file, cert_file=mq.tls_cert_file,
                      key_file=mq.tls_key_file, insecure=mq.tls_insecure) if mq.tls else None
    return aiomqtt.Client(
        mq.host, mq.port, username=mq.username,
        password=mq.password.get_secret_value() if mq.password else None,
        identifier=identifier, will=will, tls_context=tls, keepalive=KEEPALIVE_S, timeout=5,
        clean_session=True, max_queued_incoming_messages=max_queued)


def payload_bytes(msg: aiomqtt.Message) -> bytes:
    p = msg.payload
    return bytes(p) if isinstance(p, bytes | bytearray) else (
        b"" if p is None else str(p).encode())


class ShardLink:
    """Every remote device of a site, fed by the shards' messages; implements
    :class:`drivers.remote.ShardChannel`.

    ``measure``: keep the wall-clock delay from each poll's read time to its arrival here
    (``latencies_s``, the newest ``measure`` of them; shards and controller must share a
    clock, e.g. NTP across hosts)."""

    def __init__(self, config: SiteConfig, *, clock: _Clock, measure: int = 0,
                 reconnect_max_s: float = 10.0) -> None:
        self.config = config
        self.clock = clock
        self.shards = config.polling.shards
        if self.shards < 1:
            raise ValueError("ShardLink needs polling.shards >= 1")
        self.assignment = assign_shards(config.assets, self.shards)
        self.digests = [assignment_digest(a) for a in self.assignment]
        self.remote: dict[str, RemoteDevice] = {}
        self.topics = [ShardTopics.of(config.mqtt, config.site.id, i)
                       for i in range(self.shards)]
        # silent: nothing heard for this long [wall s]
        self.silent_after_s = max(1.0, STALE_AFTER_INTERVALS * config.control.interval_s
                                  / clock.speed)
        self.reconnect_max_s = reconnect_max_s
        self._heard = [-1e18] * self.shards  # monotonic time of each shard's last message
        self._online = [False] * self.shards
        self._reported_digest: list[str | None] = [None] * self.shards
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._outgoing: asyncio.Queue[tuple[int, bytes]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.messages = 0
        self.entries = 0
        self.bad_messages = 0
        self.bad_entries = 0
        self.entries_by_shard = [0] * self.shards
        self.polled = [0] * self.shards  # each shard's polls so far, as it last said
        self.latencies_s: deque[float] = deque(maxlen=max(1, measure))
        self.measure = measure > 0
        self._warned_at = 0.0

    def devices(self, sink: SampleQueue | None) -> dict[str, Device]:
        """A :class:`RemoteDevice` per asset of the site, in the site file's order."""
        cfg = self.config
        max_age_s = STALE_AFTER_INTERVALS * cfg.control.interval_s
        shard_of = {a.id: i for i, assets in enumerate(self.assignment) for a in assets}
        for a in cfg.assets:
            self.remote[a.id] = remote_device(
                asset_id=a.id, profile=load_profile(a.profile), unit_id=a.unit_id,
                now=self.clock.now, channel=self, shard=shard_of[a.id], sink=sink,
                max_age_s=max_age_s, timeout_s=cfg.polling.timeout_s / self.clock.speed)
        return dict(self.remote)

    # -- ShardChannel -----------------------------------------------------------------------

    def alive(self, shard: int) -> bool:
        self.start()
        return self._online[shard] and (
            time.monotonic() - self._heard[shard] <= self.silent_after_s)

    async def request(self, shard: int, body: dict[str, Any], *,
                      timeout_s: float) -> dict[str, Any]:
        self.start()
        assert self._outgoing is not None
        if len(self._pending) >= MAX_PENDING_SETPOINTS:
            return {"ok": False, "error": "busy", "message": f"{len(self._pending)} setpoints "
                    "wait for their acks already"}
        req = SetpointRequest(id=uuid.uuid4().hex, asset=body["asset"], point=body["point"],
                              value=body["value"], verify=body["verify"],
                              deadline_s=body["deadline_s"], expires_at=time.time() + timeout_s)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req.id] = fut
        try:
            self._outgoing.put_nowait((shard, setpoint_message(req)))
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self._pending.pop(req.id, None)

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (once; called by the devices' first use)."""
        if self._task is None:
            self._outgoing = asyncio.Queue(MAX_PENDING_SETPOINTS)
            self._task = asyncio.get_running_loop().create_task(self._connections(),
                                                                name="vpp.shardlink")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _connections(self) -> None:
        backoff = 0.5
        mq = self.config.mqtt
        ident = f"vpp-{self.config.site.id}-shardlink-{random.getrandbits(32):08x}"
        while True:
            try:
                async with mqtt_client(mq, identifier=ident, will=None) as client:
                    backoff = 0.5
                    for t in self.topics:
                        for topic, qos in ((t.telemetry, 0), (t.snapshot, 1), (t.status, 1),
                                           (t.ack, 1)):
                            await client.subscribe(topic, qos=qos)
                    self.connected = True
                    log.info("shard link: connected to %s:%s, %d shard(s)", mq.host, mq.port,
                             self.shards)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._receive(client), name="vpp.shardlink.receive")
                        tg.create_task(self._send(client), name="vpp.shardlink.send")
            except* (aiomqtt.MqttError, OSError) as group:
                log.warning("shard link: MQTT %s:%s: %s; retrying in %.1f s", mq.host, mq.port,
                            group.exceptions[0], backoff)
            finally:
                self.connected = False
                self._online = [False] * self.shards  # heard again after the reconnect
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.reconnect_max_s)

    async def _send(self, client: aiomqtt.Client) -> None:
        assert self._outgoing is not None
        while True:
            shard, payload = await self._outgoing.get()
            await client.publish(self.topics[shard].setpoint, payload, qos=1)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            try:
                self.handle(msg.topic.value, payload_bytes(msg), retained=msg.retain)
            except WireError as exc:
                self.bad_messages += 1
                self._warn("shard link: %s: message refused: %s", msg.topic.value, exc)

    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """One message from a shard (raises :class:`WireError` for a bad one)."""
        self.messages += 1
        shard_s, _, kind = topic.rpartition("/shard/")[2].partition("/")
        shard = int(shard_s) if shard_s.isdigit() else -1
        if not 0 <= shard < self.shards:
            raise WireError(f"shard {shard_s!r} is not one of this site's 0..{self.shards - 1}")
        if kind in ("telemetry", "snapshot"):
            tel = parse_telemetry(payload)
            if tel.shard != shard:
                raise WireError(f"telemetry of shard {tel.shard} on shard {shard}'s topic")
            if not retained:
                self._heard[shard] = time.monotonic()
                if tel.polled is not None:
                    self.polled[shard] = tel.polled
            self._apply(shard, tel.polls)
        elif kind == "status":
            self._status(shard, payload)
        elif kind == "ack":
            ack = parse_ack(payload)
            fut = self._pending.get(ack["id"])
            if fut is not None and not fut.done():
                fut.set_result(ack)

    def _apply(self, shard: int, polls: list[Any]) -> None:
        remote = self.remote
        measure = self.measure
        wall = time.time()
        for entry in polls:
            try:
                asset, pc, ts, health, values, quals = check_entry(entry)
                dev = remote.get(asset)
                if dev is None or dev.shard != shard:
                    raise EntryError(f"asset {asset!r} is not one of shard {shard}'s")
                dev.apply(pc, ts, health, values, quals)
            except EntryError as exc:
                self.bad_entries += 1
                self._warn("shard link: shard %d: entry refused: %s", shard, exc)
                continue
            self.entries += 1
            self.entries_by_shard[shard] += 1
            if measure:
                self.latencies_s.append(wall - ts)

    def _status(self, shard: int, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            raise WireError(f"status of shard {shard}: not JSON") from None
        if not isinstance(data, dict) or data.get("state") not in ("online", "offline"):
            raise WireError(f"status of shard {shard}: state must be online or offline")
        online = data["state"] == "online"
        if online != self._online[shard]:
            (log.info if online else log.warning)("shard %d is %s", shard, data["state"])
        self._online[shard] = online
        if online:
            self._heard[shard] = max(self._heard[shard], time.monotonic())
            digest = data.get("assignment")
            if digest != self.digests[shard] and digest != self._reported_digest[shard]:
                log.error("shard %d polls other assets (%s assets, assignment %s) than this "
                          "site file gives it (%d assets, assignment %s): are both on the "
                          "same site file?", shard, data.get("assets"), digest,
                          len(self.assignment[shard]), self.digests[shard])
            self._reported_digest[shard] = digest

    def _warn(self, fmt: str, *args: Any) -> None:
        """Log a refused message, at most once a minute (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self._warned_at >= 60.0:
            self._warned_at = now
            log.warning(fmt, *args)
