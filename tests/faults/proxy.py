"""A TCP proxy on loopback that a test can cut and mend: a network fault between the
controller and a real server (PostgreSQL, a broker) without stopping the server."""

from __future__ import annotations

import asyncio
import contextlib

from sim.modbus_server import stop_accepting
from vpp.broker import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._links: set[asyncio.Task[None]] = set()  # one per client connection
        self._cuts = 0  # a link that was connecting across a cut is cut when it is made

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        mine = [w]
        self._writers.add(w)
        cuts = self._cuts
        try:
            try:
                ur, uw = await asyncio.open_connection(*self.target)
            except OSError:
                return
            mine.append(uw)
            self._writers.add(uw)
            if self._cuts == cuts:
                await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        finally:
            for writer in mine:
                writer.transport.abort()
                self._writers.discard(writer)
            self._links.discard(task)

    async def cut(self) -> None:
        """Refuse new connections and break the open ones (the database is 'down')."""
        self._cuts += 1
        if self._server is not None:
            await stop_accepting(self._server)
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()

    async def mend(self) -> None:
        await self.start()

    async def close(self) -> None:
        """Cut, and wait until every link has closed its sockets."""
        await self.cut()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        await asyncio.sleep(0)  # the aborted transports close their sockets on this turn
