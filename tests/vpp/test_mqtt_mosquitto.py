"""The MQTT bridge against a real Mosquitto of its own: outages, crashes, credentials, TLS and
commands.

Each test starts ``mosquitto -c <conf>`` on a free port, with persistence in ``tmp_path``, so
it can stop the broker and start it again on the same port with the same sessions; what
the bridge sent is read back with ``mosquitto_sub`` (or an aiomqtt subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conftest import require_tool
from vpp.broker import free_port
from vpp.mqtt import MqttBridge

SITE = "s1"
BASE = f"vpp/{SITE}"
PASSWORD = "correct horse battery staple"
ROOT = Path(__file__).resolve().parents[2]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """A Mosquitto process on 127.0.0.1:port with persistence in ``root``; restartable."""

    def __init__(self, root: Path, *, listener: str = "", extra: str = "",
                 anonymous: bool = True) -> None:
        self.exe = require_tool("mosquitto", "mosquitto")
        self.root = root
        self.port = free_port()
        (root / "db").mkdir(parents=True, exist_ok=True)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            # as root Mosquitto would become user "mosquitto", who cannot read tmp_path
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n{listener}"
            f"persistence true\npersistence_location {root / 'db'}/\n"
            f"allow_anonymous {str(anonymous).lower()}\nmax_queued_messages 100000\n"
            f"log_dest file {root / 'mosquitto.log'}\nconnection_messages true\n{extra}")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert self.proc is None
        self.proc = await asyncio.create_subprocess_exec(
            self.exe, "-c", str(self.conf), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        for _ in range(100):
            if _port_open(self.port):
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {self.log()}")

    async def stop(self) -> None:
        """SIGTERM: Mosquitto saves its sessions and queued messages, then exits."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 10)
        self.proc = None

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker")
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


class Subscriber:
    """``mosquitto_sub -v`` as a subprocess; its lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.args = (require_tool("mosquitto_sub", "mosquitto-clients"), *args)
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        self._reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    def messages(self, topic: str) -> list[dict[str, object]]:
        return [json.loads(ln.split(" ", 1)[1]) for ln in self.lines
                if ln.split(" ", 1)[0] == topic]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not within {timeout_s} s: {what}")


async def running(bridge: MqttBridge) -> asyncio.Task[None]:
    return asyncio.create_task(bridge.run(), name="test.mqtt")


async def stop(task: asyncio.Task[None], within_s: float = 30.0) -> None:
    """Cancel a bridge's task; one that does not end within ``within_s`` fails the test with
    where it waits (a bridge must stop even with its broker gone)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if not done:
        out = io.StringIO()
        for t in asyncio.all_tasks():
            t.print_stack(file=out)
        raise AssertionError(f"the bridge did not stop within {within_s} s:\n{out.getvalue()}")


def seqs(sub: Subscriber, topic: str = f"{BASE}/seq") -> list[int]:
    return [int(m["seq"]) for m in sub.messages(topic)]  # type: ignore[call-overload]


def assert_all_in_order(got: list[int], n: int) -> None:
    """At least once, in order: every number 0..n-1, never one going back."""
    assert got, "nothing received"
    back = [(a, b) for a, b in itertools.pairwise(got) if b < a]
    assert not back, f"out of order: {back[:5]}"
    missing = sorted(set(range(n)) - set(got))
    assert not missing, f"{len(missing)} lost, e.g. {missing[:10]}"
    assert max(got) == n - 1


async def test_a_30_s_outage_of_mosquitto_loses_no_qos1_message(
        broker: Mosquitto, tmp_path: Path) -> None:
    """The issue's case: Mosquitto stopped for 30 s and restarted loses none of the QoS 1
    messages published meanwhile (seen by a persistent-session mosquitto_sub)."""
    bridge = MqttBridge(host="127.0.0.1", port=broker.port, site=SITE, reconnect_max_s=2.0,
                        outbox_path=tmp_path / "outbox.sqlite")
    task = await running(bridge)
    sub = Subscriber("-h", "127.0.0.1", "-p", str(broker.port), "-c", "-i", "test-sub-a",
                     "-q", "1", "-v", "-t", f"{BASE}/#")
    n = 0
    publishing = True

    async def publish_every_50_ms() -> None:
        nonlocal n
        while publishing:
            bridge.publish("seq", {"seq": n}, qos=1)
            n += 1
            await asyncio.sleep(0.05)

    try:
        await wait_until(lambda: bridge.connected, 10, "bridge connected")
        await sub.start()
        # the retained status arrives once the subscription is in place
        await wait_until(lambda: bool(sub.messages(f"{BASE}/status")), 10, "subscribed")
        publisher = asyncio.create_task(publish_every_50_ms())
        await wait_until(lambda: len(seqs(sub)) >= 20, 10, "first messages through")
        await broker.stop()
        t_down, n_down = time.monotonic(), n
        await asyncio.sleep(30.0)
        assert not bridge.connected and bridge.buffered >= n - n_down - 2
        await broker.start()  # same port, same persistence directory
        outage_s = time.monotonic() - t_down
        await wait_until(lambda: bridge.connected, 10, "bridge reconnected")
        await asyncio.sleep(1.0)
        publishing = False
        await publisher
        assert await bridge.drain(timeout_s=30)
        await wait_until(lambda: bool(seqs(sub)) and seqs(sub)[-1] == n - 1, 30,
                         "subscriber caught up")
    finally:
        publishing = False
        await stop(task)
        await sub.stop()
        bridge.close()
    assert outage_s >= 30.0
    assert n - n_down >= 500  # published while the broker was away (30 s at 20 per s)
    assert_all_in_order(seqs(sub), n)
    assert bridge.buffered == 0 and bridge.dropped == 0


