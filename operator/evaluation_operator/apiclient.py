"""The operator's own REST client for the API server, and deadlines on every conversation with
it, so a silent network partition (no reset, no close: a dead NAT entry, a failed-over load
balancer) is noticed and survived.

Why not the official `kubernetes` client: it costs ~50 MiB of RSS just to import (its
generated models), for the handful of calls the operator makes (kube.py, leader.py), and
the operator never looks at its models. `RestClient` is urllib3 (a pooled HTTP client)
and JSON, and `__main__.py` keeps the official client out of the operator's process.

Who the operator is: `login()`, Kopf's own public login functions, used by Kopf itself too
(handlers.py registers it), so both talk to the same server as the same identity.

Without deadlines a request on a connection that went silent waits forever: a handler thread
hangs, a watch never delivers another event, and the operator looks alive while doing
nothing. Both clients get deadlines from the settings:

* `RestClient` (`Kube`, the Lease): every call gets a (connect, read) timeout unless it passes
  its own; after a timeout the pooled connections are dropped (they may all lead into the
  same silence) and the call is tried once more on a new one. Every call the operator makes
  may be repeated: creates answer 409 when the first one got through, patches and deletes
  are idempotent.
* Kopf's watches and its own requests (`configure_kopf`): a server-side watch timeout, a
  client-side one a little longer (a watch the server should have ended but did not is
  dead), connect timeouts, and a total for each short request.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import kopf
import urllib3

from evaluation_operator import exec_credentials
from evaluation_operator.config import OperatorSettings

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return importlib.metadata.version("evaluation-operator")
    except importlib.metadata.PackageNotFoundError:  # the image runs from a source tree
        return "unknown"


# How the operator's own calls show in the API server's audit log (bench/operator_scale.py
# counts them by it); Kopf's say `kopf/<version>`.
USER_AGENT = f"evaluation-operator/{_version()}"

# A (connect, read) pair, or one number for the whole request.
Timeout = float | tuple[float, float]


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"({status}) {reason}: {self.message}")

    @property
    def status_object(self) -> dict[str, Any]:
        """The `Status` the API server sends with an error ({} when the body is not one)."""
        try:
            status = json.loads(self.body or "{}")
        except ValueError:
            return {}
        return status if isinstance(status, dict) else {}

    @property
    def message(self) -> str:
        return str(self.status_object.get("message") or self.reason)

    @property
    def details(self) -> dict[str, Any]:
        details = self.status_object.get("details")
        return details if isinstance(details, dict) else {}


def login(settings: kopf.OperatorSettings | None = None, **_: Any) -> kopf.ConnectionInfo:
    """In-cluster credentials (the operator's ServiceAccount), else the kubeconfig: Kopf's
    own login functions, plus the kubeconfig user's exec plugin (exec_credentials.py).
    Also Kopf's login handler (handlers.py), hence the signature."""
    settings = settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        # Kopf names the API server `kubernetes.default.svc`, which needs cluster DNS; the
        # address Kubernetes puts in every pod's environment does not (client-go's choice).
        host, port = (os.environ.get("KUBERNETES_SERVICE_HOST"),
                      os.environ.get("KUBERNETES_SERVICE_PORT"))
        if host and port:
            host = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
        return info
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("neither a ServiceAccount token "
                              "(/var/run/secrets/kubernetes.io/serviceaccount) nor a kubeconfig "
                              "($KUBECONFIG, ~/.kube/config) to log in with")
    return exec_credentials.with_exec_credentials(info)


def _is_timeout(error: BaseException) -> bool:
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        return isinstance(error.reason, urllib3.exceptions.TimeoutError)
    return isinstance(error, urllib3.exceptions.TimeoutError)


def _deadline(timeout: Timeout) -> urllib3.Timeout:
    if isinstance(timeout, tuple):
        return urllib3.Timeout(connect=timeout[0], read=timeout[1])
    return urllib3.Timeout(total=timeout)


def path(*segments: str) -> str:
    """A URL path from segments (names are quoted)."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


class RestClient:
    """JSON over pooled HTTP connections to the API server, every request with a deadline.

    Errors: `ApiError` for an error status; urllib3's exceptions when there is no answer.
    """

    # A read timeout is final here (read=0): urllib3 would otherwise try a GET four times on
    # connections that may all be dead. One connect retry covers a stale socket.
    RETRIES = urllib3.Retry(total=2, connect=1, read=0, redirect=2, status=0,
                            raise_on_status=False)

    def __init__(self, credentials: Callable[[], kopf.ConnectionInfo], timeout: Timeout,
                 pool_size: int = 4) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self.pool_size = pool_size
        self.lock = threading.Lock()
        self._connect(credentials())

    def _connect(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json",
                        **info.as_http_headers()}
        options: dict[str, Any] = {"maxsize": self.pool_size, "retries": self.RETRIES}
        if self.server.startswith("https:"):
            options["ssl_context"] = info.as_ssl_context()
            if info.insecure:
                options.update(cert_reqs="CERT_NONE", assert_hostname=False)
        self.pool: urllib3.PoolManager = (
            urllib3.ProxyManager(info.proxy_url, **options) if info.proxy_url
            else urllib3.PoolManager(**options))

    def request(self, method: str, url_path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: Timeout | None = None) -> bytes:
        """The answer's body; raises `ApiError` for a status >= 400."""
        url = self.server + url_path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        deadline = _deadline(timeout or self.timeout)
        response = self._send_retrying(method, url, data, content_type, deadline)
        if response.status == 401:
            # The token rotated (a projected ServiceAccount token) or expired: log in again,
            # as Kopf does on a 401, and try once with the new credentials.
            with self.lock:
                self._connect(self.credentials())
            response = self._send_retrying(method, url, data, content_type, deadline)
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "",
                           response.data.decode("utf-8", errors="replace"))
        return bytes(response.data)

    def json(self, method: str, url_path: str, **options: Any) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.request(method, url_path, **options))
        return answer

    def _send_retrying(self, method: str, url: str, data: bytes | None, content_type: str,
                       deadline: urllib3.Timeout) -> urllib3.BaseHTTPResponse:
        try:
            return self._send(method, url, data, content_type, deadline)
        except urllib3.exceptions.HTTPError as error:
            if not _is_timeout(error):
                raise
            log.warning("%s %s timed out (%s); retrying once on a new connection",
                        method, url.split("?", 1)[0], error)
            self.pool.clear()
            return self._send(method, url, data, content_type, deadline)

    def _send(self, method: str, url: str, data: bytes | None, content_type: str,
              deadline: urllib3.Timeout) -> urllib3.BaseHTTPResponse:
        headers = self.headers if data is None else {**self.headers,
                                                     "Content-Type": content_type}
        return self.pool.request(method, url, body=data, headers=headers, timeout=deadline)


def rest_client(settings: OperatorSettings, pool_size: int = 4,
                timeout: Timeout | None = None) -> RestClient:
    return RestClient(login, timeout or (settings.api_connect_timeout_seconds,
                                         settings.api_timeout_seconds), pool_size)


def configure_kopf(kopf_settings: Any, settings: OperatorSettings) -> None:
    """Timeouts on every Kopf watch and request (`kopf.OperatorSettings`)."""
    watching, networking = kopf_settings.watching, kopf_settings.networking
    watching.server_timeout = settings.watch_timeout_seconds
    watching.client_timeout = settings.watch_client_timeout_seconds
    watching.connect_timeout = settings.api_connect_timeout_seconds
    networking.connect_timeout = settings.api_connect_timeout_seconds
    networking.request_timeout = settings.api_timeout_seconds
