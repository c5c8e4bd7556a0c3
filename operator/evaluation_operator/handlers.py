"""Kopf handlers: the edge. Each turns what Kopf delivers into typed values and hands them on.

| what arrives | what it does | API calls |
| --- | --- | --- |
| any watch event | the store keeps the parsed `Task` or a compact Job or pod (world.py) | none |
| task event (in the stream, Kopf's if deleted or unfinalized) | first: ConfigMap + Job | 2 POST |
| Job or pod event (in the stream, not through Kopf) | mark the task changed | none |
| (a marked task) | status from the store, written if it changed | 0-1 PATCH |
| Job deleted | never started: create again; started: `JobDeleted` | 0-2 |
| a task, Job or pod deleted | freed memory handed back once deletions pause for 5 s | none |
| one poller, running tasks only | read progress.json (jittered); write if changed | 0-1 PATCH |
| task deleted | stop the runner, purge S3 | 0-1 DELETE |

All handlers are async and never block: API and S3 calls run on `api_workers` threads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from evaluation_operator import (
    apiclient,
    connections,
    deletion,
    kopf_startup,
    memory,
    metrics,
    naming,
    watch_projection,
    world,
)
from evaluation_operator.config import OperatorSettings
from evaluation_operator.kube import Api, Kube
from evaluation_operator.reconcile import Reconciler, RetryLater
from evaluation_operator.s3 import shared_client, warm_up
from evaluation_operator.task import Task
from evaluation_operator.world import Store, is_merge, task_uid_of

log = logging.getLogger(__name__)
SETTINGS = OperatorSettings.from_env()
kopf_startup.install()  # before Kopf builds its start-up gate: see kopf_startup.py
STORE = Store(SETTINGS)  # what the watches delivered (world.py)
# At import, before Kopf opens its first session (its resource scan may precede startup).
connections.bound_kopf_connections(connections.connection_limit(SETTINGS))
CHILD_LABELS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
TASK = (naming.GROUP, naming.VERSION, naming.PLURAL)
JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
WORKER_IDLE_SECONDS = 1.0
_reconciler: Reconciler | None = None
_poller: asyncio.Task[None] | None = None


def reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        # One pooled connection per worker thread: more would idle, fewer would queue.
        kube = Kube(apiclient.rest_client(SETTINGS, pool_size=SETTINGS.api_workers), SETTINGS)
        _reconciler = Reconciler(SETTINGS, Api(kube, SETTINGS.api_workers),
                                 s3=lambda: shared_client(SETTINGS))
        _reconciler.bind(STORE.world())
        STORE.on_ready = _reconciler.tasks_ready
    return _reconciler


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No on.create/on.update handlers, so no diff base to keep: Kopf would otherwise patch
    every new task once just to store it (one API write per task for nothing), and deep-copy
    every task, Job and pod it is told about twice to compare them (a sixth of the
    operator's CPU while creating 300 tasks, bench/operator_scale.py with py-spy)."""

    def build(self, **_: Any) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return {}

    def store(self, **_: Any) -> None:
        return None


class UnbrandedProgress(kopf.AnnotationsProgressStorage):
    """Kopf also writes an `evaluation.dev/kopf-managed: yes` marker the first time it
    stores progress: on a task deleted at the first attempt that is a second PATCH (merge
    patch for the marker, JSON patch for the finalizer) only to brand the prefix."""

    def _store_marker(self, prefix: str, patch: Any, body: Any) -> None:  # Kopf < 2
        return None


