"""What the watches delivered: tasks, and the Jobs and pods of each task, by task uid.

Kopf keeps these in its in-memory indexes (handlers.py declares them); this module holds the
pure parts: the compact projections stored per Job and pod (only what status and deletion
read, so 1,000 tasks cost a few MiB), and `World`, the read-only view the reconciler asks
instead of the API server. An entry goes when its object is deleted, so nothing here grows
beyond what exists in the cluster.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from evaluation_operator import naming
from evaluation_operator.task import Task

Index = Mapping[str, Collection[Any]]


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


class World:
    """The tasks, Jobs and pods as the watches last delivered them, by task uid."""

    def __init__(self, tasks: Index, jobs: Index, pods: Index) -> None:
        self.tasks, self.jobs, self.pods_index = tasks, jobs, pods

    @staticmethod
    def _first(index: Index, uid: str) -> Any | None:
        values = index.get(uid)
        if not values:
            return None
        return next(iter(values))

    def task(self, uid: str) -> Task | None:
        task: Task | None = self._first(self.tasks, uid)
        return task

    def job(self, uid: str) -> dict[str, Any] | None:
        """The evaluation Job (a sharded run's merge Job is `merge_job`)."""
        return next((dict(j) for j in self.jobs.get(uid) or () if not is_merge(j)), None)

    def merge_job(self, uid: str) -> dict[str, Any] | None:
        return next((dict(j) for j in self.jobs.get(uid) or () if is_merge(j)), None)

    def pods(self, uid: str) -> list[dict[str, Any]]:
        return [dict(p) for p in self.pods_index.get(uid) or () if not is_merge(p)]

    def merge_pods(self, uid: str) -> list[dict[str, Any]]:
        return [dict(p) for p in self.pods_index.get(uid) or () if is_merge(p)]

    def all_pods(self, uid: str) -> list[dict[str, Any]]:
        return [dict(p) for p in self.pods_index.get(uid) or ()]


EMPTY = World({}, {}, {})
