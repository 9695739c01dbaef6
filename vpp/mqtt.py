"""MQTT bridge (aiomqtt): JSON under ``{prefix}/{site}/…`` through a bounded buffer.

Topics (see docs/mqtt.md): ``status`` (retained, QoS 1, last will "offline"),
``telemetry/{asset}`` (QoS 0), ``pcc`` (QoS 0), ``forecast/{series}/{horizon}`` (retained, QoS 1),
``schedule`` (retained, QoS 1). Every payload carries ``schema`` (its version) and
unit-suffixed keys.

The buffer is bounded (``max_buffer``, QoS 0 and QoS 1 together): when it is full the oldest
QoS 0 message is dropped and counted; QoS 1 messages are dropped (and counted) only when
nothing else is left. While the broker is away messages wait in the buffer and go out in
order on reconnect. Sending is strictly one message at a time: a QoS 1 message leaves the
buffer only when the broker has acknowledged it (PUBACK), so a connection lost mid-publish
sends it again after the reconnect (at least once, never lost while the bridge runs).

With an ``outbox_path`` every QoS 1 message is also kept in an SQLite file (:class:`Outbox`)
until the broker acknowledges it, and loaded back first when a bridge starts on the same
file: a controller restart loses none of them. QoS 0 messages stay in memory only.

With ``on_command`` the bridge subscribes to ``{base}/cmd/#`` after each connect and hands
every message but our own answers (topics ending in ``/ack``) to it, one at a time in
arrival order, from a task that outlives reconnects. A QoS 1 command is acknowledged to the
broker (PUBACK) only once its handler has returned, in arrival order: a controller that dies
before it has been handled gets it again from its persistent session when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt

from vpp.jsonutil import dumps

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHECKPOINT_INTERVAL_S = 10.0  # outbox WAL folded into the database this often, off the loop
COMMAND_QUEUE_SIZE = 100  # received commands waiting for on_command; when full, reading waits
INCOMING_QUEUE_SIZE = 1000  # aiomqtt's queue; beyond it aiomqtt discards, with a warning

CommandHandler = Callable[[str, bytes], Awaitable[None]]
# a received message: its command name (None: not a command, only acknowledged), payload,
# and what acknowledges it to the broker
_Received = tuple[str | None, bytes, Callable[[], object]]


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: int | None = None  # its row in the outbox (QoS 1 with an outbox only)


class Outbox:
    """QoS 1 messages on disk, in publishing order, until the broker acknowledges them.

    One SQLite file in WAL mode with ``synchronous=NORMAL``: a commit is an append to the
    WAL without fsync, so :meth:`add` is cheap enough for the control loop, and a message
    survives a crash of the process (not necessarily a power cut of the host). The WAL is
    not checkpointed by the writes; :meth:`checkpoint` does it, from a worker thread, on its
    own connection. The connection belongs to the thread that opened it (the event loop's).
    One bridge per file: two bridges on one file would each send the other's messages.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=1.0)  # autocommit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # never an fsync inside add()
        self._db.execute("PRAGMA journal_size_limit=4194304")  # [bytes] WAL kept after a reset
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, "
                         "retain INTEGER NOT NULL)")
        self.dirty = False  # written since the last checkpoint

    def load(self) -> list[Message]:
        """The unacknowledged messages, oldest first."""
        rows = self._db.execute("SELECT seq, topic, payload, qos, retain FROM outbox "
                                "ORDER BY seq").fetchall()
        return [Message(topic, bytes(payload), int(qos), bool(retain), int(seq))
                for seq, topic, payload, qos, retain in rows]

    def add(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Store a message; return its sequence number."""
        cur = self._db.execute("INSERT INTO outbox (topic, payload, qos, retain) "
                               "VALUES (?, ?, ?, ?)", (topic, payload, qos, int(retain)))
        self.dirty = True
        assert cur.lastrowid is not None
        return cur.lastrowid

    def remove(self, seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        self.dirty = True

    def checkpoint(self) -> None:
        """Fold the WAL into the database (PASSIVE: never waits for, nor blocks, the writer).

        Blocking (it syncs the file): call it from a worker thread."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=5.0)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._db.close()


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails: paho leaves such a socket to the garbage
    collector (a ResourceWarning per failed attempt)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(*, ca_file: str | None, cert_file: str | None, key_file: str | None,
                insecure: bool) -> ssl.SSLContext:
    """The TLS context of a broker connection: ``ca_file`` to trust (none: the system's),
    an optional client certificate, and with ``insecure`` no hostname check (tests only)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    if insecure:
        ctx.check_hostname = False  # the certificate is still verified against the CA
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


async def _until_one_fails(coros: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines (by task name) until one raises or this task is cancelled, then
    cancel the rest, wait for them, and raise that error (or the cancellation).

    Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails after its body has ended
    cancels its parent task and never takes the request back (``cancelling()`` stays
    raised), and a cancellation arriving with the connection's loss was swallowed with it:
    the bridge reconnected instead of stopping."""
    tasks = [asyncio.create_task(c, name=name) for name, c in coros.items()]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc


class MqttBridge:
    """Publishes the controller's state and receives its commands; one owner of one broker
    connection.

    ``outbox_path``: the SQLite file that keeps QoS 1 messages until acknowledged (none:
    memory only). ``on_command(subtopic, payload)``: called for each message on
    ``{base}/cmd/<subtopic>`` except ``…/ack``. ``tls_ca_file``: the CA bundle to trust
    (none: the system's); ``tls_cert_file``/``tls_key_file``: a client certificate;
    ``tls_insecure``: no hostname check (tests only). ``reconnect_max_s``: the longest wait
    between connection attempts [s] (they back off exponentially, with jitter, from 0.5 s).
    A given ``client_id`` is taken to be stable and the session is then persistent
    (``clean_session`` false): the broker keeps commands sent while the bridge is away.
    ``on_command`` may also be set after construction (the subscription is made as soon as
    it is).
    """

    def __init__(self, *, host: str, port: int, site: str, prefix: str = "vpp",
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None, tls_insecure: bool = False,
                 max_buffer: int = 10_000, client_id: str | None = None,
                 outbox_path: Path | None = None, on_command: CommandHandler | None = None,
                 reconnect_max_s: float = 30.0) -> None:
        self.host, self.port = host, port
        self.base = f"{prefix}/{site}"
        self.username, self.tls = username, tls
        self._password = password  # never logged, never in a repr
        self.tls_ca_file, self.tls_cert_file, self.tls_key_file = (
            tls_ca_file, tls_cert_file, tls_key_file)
        self.tls_insecure = tls_insecure
        if tls:
            self._tls_context()  # a missing or bad file fails now, not in the reconnect loop
        self.persistent_session = client_id is not None
        self.client_id = client_id or f"vpp-{site}-{random.getrandbits(32):08x}"
        self.max_buffer = max_buffer
        self._on_command: CommandHandler | None = None
        self._commands_wanted = asyncio.Event()
        self.on_command = on_command
        self._buffer: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._commands: asyncio.Queue[_Received] = asyncio.Queue(COMMAND_QUEUE_SIZE)
        self.sent = 0
        self.dropped = 0
        self.outbox_errors = 0
        self.connected = False
        self.subscribed = False  # to {base}/cmd/# on this connection
        self.reconnect_max_s = reconnect_max_s
        self._outbox = Outbox(outbox_path) if outbox_path is not None else None
        if self._outbox is not None:
            kept = self._outbox.load()
            for m in kept:  # oldest first, before anything published from now on
                if len(self._buffer) >= self.max_buffer:
                    self._drop_one()
                self._buffer.append(m)
            if kept:
                log.info("MQTT outbox %s: %d unacknowledged messages to send", outbox_path,
                         len(kept))
                self._wake.set()

    def __repr__(self) -> str:
        return f"MqttBridge({self.host}:{self.port}, {self.base!r}, user={self.username!r})"

    @property
    def on_command(self) -> CommandHandler | None:
        return self._on_command

    @on_command.setter
    def on_command(self, handler: CommandHandler | None) -> None:
        self._on_command = handler
        if handler is not None:
            self._commands_wanted.set()
        else:
            self._commands_wanted.clear()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def publish(self, subtopic: str, payload: dict[str, Any], *, qos: int = 0,
                retain: bool = False) -> None:
        """Queue a JSON message; never blocks (a QoS 1 message is also written to the
        outbox: an SQLite insert without fsync)."""
        body = {"schema": SCHEMA_VERSION, **payload}
        topic, data = f"{self.base}/{subtopic}", dumps(body).encode()
        seq = self._store(topic, data, qos, retain) if qos > 0 else None
        if len(self._buffer) >= self.max_buffer:
            self._drop_one()
        self._buffer.append(Message(topic, data, qos, retain, seq))
        self._empty.clear()
        self._wake.set()

    def _store(self, topic: str, data: bytes, qos: int, retain: bool) -> int | None:
        if self._outbox is None:
            return None
        try:
            seq = self._outbox.add(topic, data, qos, retain)
        except sqlite3.Error as exc:  # a full disk must not stop the control loop
            if self.outbox_errors == 0:
                log.error("MQTT outbox %s: %s; QoS 1 messages are kept in memory only",
                          self._outbox.path, exc)
            self.outbox_errors += 1
            return None
        if self.outbox_errors:
            log.info("MQTT outbox %s writable again after %d failed writes",
                     self._outbox.path, self.outbox_errors)
            self.outbox_errors = 0
        return seq

    def _forget(self, m: Message) -> None:
        if self._outbox is None or m.seq is None:
            return
        try:
            self._outbox.remove(m.seq)
        except sqlite3.Error as exc:  # it is sent again after a restart: a duplicate
            log.warning("MQTT outbox %s: %s", self._outbox.path, exc)

    def _drop_one(self) -> None:
        for i, m in enumerate(self._buffer):
            if m.qos == 0:
                del self._buffer[i]
                break
        else:
            m = self._buffer.popleft()
            self._forget(m)
        self.dropped += 1

    async def drain(self, *, timeout_s: float) -> bool:
        """Wait until the buffer is sent (True) or ``timeout_s`` passes (False)."""
        if self._buffer and self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), timeout_s)
        return not self._buffer

    def close(self) -> None:
        """Close the outbox file (what is in it stays for the next start)."""
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    def _tls_context(self) -> ssl.SSLContext:
        return tls_context(ca_file=self.tls_ca_file, cert_file=self.tls_cert_file,
                           key_file=self.tls_key_file, insecure=self.tls_insecure)

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(f"{self.base}/status",
                            json.dumps({"schema": SCHEMA_VERSION, "state": "offline"}),
                            qos=1, retain=True)
        client = aiomqtt.Client(
            self.host, self.port, username=self.username, password=self._password,
            identifier=self.client_id, will=will,
            tls_context=self._tls_context() if self.tls else None, keepalive=30, timeout=5,
            clean_session=not self.persistent_session,
            max_queued_incoming_messages=INCOMING_QUEUE_SIZE)
        # commands are acknowledged once handled (aiomqtt has no option for it: paho's own)
        client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        """Connect, publish the buffer in order, receive commands, reconnect with backoff;
        until cancelled."""
        async with asyncio.TaskGroup() as tg:
            if self._outbox is not None:
                tg.create_task(self._checkpoints(), name="vpp.mqtt.outbox")
            tg.create_task(self._handle_commands(), name="vpp.mqtt.commands")
            await self._connections()

    async def _connections(self) -> None:
        backoff = 0.5
        while True:
            stopped = False
            try:
                async with self._client() as client:
                    self.connected = True
                    backoff = 0.5
                    log.info("MQTT connected to %s:%s as %s (%d messages waiting)", self.host,
                             self.port, self.client_id, len(self._buffer))
                    try:
                        await client.publish(f"{self.base}/status", json.dumps(
                            {"schema": SCHEMA_VERSION, "state": "online"}), qos=1, retain=True)
                        # the receiver also notices a lost connection at once
                        await _until_one_fails({"vpp.mqtt.receive": self._receive(client),
                                                "vpp.mqtt.subscribe": self._subscribe(client),
                                                "vpp.mqtt.send": self._send(client)})
                    except asyncio.CancelledError:
                        stopped = True
                        raise
            except* (aiomqtt.MqttError, OSError) as group:  # OSError: the TLS files
                exc = group.exceptions[0]
                if not stopped:
                    log.warning("MQTT %s:%s%s: %s; retrying in %.1f s", self.host, self.port,
                                f" (user {self.username!r})" if self.username else "", exc,
                                backoff)
            finally:
                self.connected = self.subscribed = False
            task = asyncio.current_task()
            if stopped or (task is not None and task.cancelling()):
                # cancelled: an error on the way out (the connection lost as the cancel came,
                # a goodbye to the broker not done in aiomqtt's 5 s) replaced the
                # cancellation; taken for a lost connection, it would reconnect, never stop
                raise asyncio.CancelledError
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.reconnect_max_s)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            while self._buffer:
                m = self._buffer[0]
                # returns for QoS 1 only on the broker's PUBACK (aiomqtt waits for paho's
                # on_publish); raises MqttError when the connection goes first
                await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                if self._buffer and self._buffer[0] is m:  # not dropped meanwhile
                    self._buffer.popleft()
                self._forget(m)
                self.sent += 1
            self._empty.set()
            self._wake.clear()
            await self._wake.wait()

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        await self._commands_wanted.wait()
        await client.subscribe(f"{self.base}/cmd/#", qos=1)
        self.subscribed = True
        log.info("MQTT subscribed to %s/cmd/#", self.base)

    async def _receive(self, client: aiomqtt.Client) -> None:
        prefix = f"{self.base}/cmd/"
        async for msg in client.messages:
            topic = msg.topic.value
            ack = partial(client._client.ack, msg.mid, msg.qos)
            name: str | None = topic.removeprefix(prefix)
            if topic.endswith("/ack"):
                name = None  # our own answers
            elif not topic.startswith(prefix):
                log.warning("MQTT message on %s ignored: no command name after cmd/", topic)
                name = None
            p = msg.payload
            data = bytes(p) if isinstance(p, bytes | bytearray) else (
                b"" if p is None else str(p).encode())
            await self._commands.put((name, data, ack))  # acknowledged in this order

    async def _handle_commands(self) -> None:
        while True:
            subtopic, payload, ack = await self._commands.get()
            handler = self._on_command
            if subtopic is not None and handler is None:
                # a persistent session's subscription from an earlier run
                log.warning("MQTT command %r ignored: no command handler", subtopic)
            elif subtopic is not None and handler is not None:
                try:
                    await handler(subtopic, payload)
                except Exception:  # handled, if badly: sent again it would fail again
                    log.exception("MQTT command %r: the handler failed", subtopic)
            # on a connection lost meanwhile this does nothing: the broker sends it again
            ack()

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            outbox = self._outbox
            if outbox is None or not outbox.dirty:
                continue
            outbox.dirty = False
            try:
                await asyncio.to_thread(outbox.checkpoint)
            except sqlite3.Error as exc:
                log.warning("MQTT outbox %s: checkpoint: %s", outbox.path, exc)
