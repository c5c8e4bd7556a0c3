"""The API adapter: the few Kubernetes calls the operator makes, behind a typed Protocol.

Only writes and the rare read a 409 needs go through here; everything the operator decides on
comes from its watches (see `world.py`). Every call has a deadline (apiclient.py), and
`Throttle` caps their rate (settings `api_qps`, `api_burst`), so a burst of thousands of
tasks does not flood the API server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings

T = TypeVar("T")


class KubeApi(Protocol):
    """What the operator asks of the API server (a fake in unit tests records it)."""

    def create(self, manifest: dict[str, Any]) -> bool:
        """True if created now; False if an object of that name exists already."""

    def owner_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The EvaluationTask uid owning an existing child; "" when it is gone."""

    def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def delete_job(self, namespace: str, name: str) -> None: ...


def api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


class Throttle:
    """A token bucket shared by the worker threads: at most `qps` calls a second on average,
    `burst` at once."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.qps, self.burst, self.clock = qps, burst, clock
        self.tokens = float(burst)
        self.updated = clock()
        self.lock = threading.Lock()

    def delay(self) -> float:
        """Take a token; return how long to wait before using it."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.qps)
            self.updated = now
            self.tokens -= 1
            return 0.0 if self.tokens >= 0 else -self.tokens / self.qps

    def wait(self) -> None:
        pause = self.delay()
        if pause > 0:
            time.sleep(pause)


# Writes whose answers the operator does not read: their bodies are skipped, not turned into
# the client's model objects (for a Job, more CPU than the request itself; the watches
# deliver the object anyway). Errors still raise ApiException.
RAW: dict[str, Any] = {"_preload_content": False}


def _discard(response: Any) -> None:
    """Read the unread answer and give its connection back to the pool."""
    response.read()
    response.release_conn()


class Kube:
    """`KubeApi` on the official client: blocking calls, run by `Api` in its worker threads."""

    def __init__(self, api_client: Any, settings: OperatorSettings) -> None:
        # One pooled connection per worker thread: more would idle, fewer would queue.
        api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = settings.api_workers
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.throttle = Throttle(settings.api_qps, settings.api_burst)

    def create(self, manifest: dict[str, Any]) -> bool:
        namespace = manifest["metadata"]["namespace"]
        self.throttle.wait()
        try:
            if manifest["kind"] == "Job":
                _discard(self.batch.create_namespaced_job(namespace, manifest, **RAW))
            else:
                _discard(self.core.create_namespaced_config_map(namespace, manifest, **RAW))
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def owner_uid(self, kind: str, namespace: str, name: str) -> str | None:
        self.throttle.wait()
        try:
            if kind == "Job":
                obj = self.batch.read_namespaced_job(name, namespace)
            else:
                obj = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return ""
            raise
        for owner in obj.metadata.owner_references or []:
            if owner.kind == naming.KIND:
                return str(owner.uid)
        return None

    def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.throttle.wait()
        try:
            _discard(self.custom.patch_namespaced_custom_object_status(
                naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name,
                {"status": status}, **RAW))
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing left to report on
                raise

    def delete_job(self, namespace: str, name: str) -> None:
        self.throttle.wait()
        try:
            _discard(self.batch.delete_namespaced_job(name, namespace,
                                                      propagation_policy="Background", **RAW))
        except ApiException as error:
            if error.status != 404:
                raise


class Api:
    """Runs blocking `KubeApi` (and S3) calls on a fixed pool of `api_workers` threads, so the
    event loop never blocks and the number of calls in flight is bounded by design."""

    def __init__(self, kube: KubeApi, workers: int) -> None:
        self.kube = kube
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api")

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
