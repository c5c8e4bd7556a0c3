"""The API adapter: the few Kubernetes calls the operator makes, behind a typed Protocol.

Only writes and the rare read a 409 needs go through here; everything the operator decides on
comes from its watches (see `world.py`). Every call has a deadline (apiclient.py), and
`Throttle` caps their rate (settings `api_qps`, `api_burst`), so a burst of thousands of
tasks does not flood the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from evaluation_operator import naming
from evaluation_operator.apiclient import ApiError, RestClient, path
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


def api_message(error: ApiError) -> str:
    return error.message


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


class Kube:
    """`KubeApi` on `RestClient`: blocking calls, run by `Api` in its worker threads. Writes
    do not parse their answers (the watches deliver the objects anyway)."""

    def __init__(self, rest: RestClient, settings: OperatorSettings) -> None:
        self.rest = rest
        self.throttle = Throttle(settings.api_qps, settings.api_burst)

    def create(self, manifest: dict[str, Any]) -> bool:
        namespace = manifest["metadata"]["namespace"]
        self.throttle.wait()
        try:
            self.rest.request("POST", _collection(manifest["kind"], namespace), body=manifest)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    def owner_uid(self, kind: str, namespace: str, name: str) -> str | None:
        self.throttle.wait()
        try:
            obj = self.rest.json("GET", _collection(kind, namespace) + path(name))
        except ApiError as error:
            if error.status == 404:
                return ""
            raise
        for owner in obj["metadata"].get("ownerReferences") or []:
            if owner.get("kind") == naming.KIND:
                return str(owner.get("uid"))
        return None

    def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.throttle.wait()
        try:
            self.rest.request("PATCH", path("apis", naming.GROUP, naming.VERSION, "namespaces",
                                            namespace, naming.PLURAL, name, "status"),
                              body={"status": status}, content_type=MERGE_PATCH)
        except ApiError as error:
            if error.status != 404:  # deleted meanwhile: nothing left to report on
                raise

    def delete_job(self, namespace: str, name: str) -> None:
        self.throttle.wait()
        try:
            self.rest.request("DELETE", _collection("Job", namespace) + path(name),
                              query={"propagationPolicy": "Background"})
        except ApiError as error:
            if error.status != 404:
                raise

    def configmap_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        self.throttle.wait()
        try:
            found = self.rest.json("GET", _collection("ConfigMap", namespace) + path(name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return frozenset({*(found.get("data") or {}), *(found.get("binaryData") or {})})

    def failed_creates(self, namespace: str) -> dict[str, FailedCreate]:
        # One list for the whole namespace, not one per Job: a burst of tasks whose pods
        # come late costs one call (reconcile.py caches it), whatever the number of tasks.
        self.throttle.wait()
        listed = self.rest.json(
            "GET", path("api", "v1", "namespaces", namespace, "events"),
            query={"fieldSelector": "involvedObject.kind=Job,reason=FailedCreate",
                   "limit": FAILED_CREATE_EVENTS_LIMIT})
        return failed_creates_of(listed.get("items") or [])

    def local_queue(self, namespace: str, name: str) -> Found:
        for version in KUEUE_VERSIONS:
            self.throttle.wait()
            try:
                self.rest.request("GET", path("apis", KUEUE_GROUP, version, "namespaces",
                                              namespace, KUEUE_PLURAL, name))
            except ApiError as error:
                if error.status == 404 and not _names_object(error, name):
                    continue  # this version is not served: try the next one
                if error.status == 404:
                    return Found.NO
                if error.status == 403:
                    return Found.UNKNOWN
                raise
            return Found.YES
        return Found.NO_API


MERGE_PATCH = "application/merge-patch+json"
# (API path prefix, plural) of the kinds the operator creates.
COLLECTIONS = {"Job": (("apis", "batch", "v1"), "jobs"), "ConfigMap": (("api", "v1"), "configmaps"),
               "Event": (("api", "v1"), "events")}


def _collection(kind: str, namespace: str) -> str:
    prefix, plural = COLLECTIONS[kind]
    return path(*prefix, "namespaces", namespace, plural)


def _timestamp(value: Any) -> datetime.datetime | None:
    """A Time or MicroTime of the API server (RFC 3339, UTC)."""
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def failed_creates_of(events: list[dict[str, Any]]) -> dict[str, FailedCreate]:
    """FailedCreate Events by the uid of their Job: the newest message, since the earliest."""

    def when(event: dict[str, Any]) -> datetime.datetime:
        stamp = (_timestamp(event.get("lastTimestamp")) or _timestamp(event.get("eventTime"))
                 or _timestamp((event.get("metadata") or {}).get("creationTimestamp")))
        return stamp or datetime.datetime.min.replace(tzinfo=datetime.UTC)

    found: dict[str, FailedCreate] = {}
    for event in sorted(events, key=when):  # the newest message wins
        uid = str((event.get("involvedObject") or {}).get("uid") or "")
        earlier = found.get(uid)
        since = _timestamp(event.get("firstTimestamp")) or when(event)
        found[uid] = FailedCreate(
            str(event.get("message") or "").removeprefix("Error creating: "),
            min(earlier.since, since) if earlier and earlier.since else since)
    return found


def _names_object(error: ApiError, name: str) -> bool:
    """A 404 for a missing object names it in the Status details; a 404 for a resource the
    API server does not serve at all does not."""
    return bool(error.details.get("name") == name)


class Api:
    """Runs blocking `KubeApi` (and S3) calls on a fixed pool of `api_workers` threads, so the
    event loop never blocks and the number of calls in flight is bounded by design."""

    def __init__(self, kube: KubeApi, workers: int) -> None:
        self.kube = kube
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api")

    def start_threads(self, timeout: float = 10) -> int:
        """Start every worker thread now (the pool starts one per call otherwise, until all
        are); the number started. At start-up, their objects sit among the start-up heap,
        not among the pages a first sweep of tasks grows and frees (memory.py)."""
        workers = self.pool._max_workers  # ThreadPoolExecutor has no public prestart
        ready = threading.Barrier(workers, timeout=timeout)
        # Each call blocks its thread until all have one: so the pool starts a new one each.
        waits = [self.pool.submit(ready.wait) for _ in range(workers)]
        with contextlib.suppress(threading.BrokenBarrierError):
            for wait in waits:
                wait.result()
        return len(self.pool._threads)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
