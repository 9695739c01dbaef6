"""Everything around a controller: broker, MQTT bridge, storage, metrics, API.

Used by ``vpp run`` (real time, real devices) and ``vpp demo`` (simulated plant).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from vpp import __version__
from vpp.api import ApiServer, create_app
from vpp.auth import Tokens
from vpp.broker import EmbeddedBroker, port_is_free
from vpp.commands import Commands, MqttCommands
from vpp.config import ConfigError, SiteConfig, load_config, mask_url
from vpp.controller import Clock, Controller
from vpp.metrics import Metrics
from vpp.mqtt import MqttBridge
from vpp.storage import Storage

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    base = Path.home() / ".local" / "share" / "county-vpp"
    base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass
class Urls:
    api: str = ""
    metrics: str = ""
    mqtt: str = ""
    database: str = ""


class PortTakenError(OSError):
    """A server port of the configuration is held by another process."""


class Services:
    """Starts a controller with its interfaces; use as an async context manager.

    A configured port that another process holds stops the start with ``PortTakenError``, or,
    with ``move_taken_ports`` (the demo), is replaced by a free one."""

    def __init__(self, config: SiteConfig, *, clock: Clock, control_interval_s: float | None = None,
                 ephemeral_ports: bool = False, move_taken_ports: bool = False,
                 data_dir: Path | None = None, history: pd.DataFrame | None = None,
                 weather_issues: list[pd.DataFrame] | None = None,
                 oracle: Callable[[datetime, int], dict[str, np.ndarray]] | None = None) -> None:
        self.config = config
        self.oracle = oracle  # comparison runs: the planner is shown the actuals
        self.clock = clock
        self.control_interval_s = control_interval_s
        self.ephemeral_ports = ephemeral_ports
        self.move_taken_ports = move_taken_ports
        self.data_dir = data_dir
        self.history = history
        self.weather_issues = weather_issues or []
        self.urls = Urls()
        self.broker: EmbeddedBroker | None = None
        self.mqtt: MqttBridge | None = None
        self.storage: Storage | None = None
        self.api: ApiServer | None = None
        self.controller: Controller | None = None
        self.tokens: Tokens | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._control_task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def _port(self, field: str, host: str, port: int) -> int:
        """The port to serve ``field`` on: 0 (any) for ephemeral ports."""
        if self.ephemeral_ports:
            return 0
        if not port or port_is_free(host, port):
            return port
        if self.move_taken_ports:
            log.warning("%s %d on %s is in use: a free port is taken instead", field, port, host)
            return 0
        raise PortTakenError(f"{field} = {port}: {host}:{port} is in use by another process; "
                             f"stop it, or give {field} another port in the configuration")

    async def __aenter__(self) -> Services:
        try:
            return await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)  # undo what was started
            raise

    async def _start(self) -> Services:
        cfg = self.config
        data_dir: Path | None = None
        if cfg.storage.url is None or cfg.mqtt.enabled:  # SQLite storage, the MQTT outbox
            if self.data_dir is not None:
                data_dir = self.data_dir
            elif cfg.storage.data_dir is not None:
                data_dir = Path(cfg.storage.data_dir)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="vpp-")
                data_dir = Path(self._tmp.name)
            data_dir.mkdir(parents=True, exist_ok=True)
        if cfg.mqtt.enabled:
            assert data_dir is not None
            mq = cfg.mqtt
            host, port = mq.host, mq.port
            if mq.embedded:
                self.broker = EmbeddedBroker(host=host, port=self._port("mqtt.port", host, port))
                await self.broker.start()
                port = self.broker.port
            self.mqtt = MqttBridge(
                host=host, port=port, site=cfg.site.id, prefix=mq.topic_prefix,
                username=mq.username,
                password=mq.password.get_secret_value() if mq.password else None,
                tls=mq.tls, tls_ca_file=mq.tls_ca_file, tls_cert_file=mq.tls_cert_file,
                tls_key_file=mq.tls_key_file, tls_insecure=mq.tls_insecure,
                client_id=mq.client_id, outbox_path=data_dir / "mqtt-outbox.sqlite")
            topics = f"{cfg.mqtt.topic_prefix}/{cfg.site.id}/#"
            self.urls.mqtt = f"mqtt://{host}:{port}  (topics {topics})"
            self._tasks.append(asyncio.create_task(self.mqtt.run(), name="vpp.mqtt"))
        url = cfg.storage.connect_url()
        if url is None:
            assert data_dir is not None
            url = f"sqlite:///{data_dir / 'vpp.sqlite'}"
        self.storage = await asyncio.to_thread(partial(Storage, url,
                                                       keep_days=cfg.storage.keep_days))
        self.urls.database = mask_url(url)
        metrics = Metrics(site=cfg.site.id, assets=[(a.id, a.kind) for a in cfg.assets],
                          version=__version__) if cfg.metrics.enabled else None
        self.controller = Controller(cfg, clock=self.clock, storage=self.storage, mqtt=self.mqtt,
                                     metrics=metrics, control_interval_s=self.control_interval_s)
        self.controller.oracle = self.oracle
        if self.history is not None:
            self.controller.seed_history(self.history)
        for issue in self.weather_issues:  # the weather forecasts archived before the start
            self.controller.weather.add(issue)
        self.tokens = Tokens(self.storage)
        if self.mqtt is not None:
            self.mqtt.on_command = MqttCommands(Commands(self.controller), self.tokens,
                                                self.mqtt)
        self.api = ApiServer(create_app(self.controller, self.tokens), host=cfg.api.host,
                             port=self._port("api.port", cfg.api.host, cfg.api.port))
        await self.api.start()
        self.urls.api = f"{self.api.url}/api/v1/health"
        self.urls.metrics = f"{self.api.url}/metrics"
        self._control_task = asyncio.create_task(self.controller.run(self.stopping),
                                                 name="vpp.controller")
        return self

    async def issue_token(self, role: str, name: str) -> str:
        """A new token (tests, the demo's console link); shown once, stored hashed."""
        assert self.tokens is not None
        assert self.controller is not None
        return await asyncio.to_thread(self.tokens.create, name, role,
                                       self.controller.clock.now())

    async def reload(self, path: Path) -> bool:
        """Re-read the configuration file (``vpp run`` on SIGHUP). A file with an error
        changes nothing: the problems are logged and alarm ``config_reload_failed`` is
        raised until a good file is read. Returns whether the file was good."""
        ctrl = self.controller
        assert ctrl is not None
        try:
            new = await asyncio.to_thread(load_config, path)
            if new.site.id != ctrl.config.site.id:
                raise ConfigError(str(path), [
                    f"site.id: {new.site.id!r} is not this controller's site "
                    f"{ctrl.config.site.id!r}"])
        except ConfigError as exc:
            log.error("configuration reload refused, nothing changed: %s", exc)
            ctrl.set_alarm("config_reload_failed", True, f"{path}: {len(exc.problems)} "
                           f"problem(s): {'; '.join(exc.problems)[:500]}")
            return False
        applied, restart = ctrl.reload(new)
        ctrl.set_alarm("config_reload_failed", False, "")
        log.warning("configuration reloaded from %s: applied %s%s", path, applied or "nothing",
                    f"; needing a restart: {restart}" if restart else "")
        return True

    def check(self) -> None:
        """Raise the error of a part that died."""
        for t in [*self._tasks, self._control_task]:
            if t is not None and t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def __aexit__(self, *exc: object) -> None:
        self.stopping.set()
        if self._control_task is not None:
            await asyncio.gather(self._control_task, return_exceptions=True)
        if self.api is not None:
            await self.api.stop()
        if self.mqtt is not None:
            await self.mqtt.drain(timeout_s=2.0)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.mqtt is not None:
            self.mqtt.close()  # the outbox keeps what was not acknowledged for the next start
        if self.broker is not None:
            await self.broker.stop()
        if self.storage is not None:
            await asyncio.to_thread(self.storage.close)
        if self._tmp is not None:
            self._tmp.cleanup()


async def serve(config: SiteConfig, console: Console, *, clock: Clock | None = None,
                config_path: Path | None = None) -> None:
    """``vpp run``: the controller until cancelled, in real time or on ``clock`` (a
    simulator's), with the control step the clock's speed allows; SIGHUP re-reads
    ``config_path``."""
    from sim.clock import WallClock
    from vpp.demo import auto_control_interval_s
    # the default data directory holds SQLite storage and, with any storage, the MQTT outbox
    data_dir = None if config.storage.data_dir else default_data_dir()
    clock = clock or WallClock()
    async with Services(config, clock=clock, data_dir=data_dir,
                        control_interval_s=auto_control_interval_s(config, clock.speed)) as svc:
        console.print(f"controller for site [bold]{config.site.id}[/] running")
        console.print(f"  API      {svc.urls.api}")
        console.print(f"  metrics  {svc.urls.metrics}")
        console.print(f"  MQTT     {svc.urls.mqtt or 'disabled'}")
        console.print(f"  storage  {svc.urls.database}")
        assert svc.storage is not None
        if not await asyncio.to_thread(svc.storage.list_tokens):
            console.print("  [yellow]no API tokens yet[/]: create one with "
                          "`vpp token create --role admin --name <who> -c <config>`")
        if config_path is not None:
            reloads: set[asyncio.Task[bool]] = set()

            def on_hup() -> None:
                t = asyncio.create_task(svc.reload(config_path))
                reloads.add(t)
                t.add_done_callback(reloads.discard)
            with contextlib.suppress(NotImplementedError, AttributeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
        while True:
            svc.check()
            await asyncio.sleep(1.0)
