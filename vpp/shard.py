"""A poller shard (``vpp poll --shard i/n``): polls its share of a site's devices and
exchanges telemetry and setpoints with the controller through the MQTT broker.

Which assets are shard i's: :func:`vpp.devices.assign_shards`. They are built and polled as
the controller would poll them itself (``vpp.devices.build_devices``, ``drivers.Poller`` at
``control.interval_s`` and ``polling.slow_interval_s``). The topics and payloads are
:mod:`vpp.shardlink`'s and :mod:`drivers.remote`'s.

Queues and their overflow: polls wait to be sent as one entry per device and class (a newer
poll replaces an older one not yet sent); encoded batches wait in a bounded buffer while the
broker is away, the oldest dropped and counted (telemetry: the newest values matter);
setpoint requests run at once, at most ``MAX_SETPOINTS`` at a time, and one beyond that is
answered ``busy``, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from datetime import datetime
from typing import Any, Protocol

import aiomqtt

from drivers import Device, DeviceError, PollClass, WriteError
from drivers.device import WriteRefusedError
from drivers.poller import Poller, cancel_and_wait
from drivers.remote import (
    WireError,
    ack_error,
    ack_ok,
    parse_setpoint,
    poll_entry,
    telemetry_message,
)
from vpp.config import SiteConfig
from vpp.devices import assign_shards, assignment_digest, build_devices
from vpp.shardlink import ShardTopics, mqtt_client, payload_bytes, status_message

log = logging.getLogger(__name__)

FLUSH_S = 0.1  # [wall s] polls are sent at least this often ...
MAX_BATCH = 500  # ... and at once when this many wait
MAX_BUFFERED = 1000  # encoded batches kept while the broker is away
MAX_SETPOINTS = 1000  # setpoint writes at a time
RECENT_IDS = 2000  # setpoint ids remembered, so a request delivered twice is written once


class _Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...


class ShardPoller:
    """Shard ``shard`` of ``shards`` of a site: polls, publishes, takes setpoints."""

    def __init__(self, config: SiteConfig, *, shard: int, shards: int, clock: _Clock,
                 flush_s: float = FLUSH_S, max_batch: int = MAX_BATCH,
                 reconnect_max_s: float = 10.0) -> None:
        self.config = config
        self.shard = shard
        self.clock = clock
        self.assets = assign_shards(config.assets, shards)[shard]
        self.digest = assignment_digest(self.assets)
        self.connections, self.devices = build_devices(config, self.assets, clock=clock,
                                                       sink=None)
        self.topics = ShardTopics.of(config.mqtt, config.site.id, shard)
        self.fast_wall_s = config.control.interval_s / clock.speed
        self.slow_wall_s = config.polling.slow_interval_s / clock.speed
        self.poller = Poller(list(self.devices.values()),
                             fast_interval_s=config.control.interval_s,
                             slow_interval_s=config.polling.slow_interval_s,
                             speed=clock.speed, on_poll=self._polled)
        self.flush_s = flush_s
        self.max_batch = max_batch
        self.reconnect_max_s = reconnect_max_s
        self._waiting: dict[tuple[str, PollClass], Device] = {}
        self._buffer: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._seq = 0
        self._last_sent = 0.0
        self._setpoints: set[asyncio.Task[None]] = set()
        self._recent: deque[str] = deque()
        self._recent_set: set[str] = set()
        self.connected = False
        self.polls = 0
        self.messages_sent = 0
        self.entries_sent = 0
        self.dropped = 0
        self.setpoints = 0

    # -- telemetry --------------------------------------------------------------------------

    def _polled(self, dev: Device, poll_class: PollClass) -> None:
        self.polls += 1
        self._waiting[(dev.asset_id, poll_class)] = dev
        if len(self._waiting) >= self.max_batch:
            self.flush()

    def flush(self, *, beat: bool = False) -> None:
        """Encode what waits into one message (with ``beat``: an empty one too, so the
        controller hears a shard whose polls are all late)."""
        if not self._waiting and not beat:
            return
        entries = [e for (_, pc), dev in self._waiting.items()
                   if (e := poll_entry(dev, pc)) is not None]
        self._waiting = {}
        self._seq += 1
        self._push(telemetry_message(self.shard, self._seq, time.time(), entries,
                                     polled=self.polls))
        self.entries_sent += len(entries)

    def _push(self, payload: bytes) -> None:
        if len(self._buffer) >= MAX_BUFFERED:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(payload)
        self._wake.set()

    def snapshot(self) -> bytes:
        """The newest poll of every class of every device, as one telemetry message."""
        entries = [e for dev in self.devices.values() for pc in PollClass
                   if (e := poll_entry(dev, pc)) is not None]
        return telemetry_message(self.shard, self._seq, time.time(), entries)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            beat = time.monotonic() - self._last_sent >= self.fast_wall_s
            self.flush(beat=beat)

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll and publish until ``stop`` is set (or cancelled); then say offline."""
        log.info("shard %d: %d assets on %d endpoints, assignment %s", self.shard,
                 len(self.assets), len(self.connections), self.digest)
        try:
            async with self.poller:
                tasks = [asyncio.create_task(self._flusher(), name="vpp.shard.flush"),
                         asyncio.create_task(self._connections(), name="vpp.shard.mqtt")]
                try:
                    if stop is None:
                        await asyncio.Future()
                    else:
                        await stop.wait()
                finally:
                    await cancel_and_wait(tasks)
                    await cancel_and_wait(list(self._setpoints))
        finally:
            for c in self.connections.values():
                c.close()

    def _status(self, state: str) -> bytes:
        return status_message(state, shard=self.shard, assets=len(self.assets),
                              assignment=self.digest, fast_interval_s=self.config.control
                              .interval_s)

    async def _connections(self) -> None:
        backoff = 0.5
        mq = self.config.mqtt
        ident = f"vpp-{self.config.site.id}-shard-{self.shard}-{random.getrandbits(32):08x}"
        will = aiomqtt.Will(self.topics.status, self._status("offline"), qos=1, retain=True)
        while True:
            try:
                async with mqtt_client(mq, identifier=ident, will=will) as client:
                    backoff = 0.5
                    await client.subscribe(self.topics.setpoint, qos=1)
                    await client.publish(self.topics.status, self._status("online"), qos=1,
                                         retain=True)
                    self.connected = True
                    log.info("shard %d: connected to %s:%s", self.shard, mq.host, mq.port)
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self._send(client), name="vpp.shard.send")
                            tg.create_task(self._receive(client), name="vpp.shard.receive")
                            tg.create_task(self._snapshots(client), name="vpp.shard.snapshot")
                    except asyncio.CancelledError:  # stopping: say so, then go
                        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                            async with asyncio.timeout(2.0):
                                await client.publish(self.topics.status,
                                                     self._status("offline"), qos=1,
                                                     retain=True)
                        raise
            except* (aiomqtt.MqttError, OSError) as group:
                log.warning("shard %d: MQTT %s:%s: %s; retrying in %.1f s", self.shard,
                            mq.host, mq.port, group.exceptions[0], backoff)
            finally:
                self.connected = False
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.reconnect_max_s)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            while self._buffer:
                await client.publish(self.topics.telemetry, self._buffer[0], qos=0)
                self._buffer.popleft()
                self.messages_sent += 1
                self._last_sent = time.monotonic()
            self._wake.clear()
            await self._wake.wait()

    async def _snapshots(self, client: aiomqtt.Client) -> None:
        """Retained: a controller that starts later has every class (nameplates) at once."""
        await asyncio.sleep(2 * self.fast_wall_s)  # the once polls are done by then
        while True:
            await client.publish(self.topics.snapshot, self.snapshot(), qos=1, retain=True)
            await asyncio.sleep(self.slow_wall_s)

    # -- setpoints ----------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = payload_bytes(msg)
            if len(self._setpoints) >= MAX_SETPOINTS:
                await self._answer_busy(client, payload)
                continue
            t = asyncio.create_task(self._setpoint(client, payload), name="vpp.shard.setpoint")
            self._setpoints.add(t)
            t.add_done_callback(self._setpoints.discard)

    async def _answer_busy(self, client: aiomqtt.Client, payload: bytes) -> None:
        with contextlib.suppress(WireError):
            req = parse_setpoint(payload)
            await client.publish(self.topics.ack, ack_error(
                req.id, "busy", f"shard {self.shard}: {MAX_SETPOINTS} setpoints in progress"),
                qos=1)

    def _seen(self, req_id: str) -> bool:
        if req_id in self._recent_set:
            return True
        self._recent.append(req_id)
        self._recent_set.add(req_id)
        if len(self._recent) > RECENT_IDS:
            self._recent_set.discard(self._recent.popleft())
        return False

    async def _setpoint(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            req = parse_setpoint(payload)
        except WireError as exc:
            log.warning("shard %d: setpoint refused: %s", self.shard, exc)
            req_id = _id_of(payload)
            if req_id is not None:
                await client.publish(self.topics.ack, ack_error(req_id, "bad_request",
                                                                str(exc)), qos=1)
            return
        if self._seen(req.id):
            return  # delivered twice (QoS 1): written and answered once
        self.setpoints += 1
        await client.publish(self.topics.ack, await self.write(req.id, req.asset, req.point,
                                                               req.value, req.verify,
                                                               req.deadline_s, req.expires_at),
                             qos=1)

    async def write(self, req_id: str, asset: str, point: str, value: float, verify: bool,
                    deadline_s: float, expires_at: float) -> bytes:
        """Carry out one setpoint request; its ack."""
        dev = self.devices.get(asset)
        if dev is None:
            return ack_error(req_id, "unknown_asset", f"asset {asset!r} is not polled by "
                             f"shard {self.shard}: its assets are {sorted(self.devices)[:20]}")
        left_s = expires_at - time.time()
        if left_s <= 0:
            return ack_error(req_id, "expired", f"{asset}.{point}: the request came "
                             f"{-left_s:.2f} s after its sender stopped waiting; not written")
        try:
            res = await dev.write(point, value, verify=verify,
                                  deadline_s=min(deadline_s, max(0.05, left_s - 0.05)))
        except PermissionError as exc:
            return ack_error(req_id, "read_only", str(exc))
        except KeyError as exc:
            return ack_error(req_id, "unknown_point", str(exc.args[0] if exc.args else exc))
        except WriteRefusedError as exc:
            return ack_error(req_id, "refused", str(exc))
        except (WriteError, DeviceError) as exc:
            return ack_error(req_id, "failed", str(exc))
        except ValueError as exc:
            return ack_error(req_id, "refused", f"{asset}.{point}: {exc}")
        return ack_ok(req_id, res)


def _id_of(payload: bytes) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        v: Any = json.loads(payload).get("id")
        return v if isinstance(v, str) else None
    return None
