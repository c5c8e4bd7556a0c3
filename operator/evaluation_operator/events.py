"""Kubernetes Events on tasks: what `kubectl describe evaluationtask` shows.

Posted by the operator's own API client (`kube.Api`), in the background and best effort: the
task's status carries the same information, so a lost Event is harmless. Kopf's own poster
is not used for them: it is reached only from inside a Kopf handler, and most of a task's
events never pass through one (watch_projection.py).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
from typing import Any

from evaluation_operator import naming
from evaluation_operator.kube import Api
from evaluation_operator.task import Task

log = logging.getLogger(__name__)
MAX_MESSAGE = 1024
NORMAL, WARNING = "Normal", "Warning"


def build_event(task: Task, type_: str, reason: str, message: str, now: datetime.datetime,
                instance: str) -> dict[str, Any]:
    """A core/v1 Event about `task` (the kind `kubectl describe` and `kubectl get events`
    list), in the task's namespace."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reference = task.reference()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{task.name}.", "namespace": task.namespace},
        "involvedObject": {"apiVersion": reference["apiVersion"], "kind": reference["kind"],
                           **reference["metadata"]},
        "type": type_, "reason": reason, "message": message[:MAX_MESSAGE],
        "source": {"component": naming.MANAGED_BY},
        "reportingComponent": naming.MANAGED_BY, "reportingInstance": instance,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


class Recorder:
    """Posts Events about tasks through `api`; `drain` waits for those in flight."""

    def __init__(self, api: Api, instance: str | None = None) -> None:
        self.api = api
        self.instance = instance or socket.gethostname()  # the pod's name in a cluster
        self._sending: set[asyncio.Task[None]] = set()

    def normal(self, task: Task, reason: str, message: str) -> None:
        self.post(task, NORMAL, reason, message)

    def warning(self, task: Task, reason: str, message: str) -> None:
        self.post(task, WARNING, reason, message)

    def post(self, task: Task, type_: str, reason: str, message: str) -> None:
        event = build_event(task, type_, reason, message,
                            datetime.datetime.now(datetime.UTC), self.instance)
        try:
            sending = asyncio.get_running_loop().create_task(self._send(event))
        except RuntimeError:  # no event loop: nothing runs that could post it
            log.debug("no event loop to post event %s for %s", reason, task.key)
            return
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self.api.call(self.api.kube.create, event)
        except Exception as error:
            log.debug("could not post event %s: %s", event["reason"], error)

    async def drain(self, timeout: float | None = None) -> None:
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)