class HandlerSuccessFilter(logging.Filter):
    """Drops Kopf's "Handler 'task_event' succeeded." lines: one per task event, saying
    nothing (failures are still logged)."""

    QUIET = frozenset({"Handler 'task_event' succeeded."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.QUIET


# Kopf logs in the way the operator's own client does (apiclient.login): one identity, one
# server. (Kopf's own choice would be its fallbacks, or the `kubernetes` client when that
# can be imported: never in the operator's process, see __main__.py.)
kopf.on.login()(apiclient.login)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own names for Kopf's bookkeeping, and the finalizer users see on their tasks.
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = UnbrandedProgress(prefix="evaluation.dev")
    settings.persistence.diffbase_storage = NoDiffBase(
        prefix="evaluation.dev", key="last-handled-configuration")
    # Our own Events say what happened; Kopf's log lines become Events only when they warn.
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").addFilter(HandlerSuccessFilter())
    # Deadlines on every watch and request: a silent partition must not stop the operator.
    apiclient.configure_kopf(settings, SETTINGS)
    settings.execution.max_workers = SETTINGS.api_workers
    # Few raw objects alive at once (docs/operator.md, Memory): initial lists in pages, and
    # Kopf's per-object worker, which keeps the last event it processed until it exits,
    # exits after 1 s without events instead of 5 (it is started again by the next event).
    settings.watching.chunk_size = SETTINGS.list_chunk_size or None
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # Watch only our own Jobs and pods (server-side), not every pod of the cluster.
    ours = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    settings.watching.label_selectors["batch", "v1", "jobs"] = ours
    settings.watching.label_selectors["", "v1", "pods"] = ours
    if SETTINGS.namespaces:
        # Named namespaces need no discovery: without this Kopf lists all namespaces (and
        # watches CRDs) cluster-wide, which a namespaced install is not allowed to do, and
        # stalls about a minute in retries before falling back to the names given.
        settings.scanning.disabled = True
    if SETTINGS.metrics_port:
        metrics.start_metrics_server(SETTINGS.metrics_port)
    problem = warm_up(SETTINGS)  # before the freeze: the S3 client lives as long as we do
    if problem:
        log.warning("S3 client not ready at start: %s", problem)
    memory.freeze_startup_heap()  # the last startup step: what is imported by now stays


@kopf.on.startup()
async def start_polling(**_: Any) -> None:
    global _poller
    reconciler().api.start_threads()  # now, not amid the first sweep (memory.py)
    _poller = asyncio.get_running_loop().create_task(reconciler().poll_forever())


@kopf.on.cleanup()
async def shut_down(**_: Any) -> None:
    if _poller is not None:
        _poller.cancel()
    if _reconciler is not None:
        _reconciler.api.close()


# --- events ----------------------------------------------------------------------------------


def stream_event(kind: str, type: str | None, obj: dict[str, Any]) -> None:
    """An event handed over in the watch stream (watch_projection.py), after the store took
    it: every Job and pod event, and a task's unless Kopf has a part in it (its finalizer,
    its deletion). Kopf's workers never see these."""
    meta = obj.get("metadata") or {}
    if kind == world.TASKS:
        _task_changed(reconciler(), type, meta.get("uid") or "")
        return
    uid = task_uid_of(meta)
    if not uid or not STORE.ready(meta.get("namespace") or ""):
        return  # before its namespace is listed, its task has not been seen: it will be
    r = reconciler()
    if type != "DELETED":
        r.mark(uid)
    elif kind == world.JOBS:
        r.spawn(r.job_gone(uid, merge=is_merge(obj)))
    else:
        r.pod_gone(uid)


def _task_changed(r: Reconciler, type: str | None, uid: str) -> None:
    task = r.world.task(uid)
    if task is None:
        return
    log.debug("task %s: %s", task.key, type or "listed")  # Kopf's own line, when it handled it
    if type is None or type == "ADDED":  # (re)listed: the gauges start empty after a restart
        metrics.observe_task(task.namespace, task.name, dict(task.status))
    if STORE.wait_for_ready(uid, task.namespace):  # else seen once its children are listed
        r.see(uid)


# At import, before Kopf's watchers start: see watch_projection.py.
watch_projection.install(STORE, stream_event)


@kopf.on.event(*TASK)
async def task_event(type: str, uid: str, **kwargs: Any) -> None:
    """The task events Kopf keeps (watch_projection.kopf_needed): the first one of a task
    without the finalizer (Kopf adds it), a deletion's, and the task gone."""
    r = reconciler()
    if type == "DELETED":
        r.forget(uid)
        # Also when it went without our finalizer's handler (removed by hand, say).
        metrics.forget_task(kwargs["namespace"], kwargs["name"])
        return
    _task_changed(r, type, uid)


# Registered so that Kopf runs the Job and pod watches (list, resume, reconnect); their events
# go to `stream_event` and never reach these.
@kopf.on.event(*JOBS, labels=CHILD_LABELS)
async def watch_jobs(**_: Any) -> None:
    """Never called: see stream_event."""


@kopf.on.event(*PODS, labels=CHILD_LABELS)
async def watch_pods(**_: Any) -> None:
    """Never called: see stream_event."""


# --- deletion --------------------------------------------------------------------------------


# retries=None: the purge is retried until it succeeds. Never PermanentError, which would
# remove the finalizer and leave the results behind.
@kopf.on.delete(*TASK, retries=None)
async def task_deleted(body: kopf.Body, uid: str, retry: int, **_: Any) -> None:
    r = reconciler()
    task = Task.from_body(body, SETTINGS)
    if not STORE.ready(task.namespace):
        # Its Job and pods are not all known yet (just started): stopping the runner and
        # purging must not miss one.
        raise kopf.TemporaryError("waiting for the first list of Jobs and pods", delay=1)
    try:
        await deletion.delete_task(task, r.world.job(uid), r.world.all_pods(uid), retry,
                                   SETTINGS, r.api, r.s3() if r.s3 else None, r.events,
                                   merge_job=r.world.merge_job(uid))
    except RetryLater as later:
        raise kopf.TemporaryError(str(later), delay=later.delay) from later
    r.forget(uid)
