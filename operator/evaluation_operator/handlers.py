"""Kopf handlers: only decorators, each delegating to `reconcile`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from evaluation_operator import apiclient, metrics, naming, reconcile
from evaluation_operator.config import OperatorSettings

SETTINGS = OperatorSettings.from_env()
CHILD_LABELS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
TASK = (naming.GROUP, naming.VERSION, naming.PLURAL)
_kube: reconcile.Kube | None = None


def kube() -> reconcile.Kube:
    global _kube
    if _kube is None:
        _kube = reconcile.Kube(reconcile.api_client_from_environment(SETTINGS))
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own names for Kopf's bookkeeping, and the finalizer users see on their tasks.
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="evaluation.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="evaluation.dev", key="last-handled-configuration")
    # Our own Events say what happened; Kopf's log lines become Events only when they warn.
    settings.posting.level = logging.WARNING
    # Deadlines on every watch and request: a silent partition must not stop the operator.
    apiclient.configure_kopf(settings, SETTINGS)
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


@kopf.on.create(*TASK)
@kopf.on.resume(*TASK)
def task_created(body: kopf.Body, **_: Any) -> None:
    # On resume (operator restart) the gauges start empty: count the task as it stands.
    metrics.observe_task(str(body.metadata.namespace), str(body.metadata.name),
                         dict(body.get("status") or {}))
    try:
        reconcile.ensure_children(dict(body), SETTINGS, kube())
    except reconcile.RetryLater as later:
        raise kopf.TemporaryError(str(later), delay=later.delay) from later


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
def job_changed(body: kopf.Body, **_: Any) -> None:
    reconcile.refresh_status_of_owner(dict(body), SETTINGS, kube())


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def pod_changed(body: kopf.Body, **_: Any) -> None:
    reconcile.refresh_status_of_owner(dict(body), SETTINGS, kube())


def _is_evaluating(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in ("Completed", "Failed")


@kopf.timer(*TASK, interval=SETTINGS.progress_interval_seconds, idle=None,
            when=_is_evaluating)
def resync(body: kopf.Body, **_: Any) -> None:
    reconcile.resync(str(body.metadata.namespace), str(body.metadata.name), SETTINGS, kube())


# retries=None: the purge is retried until it succeeds. Never PermanentError, which would
# remove the finalizer and leave the results behind.
@kopf.on.delete(*TASK, retries=None)
def task_deleted(body: kopf.Body, retry: int, **_: Any) -> None:
    try:
        reconcile.delete_task(dict(body), retry, SETTINGS, kube())
    except reconcile.RetryLater as later:
        raise kopf.TemporaryError(str(later), delay=later.delay) from later
