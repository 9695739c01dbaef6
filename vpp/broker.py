"""The embedded MQTT broker (amqtt), for running without Mosquitto."""

from __future__ import annotations

import logging
import socket

from amqtt.broker import Broker


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
