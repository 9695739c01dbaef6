"""MQTT bridge (aiomqtt): JSON under ``{prefix}/{site}/…`` through a bounded buffer.

Topics (see docs/mqtt.md): ``status`` (retained, QoS 1, last will "offline"),
``telemetry/{asset}`` (QoS 0), ``pcc`` (QoS 0), ``forecast/{series}/{horizon}`` (retained, QoS 1),
``schedule`` (retained, QoS 1). Every payload carries ``schema`` (its version) and
unit-suffixed keys.

The buffer is bounded (``max_buffer``): when it is full the oldest QoS 0 message is dropped
and counted; QoS 1 messages are dropped only when nothing else is left. While the broker
is away messages wait in the buffer and go out in order on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiomqtt

from vpp.jsonutil import dumps

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttBridge:
    """Publishes the controller's state; one owner of one broker connection."""

    def __init__(self, *, host: str, port: int, site: str, prefix: str = "vpp",
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 max_buffer: int = 10_000, client_id: str | None = None) -> None:
        self.host, self.port = host, port
        self.base = f"{prefix}/{site}"
        self.username, self.password, self.tls = username, password, tls
        self.client_id = client_id or f"vpp-{site}-{random.getrandbits(32):08x}"
        self.max_buffer = max_buffer
        self._buffer: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.connected = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def publish(self, subtopic: str, payload: dict[str, Any], *, qos: int = 0,
                retain: bool = False) -> None:
        """Queue a JSON message; never blocks."""
        body = {"schema": SCHEMA_VERSION, **payload}
        msg = Message(f"{self.base}/{subtopic}", dumps(body).encode(), qos, retain)
        if len(self._buffer) >= self.max_buffer:
            self._drop_one()
        self._buffer.append(msg)
        self._empty.clear()
        self._wake.set()

    def _drop_one(self) -> None:
        for i, m in enumerate(self._buffer):
            if m.qos == 0:
                del self._buffer[i]
                break
        else:
            self._buffer.popleft()
        self.dropped += 1

    async def drain(self, *, timeout_s: float) -> bool:
        """Wait until the buffer is sent (True) or ``timeout_s`` passes (False)."""
        if self._buffer and self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), timeout_s)
        return not self._buffer

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(f"{self.base}/status",
                            json.dumps({"schema": SCHEMA_VERSION, "state": "offline"}),
                            qos=1, retain=True)
        tls_context = ssl.create_default_context() if self.tls else None
        return aiomqtt.Client(self.host, self.port, username=self.username,
                              password=self.password, identifier=self.client_id, will=will,
                              tls_context=tls_context, keepalive=30, timeout=5)

    async def run(self) -> None:
        """Connect, publish the buffer in order, reconnect with backoff; until cancelled."""
        backoff = 0.5
        while True:
            try:
                async with self._client() as client:
                    self.connected = True
                    backoff = 0.5
                    await client.publish(f"{self.base}/status", json.dumps(
                        {"schema": SCHEMA_VERSION, "state": "online"}), qos=1, retain=True)
                    while True:
                        while self._buffer:
                            m = self._buffer[0]
                            await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                            if self._buffer and self._buffer[0] is m:
                                self._buffer.popleft()
                            self.sent += 1
                        self._empty.set()
                        self._wake.clear()
                        await self._wake.wait()
            except aiomqtt.MqttError as exc:
                self.connected = False
                log.warning("MQTT %s:%s: %s; retrying in %.1f s", self.host, self.port, exc,
                            backoff)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 30.0)
