"""Deadlines on every conversation with the API server, so a silent network partition (no
reset, no close: a dead NAT entry, a failed-over load balancer) is noticed and survived.

Without them a request on a connection that went silent waits forever: a handler thread
hangs, a watch never delivers another event, and the operator looks alive while doing
nothing. Two clients talk to the API server and both get deadlines from the settings:

* the kubernetes client of `reconcile.Kube` (`DeadlineApiClient`): every call gets a
  (connect, read) `_request_timeout` unless it passes its own; after a timeout the pooled
  connections are dropped (they may all lead into the same silence) and the call is tried
  once more on a new one. Every call the operator makes may be repeated: creates answer 409
  when the first one got through, patches and deletes are idempotent.
* Kopf's watches and its own requests (`configure_kopf`): a server-side watch timeout, a
  client-side one a little longer (a watch the server should have ended but did not is
  dead), connect timeouts, and a total for each short request.
"""

from __future__ import annotations

import logging
from typing import Any

import urllib3
from kubernetes import client, config

from evaluation_operator.config import OperatorSettings

log = logging.getLogger(__name__)


def _is_timeout(error: BaseException) -> bool:
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        return isinstance(error.reason, urllib3.exceptions.TimeoutError)
    return isinstance(error, urllib3.exceptions.TimeoutError)


class DeadlineApiClient(client.ApiClient):  # type: ignore[misc]
    """A kubernetes ApiClient whose requests all have a deadline."""

    def __init__(self, configuration: client.Configuration, connect_timeout: float,
                 read_timeout: float) -> None:
        # A read timeout is final here (read=0): urllib3 would otherwise try a GET four
        # times on connections that may all be dead. One connect retry covers a stale socket.
        configuration.retries = urllib3.Retry(total=2, connect=1, read=0, redirect=2,
                                              status=0, raise_on_status=False)
        super().__init__(configuration)
        self.request_timeout = (connect_timeout, read_timeout)

    def request(self, method: str, url: str, query_params: Any = None, headers: Any = None,
                post_params: Any = None, body: Any = None, _preload_content: bool = True,
                _request_timeout: Any = None) -> Any:
        timeout = _request_timeout or self.request_timeout
        arguments = {"query_params": query_params, "headers": headers,
                     "post_params": post_params, "body": body,
                     "_preload_content": _preload_content, "_request_timeout": timeout}
        try:
            return super().request(method, url, **arguments)
        except urllib3.exceptions.HTTPError as error:
            if not _is_timeout(error):
                raise
            log.warning("%s %s timed out (%s); retrying once on a new connection",
                        method, url.split("?", 1)[0], error)
            self.rest_client.pool_manager.clear()
            return super().request(method, url, **arguments)


def api_client(settings: OperatorSettings) -> client.ApiClient:
    """In-cluster credentials (the operator's ServiceAccount), else the kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return DeadlineApiClient(configuration, settings.api_connect_timeout_seconds,
                             settings.api_timeout_seconds)


def configure_kopf(kopf_settings: Any, settings: OperatorSettings) -> None:
    """Timeouts on every Kopf watch and request (`kopf.OperatorSettings`)."""
    watching, networking = kopf_settings.watching, kopf_settings.networking
    watching.server_timeout = settings.watch_timeout_seconds
    watching.client_timeout = settings.watch_client_timeout_seconds
    watching.connect_timeout = settings.api_connect_timeout_seconds
    networking.connect_timeout = settings.api_connect_timeout_seconds
    networking.request_timeout = settings.api_timeout_seconds
