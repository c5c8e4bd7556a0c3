"""Kopf's connection pool is bounded (connections.py): a burst of Kopf requests (finalizer
patches and Events of 1,000 deleted tasks) waits for connections instead of opening one each,
at ~320 KiB apiece."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from aiohttp import web
from evaluation_operator import connections
from evaluation_operator.config import OperatorSettings
from kopf._cogs.clients import auth as kopf_auth


def test_the_limit_is_the_requests_share_plus_one_connection_per_watch() -> None:
    everywhere = OperatorSettings(kopf_connections=16)
    two = OperatorSettings(kopf_connections=8, namespaces=("a", "b"))
    assert connections.connection_limit(everywhere) == 16 + 3 + connections.OBSERVER_WATCHES
    assert connections.connection_limit(two) == 8 + 3 * 2 + connections.OBSERVER_WATCHES


async def busiest(context_class: type[kopf_auth.APIContext], requests: int) -> int:
    """The most requests a Kopf session had in flight (each on its own connection)."""
    in_flight = peak = 0

    async def slow(_: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    context = context_class(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}"))
    try:
        async def one() -> int:
            async with context.session.get(f"http://127.0.0.1:{port}/") as response:
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(requests)))
        assert statuses == [200] * requests
    finally:
        await context.session.close()
        await runner.cleanup()
    return peak


def test_kopf_sessions_hold_at_most_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kopf's own class, even when handlers.py (which bounds it) was imported by another test.
    unbounded = getattr(kopf_auth.APIContext, "_unbounded", kopf_auth.APIContext)
    monkeypatch.setattr(kopf_auth, "APIContext", unbounded)
    assert asyncio.run(busiest(unbounded, 20)) == 20  # Kopf alone: a connection per request
    connections.bound_kopf_connections(4)
    connections.bound_kopf_connections(4)  # installed twice: still one bound, not nested
    bounded = kopf_auth.APIContext
    assert bounded is not unbounded and bounded.__mro__[1] is unbounded
    assert asyncio.run(busiest(bounded, 20)) == 4


def test_the_operator_bounds_what_kopf_holds_per_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation_operator import handlers, memory

    frozen: list[bool] = []
    monkeypatch.setattr(memory, "freeze_startup_heap", lambda: frozen.append(True))
    settings = kopf.OperatorSettings()
    configure: Any = handlers.configure  # Kopf's decorator types it as an activity
    configure(settings=settings)
    assert settings.watching.chunk_size == handlers.SETTINGS.list_chunk_size == 250
    assert settings.queueing.idle_timeout == handlers.WORKER_IDLE_SECONDS < 5
    assert kopf_auth.APIContext._unbounded is not kopf_auth.APIContext  # type: ignore[attr-defined]
    assert frozen == [True]  # the imports' objects leave the collector's oldest generation
