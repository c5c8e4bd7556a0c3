"""The partition proxy of the integration tests does what they rely on."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.support.tcp_proxy import SilenceableProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[SilenceableProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = SilenceableProxy("127.0.0.1", server.server_address[1])
    proxy.start()
    yield proxy
    proxy.stop()
    server.shutdown()
    server.server_close()


def _echo(port: int, data: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(data)
        return sock.recv(1024)


def test_forwards_goes_silent_without_closing_and_heals(proxy: SilenceableProxy) -> None:
    assert _echo(proxy.port) == b"ping"
    old = socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    old.sendall(b"a")
    assert old.recv(16) == b"a"
    proxy.silence()
    old.sendall(b"b")
    with pytest.raises(TimeoutError):
        old.recv(16)  # no answer, and no close either
    with pytest.raises(TimeoutError):
        _echo(proxy.port)  # new connections are accepted and never answered
    proxy.heal()
    assert _echo(proxy.port) == b"ping"
    old.sendall(b"c")
    with pytest.raises(TimeoutError):
        old.recv(16)  # what went silent stays silent
    old.close()
