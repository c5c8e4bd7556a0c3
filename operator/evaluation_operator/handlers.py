"""Kopf handlers: only decorators, each delegating to `reconcile`."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from evaluation_operator import metrics, naming, reconcile
from evaluation_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()
CHILD_LABELS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
TASK = (naming.GROUP, naming.VERSION, naming.PLURAL)
_kube: reconcile.Kube | None = None


def kube() -> reconcile.Kube:
    global _kube
    if _kube is None:
        _kube = reconcile.Kube()
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own names for Kopf's bookkeeping, and the finalizer users see on their tasks.
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="evaluation.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="evaluation.dev", key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    if SETTINGS.metrics_port:
        metrics.start_metrics_server(SETTINGS.metrics_port)


@kopf.on.create(*TASK)
@kopf.on.resume(*TASK)
def task_created(body: kopf.Body, **_: Any) -> None:
    # On resume (operator restart) the gauges start empty: count the task as it stands.
    metrics.observe_task(str(body.metadata.namespace), str(body.metadata.name),
                         dict(body.get("status") or {}))
    reconcile.ensure_children(dict(body), SETTINGS, kube())


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
def job_changed(body: kopf.Body, **_: Any) -> None:
    _refresh_owner(body)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def pod_changed(body: kopf.Body, **_: Any) -> None:
    _refresh_owner(body)


def _refresh_owner(child: kopf.Body) -> None:
    for owner in child.metadata.get("ownerReferences") or []:
        if owner.get("kind") == naming.KIND:
            reconcile.refresh_status(str(child.metadata.namespace), owner["name"], SETTINGS, kube())
            return
    task_name = child.metadata.labels.get(naming.LABEL_TASK)
    if task_name:  # pods are owned by the Job; the task label names the task
        task = kube().get_task(str(child.metadata.namespace), task_name)
        if task and task["metadata"]["uid"] == child.metadata.labels.get(naming.LABEL_TASK_UID):
            reconcile.refresh_status(str(child.metadata.namespace), task_name, SETTINGS, kube())


def _is_evaluating(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in ("Completed", "Failed")


@kopf.timer(*TASK, interval=SETTINGS.progress_interval_seconds, idle=None,
            when=_is_evaluating)
def resync(body: kopf.Body, **_: Any) -> None:
    """A periodic resync (covers missed events) and the progress from progress.json."""
    status = reconcile.refresh_status(str(body.metadata.namespace), str(body.metadata.name),
                                      SETTINGS, kube())
    if status is not None:
        reconcile.refresh_progress({**dict(body), "status": status}, SETTINGS, kube())


@kopf.on.delete(*TASK, retries=None)
def task_deleted(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
    task = dict(body)
    name, namespace = str(body.metadata.name), str(body.metadata.namespace)
    if reconcile.nothing_was_written(task):
        logger.info("no runner ever started for %s/%s: nothing to purge", namespace, name)
        metrics.forget_task(namespace, name)
        return
    started = time.monotonic()
    try:
        deleted = reconcile.purge_task_results(task, SETTINGS)
    except Exception as error:
        delay = min(5 * 2 ** min(retry, 10), SETTINGS.purge_retry_max_seconds)
        metrics.record_purge("failed", time.monotonic() - started)
        kube().patch_task_status(namespace, name, reconcile.purge_failed_status(task, error, delay))
        kopf.warn(body, reason="PurgeFailed",
                  message=f"Deleting results failed ({error}); retrying in {delay}s")
        # Never PermanentError: Kopf would drop the finalizer and leave the data behind.
        raise kopf.TemporaryError(f"purge failed: {error}", delay=delay) from error
    metrics.record_purge("succeeded", time.monotonic() - started, deleted)
    metrics.forget_task(namespace, name)
    kopf.info(body, reason="ResultsPurged", message=f"Deleted {deleted} object versions")
