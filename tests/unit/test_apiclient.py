"""Every API request has a deadline: a server that accepts and then says nothing costs a
bounded time, not a thread forever."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import kopf
import pytest
import urllib3
from evaluation_operator.apiclient import DeadlineApiClient, configure_kopf
from evaluation_operator.config import OperatorSettings
from kubernetes import client


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """Accepts connections and never answers (nor closes them)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join(5)
    for sock in [*accepted, listener]:
        sock.close()


def test_a_silent_api_server_costs_two_timeouts_not_forever(
    silent_server: tuple[int, list[socket.socket]],
) -> None:
    port, accepted = silent_server
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    api = client.CoreV1Api(DeadlineApiClient(configuration, connect_timeout=1,
                                             read_timeout=1))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        api.list_namespaced_pod("default")
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 6, elapsed
    assert len(accepted) == 2, "the retry must use a new connection"


def test_kopf_watches_and_requests_get_the_configured_deadlines() -> None:
    ours = OperatorSettings.from_env({"EVAL_API_TIMEOUT_SECONDS": "12",
                                      "EVAL_API_CONNECT_TIMEOUT_SECONDS": "3",
                                      "EVAL_WATCH_TIMEOUT_SECONDS": "20"})
    settings = kopf.OperatorSettings()
    configure_kopf(settings, ours)
    assert (settings.watching.server_timeout, settings.watching.client_timeout,
            settings.watching.connect_timeout) == (20, 26, 3)
    assert (settings.networking.request_timeout, settings.networking.connect_timeout) == (12, 3)
