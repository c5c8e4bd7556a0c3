"""The API adapter: the few Kubernetes calls the operator makes, behind a typed Protocol.

Only writes and the rare read a 409 needs go through here; everything the operator decides on
comes from its watches (see `world.py`). Every call has a deadline (apiclient.py), and
`Throttle` caps their rate (settings `api_qps`, `api_burst`), so a burst of thousands of
tasks does not flood the API server.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings

T = TypeVar("T")
KUEUE_GROUP, KUEUE_PLURAL = "kueue.x-k8s.io", "localqueues"
KUEUE_VERSIONS = ("v1beta2", "v1beta1")  # newest first; Kueue 0.17 serves both


FAILED_CREATE_EVENTS_LIMIT = 500


@dataclass(frozen=True)
class FailedCreate:
    """The Job controller's latest FailedCreate event of a Job, and since when it fails."""

    message: str
    since: datetime.datetime | None


class Found(enum.Enum):
    """Whether an object a task names exists, as far as the operator may tell."""

    YES = "yes"
    NO = "no"
    NO_API = "no-api"  # the cluster does not serve this kind (Kueue not installed)
    UNKNOWN = "unknown"  # not allowed to look (an older chart's RBAC)


class KubeApi(Protocol):
    """What the operator asks of the API server (a fake in unit tests records it)."""

    def create(self, manifest: dict[str, Any]) -> bool:
        """True if created now; False if an object of that name exists already."""

    def owner_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The EvaluationTask uid owning an existing child; "" when it is gone."""

    def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def delete_job(self, namespace: str, name: str) -> None: ...

    def configmap_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The keys of a ConfigMap; None when it does not exist. Raises on 403."""

    def failed_creates(self, namespace: str) -> dict[str, FailedCreate]:
        """The Jobs of a namespace the Job controller cannot create pods for, by Job uid."""

    def local_queue(self, namespace: str, name: str) -> Found: ...


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


    def configmap_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        self.throttle.wait()
        try:
            found = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return frozenset({*(found.data or {}), *(found.binary_data or {})})

    def failed_creates(self, namespace: str) -> dict[str, FailedCreate]:
        # One list for the whole namespace, not one per Job: a burst of tasks whose pods
        # come late costs one call (reconcile.py caches it), whatever the number of tasks.
        self.throttle.wait()
        listed = self.core.list_namespaced_event(
            namespace, field_selector="involvedObject.kind=Job,reason=FailedCreate",
            limit=FAILED_CREATE_EVENTS_LIMIT)

        def when(event: Any) -> datetime.datetime:
            stamp = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
            return stamp or datetime.datetime.min.replace(tzinfo=datetime.UTC)

        found: dict[str, FailedCreate] = {}
        for event in sorted(listed.items, key=when):  # the newest message wins
            uid = str(event.involved_object.uid or "")
            earlier = found.get(uid)
            since = event.first_timestamp or when(event)
            found[uid] = FailedCreate(
                str(event.message or "").removeprefix("Error creating: "),
                min(earlier.since, since) if earlier and earlier.since else since)
        return found

    def local_queue(self, namespace: str, name: str) -> Found:
        for version in KUEUE_VERSIONS:
            self.throttle.wait()
            try:
                self.custom.get_namespaced_custom_object(KUEUE_GROUP, version, namespace,
                                                         KUEUE_PLURAL, name)
            except ApiException as error:
                if error.status == 404 and not _names_object(error, name):
                    continue  # this version is not served: try the next one
                if error.status == 404:
                    return Found.NO
                if error.status == 403:
                    return Found.UNKNOWN
                raise
            return Found.YES
        return Found.NO_API


def _names_object(error: ApiException, name: str) -> bool:
    """A 404 for a missing object names it in the Status details; a 404 for a resource the
    API server does not serve at all does not."""
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except ValueError:
        return False
    return bool(details.get("name") == name)


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
