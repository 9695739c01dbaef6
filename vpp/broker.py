"""The embedded MQTT broker (amqtt), for running without Mosquitto."""

from __future__ import annotations

import logging
import random
import socket
from pathlib import Path

from amqtt.broker import Broker

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` now, for servers to bind soon after, drawn
    at random below the OS's ephemeral range. A port from within it (what binding port 0
    gives) may meanwhile go to another process's outgoing connection or bind to port 0,
    and the server that was to listen on it finds it taken."""
    try:
        low = int(EPHEMERAL_RANGE_FILE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default range starts here, and so does the IANA's at 49152
    pool = range(max(1024, low - 16384), low)
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(100 * n):
        port = rng.choice(pool)
        if port not in ports and port_is_free(host, port):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise OSError(f"no {n} free TCP ports on {host} in {pool.start}-{pool.stop - 1}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now. Servers bind with SO_REUSEADDR, so
    connections of the last minute in TIME_WAIT (a scrape, a restart) do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker on host:port, anonymous, for the demo and tests."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 1884) -> None:
        self.host = host
        self.port = port if port else free_port(host)
        self._broker: Broker | None = None

    async def start(self) -> None:
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}},
        })
        await self._broker.start()

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"
