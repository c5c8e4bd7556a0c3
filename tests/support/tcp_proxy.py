"""A TCP proxy on loopback that can make the network go silent, for partition tests.

`silence()` stops forwarding bytes on every connection, open or new, without closing any
socket: what a client sees when a NAT entry or a load balancer loses its state. `heal()`
makes new connections work again; the ones that went silent stay silent (and open), as
they would after such a failure, until `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Connection:
    sockets: list[asyncio.StreamWriter] = field(default_factory=list)
    silent: bool = False


class SilenceableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._silent = False
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        """Listen on 127.0.0.1; return the port."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def silence(self) -> None:
        def apply() -> None:
            self._silent = True
            for connection in self._connections:
                connection.silent = True
        self._loop.call_soon_threadsafe(apply)

    def heal(self) -> None:
        def apply() -> None:
            self._silent = False
        self._loop.call_soon_threadsafe(apply)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for connection in self._connections:
                for writer in connection.sockets:
                    writer.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(sockets=[writer], silent=self._silent)
        self._connections.add(connection)
        if connection.silent:
            return  # accepted, never answered, never closed
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._connections.discard(connection)
            return
        connection.sockets.append(up_writer)
        await asyncio.gather(self._pump(reader, up_writer, connection),
                             self._pump(up_reader, writer, connection),
                             return_exceptions=True)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    connection: _Connection) -> None:
        while not connection.silent:
            data = await reader.read(65536)
            if connection.silent:
                return  # swallow it, keep both sockets open
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