CRASHING_CONTROLLER = """
import asyncio, sys
from pathlib import Path
from vpp.mqtt import MqttBridge

async def main() -> None:
    bridge = MqttBridge(host="127.0.0.1", port=int(sys.argv[1]), site="s1",
                        outbox_path=Path(sys.argv[2]))
    task = asyncio.create_task(bridge.run())  # trying to reach a broker that is down
    for i in range(int(sys.argv[3])):
        bridge.publish("seq", {"seq": i}, qos=1)
        bridge.publish("telemetry/pv1", {"seq": i})  # QoS 0: memory only
    print("published", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_b_messages_published_before_a_crash_are_sent_by_the_next_start(
        tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")  # not started yet: the controller is cut off
    outbox = tmp_path / "outbox.sqlite"
    n = 200
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_CONTROLLER, str(broker.port), str(outbox), str(n),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.strip() == b"published"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # a crash: no drain, no close
        await asyncio.wait_for(child.wait(), 10)
    bridge = MqttBridge(host="127.0.0.1", port=broker.port, site=SITE, outbox_path=outbox,
                        reconnect_max_s=1.0)
    assert bridge.buffered == n  # the QoS 1 ones, from the file
    got: list[int] = []
    await broker.start()
    task: asyncio.Task[None] | None = None
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe(f"{BASE}/#", qos=1)  # returns on the SUBACK
            task = await running(bridge)
            async with asyncio.timeout(30):
                async for msg in client.messages:
                    if str(msg.topic) == f"{BASE}/seq":
                        got.append(json.loads(bytes(msg.payload))["seq"])  # type: ignore[arg-type]
                        if got[-1] == n - 1:
                            break
        assert await bridge.drain(timeout_s=10)
    finally:
        if task is not None:
            await stop(task)
        bridge.close()
    assert_all_in_order(got, n)
    again = MqttBridge(host="127.0.0.1", port=broker.port, site=SITE, outbox_path=outbox)
    try:
        assert again.buffered == 0  # acknowledged ones are gone from the file
    finally:
        again.close()
        await broker.stop()


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    """A Mosquitto password file with the user ``vpp``."""
    path = tmp_path / "passwd"
    subprocess.run([require_tool("mosquitto_passwd", "mosquitto"), "-b", "-c", str(path),
                    "vpp", PASSWORD], check=True, capture_output=True)
    path.chmod(0o600)
    return path


async def test_c_credentials_right_password_connects_wrong_one_is_refused_unlogged(
        tmp_path: Path, pwfile: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = Mosquitto(tmp_path / "broker", anonymous=False, extra=f"password_file {pwfile}\n")
    await broker.start()
    caplog.set_level(logging.DEBUG)  # everything, paho's own log included
    good = MqttBridge(host="127.0.0.1", port=broker.port, site=SITE, username="vpp",
                      password=PASSWORD)
    wrong = "not-" + PASSWORD.replace(" ", "-")
    bad = MqttBridge(host="127.0.0.1", port=broker.port, site="s2", username="vpp",
                     password=wrong, reconnect_max_s=0.5)
    sub = Subscriber("-h", "127.0.0.1", "-p", str(broker.port), "-u", "vpp", "-P", PASSWORD,
                     "-v", "-t", f"{BASE}/#", "-t", "vpp/s2/#")
    tasks = [await running(good), await running(bad)]
    try:
        await wait_until(lambda: good.connected, 10, "connected with the right password")
        await sub.start()
        await wait_until(lambda: bool(sub.messages(f"{BASE}/status")), 10, "subscribed")
        good.publish("seq", {"seq": 1}, qos=1)
        await wait_until(lambda: seqs(sub) == [1], 10, "message through")
        await wait_until(lambda: "retrying" in caplog.text, 10, "refusal logged")
        await asyncio.sleep(1.0)  # a few more attempts
        assert not bad.connected and not sub.messages("vpp/s2/status")
    finally:
        for t in tasks:
            await stop(t)
        await sub.stop()
        await broker.stop()
    refusals = [r.getMessage() for r in caplog.records
                if r.name == "vpp.mqtt" and "retrying" in r.getMessage()]
    assert any("user 'vpp'" in r and ("authoriz" in r.lower() or "password" in r.lower())
               for r in refusals), refusals
    for secret in (PASSWORD, wrong):
        assert secret not in caplog.text
        assert secret not in repr(good) + repr(bad)


def _openssl(*args: str, cwd: Path) -> None:
    exe = require_tool("openssl", "openssl")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    make_pki(tmp_path / "pki")
    return tmp_path / "pki"


@pytest.fixture
def pki_elsewhere(tmp_path: Path) -> Path:
    """Certificates whose server name is not the broker's address."""
    make_pki(tmp_path / "pki", server_san="DNS:elsewhere.invalid")
    return tmp_path / "pki"


