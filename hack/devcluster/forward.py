"""A TCP forwarder: what pods on a real node use to reach a loopback-only API server.

The API server binds 127.0.0.1 and there is no kube-proxy, so the `kubernetes` Service IP does
not route from a pod. The forwarder listens on the node bridge's gateway address (reachable
only from the node's pods and the host itself) and relays bytes to the API server; TLS passes
through untouched (the serving certificate names every slot's gateway, see devcluster.cluster).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class TcpForwarder:
    listen: tuple[str, int]
    target: tuple[str, int]
    _server: socket.socket | None = None
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("forwarder not started")
        port: int = self._server.getsockname()[1]
        return port

    def start(self) -> TcpForwarder:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, name="api-forwarder", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.close()
            self._open.clear()

    def _accept(self) -> None:
        server = self._server
        while server is not None:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            finished: list[bool] = []
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, finished), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, finished: list[bool]) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            finished.append(True)
            if len(finished) < 2:
                return
            for sock in (source, sink):
                self._open.discard(sock)
                sock.close()
