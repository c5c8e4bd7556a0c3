"""Only what the operator reads of each watched object, kept from the moment it arrives.

Kopf keeps every object's last event until its worker is done with it (with Kopf's indexes,
which the operator no longer uses, it kept all of them at once after a restart). Most of a Job
or a pod is its spec (containers, volumes, tolerations) and `metadata.managedFields`, of which
the operator reads nothing.

`install()` wraps Kopf's watch stream (`kopf._cogs.clients.watching.infinite_watch`, which
`kopf._core.reactor.queueing.watcher` calls through its module, Kopf 1.45) so that each
event's object is replaced by its projection before Kopf queues it:

* Jobs and pods: `world.compact_job` / `world.compact_pod` (exactly what status and deletion
  read) under the object's whole metadata but `managedFields` (Kopf reads uid, name,
  namespace, labels, annotations, finalizers and deletionTimestamp from it).
* Tasks: the whole object but `metadata.managedFields`: Kopf patches a task's finalizers and
  annotations and the operator parses its spec and status, so nothing else can go.

Any other resource (Kopf's own peering objects, CRDs) passes unchanged.

The same wrapper feeds the operator's `world.Store` with each projected object, and tells it
when a Job or pod watch has finished its list (Kopf's `Bookmark.LISTED`), in the watch's
order and before Kopf's worker for the object runs: a handler always finds the store at
least as new as its own event.

Job and pod events go no further: the wrapper hands each to the operator's `StreamEvents`
callback in the stream and yields only the watch's markers to Kopf. What the operator does
with them (mark the task changed, or act on a deletion) needs none of Kopf's per-event
machinery: a worker task per object, a memory per object, the handler's kwargs, logging and
patch bookkeeping, for ~10 Job and pod events per task. Kopf still runs the watches (list,
resume, reconnect) for the handlers registered on them.

A task's events go the same way unless Kopf has a part in them (`kopf_needed`): the
finalizer missing (Kopf adds it), a deletion (Kopf runs the deletion handler, retries it,
removes the finalizer) and the task gone (Kopf forgets it). With the chart's finalizer policy
that is a task's deletion only; Kopf's handling of each task event around the handler was a
quarter of the operator's CPU while 1,000 tasks were created (bench/README.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from kopf._cogs.clients import watching

from evaluation_operator import naming
from evaluation_operator.world import JOBS, PODS, TASKS, Store, compact_job, compact_pod

log = logging.getLogger(__name__)

Projection = Callable[[Mapping[str, Any]], dict[str, Any]]
# (store kind, event type, projected object): what an event handed over does, instead of Kopf.
StreamEvents = Callable[[str, str | None, dict[str, Any]], None]


def _metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}


def _kind(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: obj[k] for k in ("apiVersion", "kind") if k in obj}


def project_task(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**obj, "metadata": _metadata(obj)}


def project_job(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**_kind(obj), **compact_job(obj), "metadata": _metadata(obj)}


def project_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**_kind(obj), **compact_pod(obj), "metadata": _metadata(obj)}


# By (API group, plural): Kopf's `Resource` names a resource the same way at any version.
# The store's name for the kind, and its projection.
KINDS: dict[tuple[str, str], tuple[str, Projection]] = {
    (naming.GROUP, naming.PLURAL): (TASKS, project_task),
    ("batch", "jobs"): (JOBS, project_job),
    ("", "pods"): (PODS, project_pod),
}
_store: Store | None = None
_stream_events: StreamEvents | None = None


def feed(store: Store, kind: str, namespace: str | None, event: Any) -> None:
    """One (projected) event into the store; never raises into Kopf's watch."""
    try:
        if event is watching.Bookmark.LISTED:
            if kind != TASKS:
                store.listed(kind, namespace)
        elif (isinstance(event, dict) and isinstance(event.get("object"), dict)
              and event.get("type") not in ("BOOKMARK", "ERROR")):
            store.take(kind, event.get("type"), event["object"])
    except Exception:
        log.exception("keeping a %s event failed", kind)


def project_event(event: Any, projection: Projection) -> Any:
    """The event with its object projected; bookmarks and errors pass unchanged."""
    if not isinstance(event, dict):
        return event  # Kopf's own Bookmark markers
    obj = event.get("object")
    if event.get("type") in ("BOOKMARK", "ERROR") or not isinstance(obj, dict):
        return event
    return {**event, "object": projection(obj)}


def kopf_needed(event: Mapping[str, Any]) -> bool:
    """Kopf's part of a task's events: the finalizer (added when missing, removed after the
    purge), the deletion handler, and forgetting the object; every other task event is the
    operator's alone."""
    meta = event["object"].get("metadata") or {}
    return (event.get("type") == "DELETED" or bool(meta.get("deletionTimestamp"))
            or naming.FINALIZER not in (meta.get("finalizers") or ()))


def hand_over(stream_events: StreamEvents, kind: str, event: Any) -> bool:
    """An event to the operator instead of Kopf (True: taken); never raises into Kopf's
    watch. Every Job and pod event; a task's unless Kopf has a part in it."""
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        return False
    if event.get("type") in ("BOOKMARK", "ERROR"):
        return False
    if kind == TASKS and kopf_needed(event):
        return False
    try:
        stream_events(kind, event.get("type"), event["object"])
    except Exception:
        log.exception("handling a %s event failed", kind)
    return True


def projecting(stream: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def projected(*, resource: Any, namespace: str | None = None, **kwargs: Any
                        ) -> AsyncIterator[Any]:
        found = KINDS.get((resource.group, resource.plural))
        async for event in stream(resource=resource, namespace=namespace, **kwargs):
            if found is not None:
                kind, projection = found
                event = project_event(event, projection)
                if _store is not None:
                    feed(_store, kind, namespace, event)
                if _stream_events is not None and hand_over(_stream_events, kind, event):
                    continue
            yield event

    projected.__wrapped__ = stream  # type: ignore[attr-defined]
    return projected


def install(store: Store | None = None, stream_events: StreamEvents | None = None) -> None:
    """Project every event Kopf's watchers receive from now on, feed `store` with it, and
    hand Job and pod events (and a live task's) to `stream_events` instead of Kopf
    (idempotent; the last given are used)."""
    global _store, _stream_events
    if store is not None:
        _store = store
    if stream_events is not None:
        _stream_events = stream_events
    if not hasattr(watching.infinite_watch, "__wrapped__"):
        watching.infinite_watch = projecting(watching.infinite_watch)
