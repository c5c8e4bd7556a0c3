"""Kopf's connections to the API server: a bounded pool.

Kopf opens its aiohttp session with an unlimited connector (kopf/_cogs/clients/auth.py,
`TCPConnector(limit=0)`), so every request in flight gets a connection of its own. Each TLS
connection costs ~320 KiB (asyncio's SSL protocol reads into a 256 KiB buffer of its own,
plus OpenSSL's state), and aiohttp keeps it pooled for 15 s after use. Deleting 1,000 tasks
at once (Kopf removes each finalizer and posts each `ResultsPurged` Event, all
concurrently) opened ~950 connections and took the operator from 236 to 565 MiB
(bench/README.md). With the pool capped, requests beyond the cap wait for a free connection:
a waiting request costs a future, not a connection.

Watches hold their connection for as long as they stream, so the cap is the requests' share
(`kopf_connections`) plus one per watch. Kopf builds its session in `APIContext`, which has
no setting for this; `bound_kopf_connections` gives it a subclass that caps the connector
right after Kopf made it (tests/unit/test_connections.py pins this against Kopf's code).
"""

from __future__ import annotations

from typing import Any

from kopf._cogs.clients import auth as kopf_auth

from evaluation_operator.config import OperatorSettings

# What the operator watches: tasks, our Jobs, our pods (handlers.py), per namespace served.
WATCHED_RESOURCES = 3
# Kopf's own observers besides (CRDs for resource discovery, namespaces for patterns).
OBSERVER_WATCHES = 2


def connection_limit(settings: OperatorSettings) -> int:
    """The most connections Kopf may hold: its requests' share and one per watch. A watch
    counted short only delays requests until a watch ends (`watch_timeout_seconds`)."""
    namespaces = max(1, len(settings.namespaces))
    return settings.kopf_connections + WATCHED_RESOURCES * namespaces + OBSERVER_WATCHES


def bound_kopf_connections(limit: int) -> None:
    """From now on every session Kopf opens (at login and each re-login) holds at most
    `limit` connections."""
    original: type[Any] = getattr(kopf_auth.APIContext, "_unbounded", kopf_auth.APIContext)

    class BoundedAPIContext(original):  # type: ignore[misc]
        _unbounded = original

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            connector = self.session.connector
            if connector is not None and connector.limit == 0:  # Kopf's own, not a user's
                # aiohttp reads `_limit` on every acquire; it has no public setter.
                connector._limit = limit

    setattr(kopf_auth, "APIContext", BoundedAPIContext)  # noqa: B010 (looked up per call)