def make_pki(d: Path, *, server_san: str = "IP:127.0.0.1") -> None:
    """A CA, a server certificate (subjectAltName ``server_san``) and a client certificate
    signed by it, EC keys, in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=vpp test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in (("server", f"subjectAltName={server_san}\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=vpp test {name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)


def tls_broker(root: Path, pki: Path, *, client_certs: bool = False) -> Mosquitto:
    return Mosquitto(root, listener=(
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
        f"keyfile {pki / 'server.key'}\n"
        + ("require_certificate true\n" if client_certs else "")))


async def _connects(bridge: MqttBridge, within_s: float) -> bool:
    task = await running(bridge)
    try:
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: bridge.connected, within_s, "connected")
        return bridge.connected
    finally:
        await stop(task)


async def test_d_tls_with_our_ca_connects_and_mosquitto_sub_sees_the_message(
        tmp_path: Path, pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = tls_broker(tmp_path / "broker", pki)
    await broker.start()
    sub = Subscriber("-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(pki / "ca.crt"),
                     "-v", "-t", f"{BASE}/#")
    bridge = MqttBridge(host="127.0.0.1", port=broker.port, site=SITE, tls=True,
                        tls_ca_file=str(pki / "ca.crt"))
    system_ca = MqttBridge(host="127.0.0.1", port=broker.port, site="s2", tls=True,
                           reconnect_max_s=0.5)
    task = await running(bridge)
    other = await running(system_ca)
    try:
        await wait_until(lambda: bridge.connected, 10, "TLS connection with our CA")
        await sub.start()
        await wait_until(lambda: bool(sub.messages(f"{BASE}/status")), 10, "subscribed")
        bridge.publish("schedule", {"status": "optimal"}, qos=1, retain=True)
        await wait_until(lambda: bool(sub.messages(f"{BASE}/schedule")), 10, "message through")
        await wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, 10,
                         "the system's CAs do not know ours")
        assert not system_ca.connected
    finally:
        await stop(task)
        await stop(other)
        await sub.stop()
        await broker.stop()
    assert sub.messages(f"{BASE}/schedule")[0]["status"] == "optimal"


async def test_d_tls_client_certificate_and_insecure_hostname(
        tmp_path: Path, pki_elsewhere: Path) -> None:
    """A broker that requires client certificates takes ours; a server certificate for
    another name is refused unless ``tls_insecure`` (which still checks the CA)."""
    pki = pki_elsewhere
    broker = tls_broker(tmp_path / "broker", pki, client_certs=True)
    await broker.start()
    common = {"host": "127.0.0.1", "port": broker.port, "site": SITE, "tls": True,
              "tls_ca_file": str(pki / "ca.crt"), "reconnect_max_s": 0.5}
    cert = {"tls_cert_file": str(pki / "client.crt"), "tls_key_file": str(pki / "client.key")}
    try:
        assert await _connects(MqttBridge(**common, **cert, tls_insecure=True), 10)  # type: ignore[arg-type]
        assert not await _connects(MqttBridge(**common, tls_insecure=True), 1.5)  # type: ignore[arg-type]
        assert not await _connects(MqttBridge(**common, **cert), 1.5)  # type: ignore[arg-type]
        system_ca = {**common, "tls_ca_file": None}
        assert not await _connects(MqttBridge(**system_ca, **cert, tls_insecure=True), 1.5)  # type: ignore[arg-type]
    finally:
        await broker.stop()


async def test_e_commands_reach_on_command_but_our_acks_do_not(broker: Mosquitto) -> None:
    pub = require_tool("mosquitto_pub", "mosquitto-clients")
    got: list[tuple[str, bytes]] = []

    async def on_command(subtopic: str, payload: bytes) -> None:
        got.append((subtopic, payload))
        if subtopic == "boom":
            raise RuntimeError("a handler's bug")

    async def mosquitto_pub(topic: str, message: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            pub, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic,
            "-m", message)
        assert await asyncio.wait_for(proc.wait(), 10) == 0

    bridge = MqttBridge(host="127.0.0.1", port=broker.port, site=SITE, on_command=on_command,
                        reconnect_max_s=0.5)
    task = await running(bridge)
    cap = '{"export_cap_w": 3.0e7, "id": "c1"}'
    try:
        await wait_until(lambda: bridge.subscribed, 10, "subscribed to cmd/#")
        await mosquitto_pub(f"{BASE}/cmd/cap/ack", '{"ok": true}')
        await mosquitto_pub(f"{BASE}/cmd/boom", "{}")
        await mosquitto_pub(f"{BASE}/cmd/cap", cap)
        await wait_until(lambda: len(got) >= 2, 10, "commands received")
        await asyncio.sleep(0.3)  # nothing else is on its way
        assert got == [("boom", b"{}"), ("cap", cap.encode())]
        # after a reconnect the bridge subscribes again
        await broker.stop()
        await wait_until(lambda: not bridge.connected, 10, "disconnected")
        await broker.start()
        await wait_until(lambda: bridge.subscribed, 10, "subscribed again")
        await mosquitto_pub(f"{BASE}/cmd/mode/set", '{"mode": "auto"}')
        await wait_until(lambda: len(got) == 3, 10, "command after the reconnect")
    finally:
        await stop(task)
    assert got[2] == ("mode/set", b'{"mode": "auto"}')


async def test_e_a_stable_client_id_keeps_commands_sent_while_the_bridge_is_away(
        broker: Mosquitto) -> None:
    pub = require_tool("mosquitto_pub", "mosquitto-clients")
    got: list[str] = []

    async def on_command(subtopic: str, payload: bytes) -> None:
        got.append(subtopic)

    def bridge() -> MqttBridge:
        return MqttBridge(host="127.0.0.1", port=broker.port, site=SITE,
                          client_id="vpp-s1-test", on_command=on_command)

    first = await running(b1 := bridge())
    try:
        await wait_until(lambda: b1.subscribed, 10, "subscribed")
    finally:
        await stop(first)  # away: the broker keeps the session and queues for it
    proc = await asyncio.create_subprocess_exec(
        pub, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", f"{BASE}/cmd/cap",
        "-m", "{}")
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    second = await running(bridge())
    try:
        await wait_until(lambda: got == ["cap"], 10, "the queued command")
    finally:
        await stop(second)


async def test_e_a_command_not_yet_handled_when_the_bridge_dies_comes_again(
        broker: Mosquitto) -> None:
    """Acknowledged to the broker only once handled: the first bridge takes the command and
    dies in its handler; the next one, on the same session, gets the command again, and
    the one it has handled is not sent a third time."""
    pub = require_tool("mosquitto_pub", "mosquitto-clients")
    got: list[tuple[str, bytes]] = []
    taken = asyncio.Event()

    async def dies(subtopic: str, payload: bytes) -> None:
        taken.set()
        await asyncio.Event().wait()  # the process dies before this returns

    async def handles(subtopic: str, payload: bytes) -> None:
        got.append((subtopic, payload))

    def bridge(on_command: Callable[[str, bytes], Any]) -> MqttBridge:
        return MqttBridge(host="127.0.0.1", port=broker.port, site=SITE,
                          client_id="vpp-s1-ack", on_command=on_command, reconnect_max_s=0.5)

    first = await running(b1 := bridge(dies))
    cap = '{"export_cap_w": 2.5e7, "id": "c7"}'
    try:
        await wait_until(lambda: b1.subscribed, 10, "subscribed")
        proc = await asyncio.create_subprocess_exec(
            pub, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t",
            f"{BASE}/cmd/cap", "-m", cap)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        await asyncio.wait_for(taken.wait(), 10)
    finally:
        await stop(first)
    second = await running(b2 := bridge(handles))
    try:
        await wait_until(lambda: got == [("cap", cap.encode())], 10, "the command again")
    finally:
        await stop(second)
    third = await running(b3 := bridge(handles))
    try:
        await wait_until(lambda: b3.subscribed, 10, "subscribed")
        await asyncio.sleep(1.0)  # a command sent again would be here by now
    finally:
        await stop(third)
    assert got == [("cap", cap.encode())] and b2 is not b3
