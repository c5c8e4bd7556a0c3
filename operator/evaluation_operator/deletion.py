"""Deletion: stop the runner, then purge every object version under the task's prefix.

Decided from what the watches delivered (the task's Job and pods in `World`); the only calls
are the Job's deletion and S3's listing and deletes.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from evaluation_operator import metrics
from evaluation_operator.config import OperatorSettings
from evaluation_operator.events import Recorder
from evaluation_operator.kube import Api
from evaluation_operator.reconcile import RetryLater, now_iso
from evaluation_operator.s3 import ResultsLocation, purge
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import merge_conditions
from evaluation_operator.task import Task

log = logging.getLogger(__name__)
FINISHED_POD_PHASES = ("Succeeded", "Failed")
# A pod on a node that died never confirms its deletion; waiting for it would keep the task
# (and its results) forever. Past its grace period and this much more, it counts as stopped.
UNCONFIRMED_STOP_SECONDS = 300


def runner_never_started(status: dict[str, Any], job: dict[str, Any] | None,
                         pods: list[dict[str, Any]]) -> bool:
    """True only when it is certain that no runner ever ran, so nothing can be in S3.

    Unsure means False: the purge then runs (and waits for S3 if it must).
    """
    if status.get("startTime") or status.get("phase") == Phase.COMPLETED.value:
        return False
    if status.get("reason") == Reason.INVALID_SPEC.value and job is None and not pods:
        return True  # the operator never created a Job for it
    if job is None:
        return False  # gone already (or never seen): cannot tell
    job_status = job.get("status") or {}
    if job_status.get("succeeded") or job_status.get("failed"):
        return False
    return not any((p.get("spec") or {}).get("nodeName") for p in pods)


def _deletion_overdue(pod: dict[str, Any], now: datetime.datetime) -> bool:
    meta = pod.get("metadata") or {}
    deleted = meta.get("deletionTimestamp")
    if not deleted:
        return False
    since = datetime.datetime.fromisoformat(str(deleted).replace("Z", "+00:00"))
    grace = int(meta.get("deletionGracePeriodSeconds") or 30)
    return (now - since).total_seconds() > grace + UNCONFIRMED_STOP_SECONDS


def pods_still_running(pods: list[dict[str, Any]], now: datetime.datetime
                       ) -> tuple[list[str], list[str]]:
    """(pods whose runner may still write to S3, pods past their deletion deadline that
    never confirmed they stopped)."""
    active = [p for p in pods
              if (p.get("status") or {}).get("phase") not in FINISHED_POD_PHASES]
    overdue = [p["metadata"]["name"] for p in active if _deletion_overdue(p, now)]
    running = [p["metadata"]["name"] for p in active if p["metadata"]["name"] not in overdue]
    return running, overdue


def purge_retry_delay(retry: int, maximum: float) -> float:
    return float(min(5 * 2 ** min(retry, 10), maximum))


def _job_finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


async def delete_task(task: Task, job: dict[str, Any] | None, pods: list[dict[str, Any]],
                      retry: int, settings: OperatorSettings, api: Api, s3: Any | None,
                      events: Recorder, merge_job: dict[str, Any] | None = None) -> None:
    """Stop the runner, then delete every object version under the task's prefix.

    The order matters: a runner still going after the purge would write its progress or
    results again, and they would stay behind. Raises RetryLater until both are done; the
    task (with its finalizer) stays meanwhile, saying why in its status and events.
    """
    status = dict(task.status)
    if runner_never_started(status, job, pods):
        log.info("no runner of %s ever started: nothing to purge", task.key)
        metrics.forget_task(task.namespace, task.name)
        return
    running, overdue = pods_still_running(pods, datetime.datetime.now(datetime.UTC))
    # A Completed task's runner succeeded, so its Job starts no other pod even while the Job
    # controller has not marked it Complete yet (on a busy cluster, minutes): nothing to stop.
    completed = status.get("phase") == Phase.COMPLETED.value
    if job is not None and (running or not (completed or _job_finished(job))):
        await api.call(api.kube.delete_job, task.namespace, task.job_name)
    if merge_job is not None and (running or not (completed or _job_finished(merge_job))):
        await api.call(api.kube.delete_job, task.namespace, task.merge_job_name)
    if running:
        raise RetryLater(f"waiting for runner pod(s) {', '.join(running)} to stop before "
                         "deleting the results", delay=2)
    location = purge_location(task)
    if overdue:
        events.warning(task, "RunnerStopUnconfirmed", (
            f"Pod(s) {', '.join(overdue)} never confirmed they stopped (is the node down?); "
            f"deleting the results anyway. Check {location.uri} later: a runner still alive "
            "on that node could write there again."))
    started = time.monotonic()
    try:
        if s3 is None:
            raise RuntimeError("no S3 client")
        deleted = await api.call(purge, s3, location)
    except Exception as error:
        delay = purge_retry_delay(retry, settings.purge_retry_max_seconds)
        metrics.record_purge("failed", time.monotonic() - started)
        await api.call(api.kube.patch_task_status, task.namespace, task.name,
                       purge_failed_status(task, error, delay))
        events.warning(task, "PurgeFailed",
                       f"Deleting the results failed ({error}); retrying in {int(delay)}s")
        raise RetryLater(f"purge failed: {error}", delay=delay) from error
    metrics.record_purge("succeeded", time.monotonic() - started, deleted)
    metrics.forget_task(task.namespace, task.name)
    events.normal(task, "ResultsPurged", f"Deleted {deleted} object versions")


def purge_location(task: Task) -> ResultsLocation:
    """Where the results are: as recorded in status, else as the spec says. Raises when
    neither says (a spec that never parsed, and no runner ever started)."""
    uri = task.results_uri
    if not uri:
        raise ValueError(f"task {task.key} has no results location: {task.spec_error}")
    return ResultsLocation.from_uri(uri)


def purge_failed_status(task: Task, error: Exception, retry_in: float) -> dict[str, Any]:
    message = (f"Deleting the results failed: {error}. The task stays until they are gone; "
               f"retrying in {int(retry_in)}s. Check the operator's S3 endpoint and "
               "credentials.")
    conditions = merge_conditions(
        list(task.status.get("conditions") or []),
        {"ResultsPurged": ("False", "PurgeFailed", message)},
        task.generation, now_iso(),
    )
    return {"conditions": conditions, "message": message}
