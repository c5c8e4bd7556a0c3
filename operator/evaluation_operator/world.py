"""What the watches delivered: tasks, and the Jobs and pods of each task, by task uid.

`Store` keeps them as the watch streams deliver them (watch_projection.py feeds it, before
Kopf queues the event): the parsed `Task` by uid, and compact projections of each Job and pod
(only what status and deletion read) by their task's uid. `World` is the read-only view the
reconciler asks instead of the API server. An entry goes when its object's deletion arrives,
so nothing here grows beyond what exists in the cluster.

The store also knows which Job and pod watches have finished their first list: until both
have for a task's namespace, what the operator knows of that task's children is incomplete,
and nothing may be decided from it (`Store.ready`). This replaces Kopf's indexes, whose
start-up gate held every listed object's event and worker until all were indexed: 15,000 of
them after a restart with 5,000 tasks (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings
from evaluation_operator.task import Task

# By task uid: a collection of values, or a mapping whose values they are (the store's, by
# the object's own uid).
Index = Mapping[str, Any]


def _pick(source: Mapping[str, Any] | None, *keys: str) -> dict[str, Any]:
    source = source or {}
    return {k: source[k] for k in keys if source.get(k) is not None}


def task_uid_of(metadata: Mapping[str, Any]) -> str | None:
    uid = (metadata.get("labels") or {}).get(naming.LABEL_TASK_UID)
    return str(uid) if uid else None


def is_merge(obj: Mapping[str, Any]) -> bool:
    """A sharded run's merge Job or its pod (naming.LABEL_ROLE), not the evaluation's."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(naming.LABEL_ROLE) == naming.ROLE_MERGE


def compact_job(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    labels = _pick((body.get("metadata") or {}).get("labels"), naming.LABEL_ROLE)
    return {
        "metadata": {**_pick(body.get("metadata"), "name", "namespace", "uid"),
                     **({"labels": labels} if labels else {})},
        "spec": _pick(body.get("spec"), "suspend", "completions"),
        "status": {
            **_pick(status, "startTime", "completionTime", "active", "succeeded", "failed",
                    "completedIndexes", "failedIndexes"),
            "conditions": [_pick(c, "type", "status", "reason", "message",
                                 "lastTransitionTime") for c in status.get("conditions") or []],
        },
    }


def _container(status: Mapping[str, Any]) -> dict[str, Any]:
    return _pick(status, "name", "image", "state", "lastState")


def compact_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    labels = _pick((body.get("metadata") or {}).get("labels"), naming.LABEL_ROLE,
                   naming.LABEL_COMPLETION_INDEX)
    return {
        "metadata": {**_pick(body.get("metadata"), "name", "namespace", "creationTimestamp",
                             "deletionTimestamp", "deletionGracePeriodSeconds"),
                     **({"labels": labels} if labels else {})},
        "spec": _pick(body.get("spec"), "nodeName"),
        "status": {
            **_pick(status, "phase", "startTime"),
            "conditions": [_pick(c, "type", "status", "reason", "message", "lastTransitionTime")
                           for c in status.get("conditions") or []],
            "containerStatuses": [_container(c) for c in status.get("containerStatuses") or []],
        },
    }


def _values(index: Index, uid: str) -> Collection[Any]:
    found = index.get(uid) or ()
    return found.values() if isinstance(found, Mapping) else found


class World:
    """The tasks, Jobs and pods as the watches last delivered them, by task uid."""

    def __init__(self, tasks: Index, jobs: Index, pods: Index) -> None:
        self.tasks, self.jobs, self.pods_index = tasks, jobs, pods

    def tables(self) -> tuple[Index, Index, Index]:
        """The tables themselves (memory.compact), never to be written to through this view."""
        return self.tasks, self.jobs, self.pods_index

    def task(self, uid: str) -> Task | None:
        found = self.tasks.get(uid)
        if isinstance(found, Task) or found is None:
            return found
        return next(iter(found), None)

    def job(self, uid: str) -> dict[str, Any] | None:
        """The evaluation Job (a sharded run's merge Job is `merge_job`)."""
        return next((dict(j) for j in _values(self.jobs, uid) if not is_merge(j)), None)

    def merge_job(self, uid: str) -> dict[str, Any] | None:
        return next((dict(j) for j in _values(self.jobs, uid) if is_merge(j)), None)

    def pods(self, uid: str) -> list[dict[str, Any]]:
        return [dict(p) for p in _values(self.pods_index, uid) if not is_merge(p)]

    def merge_pods(self, uid: str) -> list[dict[str, Any]]:
        return [dict(p) for p in _values(self.pods_index, uid) if is_merge(p)]

    def all_pods(self, uid: str) -> list[dict[str, Any]]:
        return [dict(p) for p in _values(self.pods_index, uid)]


TASKS, JOBS, PODS = "tasks", "jobs", "pods"
Listed = tuple[str, str | None]  # (JOBS or PODS, namespace; None: every namespace)


class Store:
    """The watched objects by task uid, fed event by event (`take`), and which Job and pod
    lists are complete (`listed`). Tasks seen before their namespace was `ready` are
    remembered and handed to `on_ready` once it is."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.tasks: dict[str, Task] = {}
        self.jobs: dict[str, dict[str, dict[str, Any]]] = {}
        self.pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._listed: set[Listed] = set()
        self._waiting: dict[str, str] = {}  # task uid -> namespace, seen before `ready`
        self.on_ready: Callable[[list[str]], None] | None = None

    def world(self) -> World:
        return World(self.tasks, self.jobs, self.pods)

    def take(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """One watch event's (projected) object."""
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if kind == TASKS:
            if event_type == "DELETED":
                self.tasks.pop(uid, None)
                self._waiting.pop(uid, None)
            else:
                self.tasks[uid] = Task.from_body(obj, self.settings)
            return
        table = self.jobs if kind == JOBS else self.pods
        task_uid = task_uid_of(meta)
        if not task_uid:
            return
        if event_type == "DELETED":
            children = table.get(task_uid)
            if children is not None:
                children.pop(uid, None)
                if not children:
                    del table[task_uid]
            return
        compact = compact_job(obj) if kind == JOBS else compact_pod(obj)
        table.setdefault(task_uid, {})[uid] = compact

    def listed(self, kind: str, namespace: str | None) -> None:
        """A Job or pod watch finished its (first) list."""
        self._listed.add((kind, namespace))
        ready = [uid for uid, ns in self._waiting.items() if self.ready(ns)]
        for uid in ready:
            del self._waiting[uid]
        if ready and self.on_ready is not None:
            self.on_ready(ready)

    def ready(self, namespace: str) -> bool:
        """Every Job and pod of this namespace has been listed at least once."""
        return all((kind, namespace) in self._listed or (kind, None) in self._listed
                   for kind in (JOBS, PODS))

    def wait_for_ready(self, uid: str, namespace: str) -> bool:
        """True if the namespace is ready; else the task is handed to `on_ready` later."""
        if self.ready(namespace):
            return True
        self._waiting[uid] = namespace
        return False


EMPTY = World({}, {}, {})
