"""What the handlers do, against the Kubernetes API and S3.

Every step is idempotent and derived from what exists, so a restarted operator converges:
children have deterministic names (409 AlreadyExists means "already made"), status is
recomputed from the Job and its pods, and terminal phases are final.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections import defaultdict
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from evaluation_operator import apiclient, events, metrics, naming, runner_output
from evaluation_operator.collecting import collect_scores
from evaluation_operator.config import OperatorSettings
from evaluation_operator.manifests import build_configmap, build_job
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.s3 import (
    ResultsLocation,
    purge,
    read_capped,
    results_location,
    s3_client,
)
from evaluation_operator.spec import SpecError, TaskSpec, parse_task_spec
from evaluation_operator.status import (
    COMPLETED,
    EVALUATING,
    FAILED,
    TERMINAL_PHASES,
    Assessment,
    TaskContext,
    assess,
    merge_conditions,
    render_status,
)

log = logging.getLogger(__name__)
# Job events, pod events and the timer may refresh one task at once, from different threads.
_locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
FINISHED_POD_PHASES = ("Succeeded", "Failed")


class RetryLater(Exception):
    """Not done yet; the handler asks Kopf to call again after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class ForeignChildError(RetryLater):
    """A child with our deterministic name belongs to an older task of the same name (deleted
    and re-created before the garbage collector removed its Job): wait until it is gone."""


class RejectedSpecError(Exception):
    """The API server refused a child built from the spec (422): retrying cannot help."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_uid(obj: dict[str, Any]) -> str | None:
    for owner in obj.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == naming.KIND:
            return str(owner.get("uid"))
    return None


def api_client_from_environment(settings: OperatorSettings | None = None) -> client.ApiClient:
    """In-cluster credentials, else the kubeconfig; every request with a deadline."""
    return apiclient.api_client(settings or OperatorSettings())


class Kube:
    """The few API calls the operator makes."""

    def __init__(self, api_client: Any | None = None) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def _plain(self, obj: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.core.api_client.sanitize_for_serialization(obj)
        return result

    def get_task(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            task: dict[str, Any] = self.custom.get_namespaced_custom_object(
                naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name)
            return task
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name, {"status": status})

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create; True if created now, False if an object of that name already exists."""
        namespace = manifest["metadata"]["namespace"]
        try:
            if manifest["kind"] == "Job":
                self.batch.create_namespaced_job(namespace, manifest)
            else:
                self.core.create_namespaced_config_map(namespace, manifest)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.core.read_namespaced_config_map(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.batch.read_namespaced_job(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    def job_pods(self, namespace: str, job: dict[str, Any]) -> list[dict[str, Any]]:
        selector = f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
        items: list[dict[str, Any]] = self._plain(
            self.core.list_namespaced_pod(namespace, label_selector=selector))["items"]
        return items

    def task_pods(self, namespace: str, task_uid: str) -> list[dict[str, Any]]:
        selector = f"{naming.LABEL_TASK_UID}={task_uid}"
        items: list[dict[str, Any]] = self._plain(
            self.core.list_namespaced_pod(namespace, label_selector=selector))["items"]
        return items


def _task_context(task: dict[str, Any], spec: TaskSpec, settings: OperatorSettings
                  ) -> TaskContext:
    raw = task.get("spec") or {}
    return TaskContext(
        job_name=naming.job_name(task["metadata"]["name"]),
        timeout=str(raw.get("timeout", "2h")),
        retries=spec.retries,
        gpus=spec.resources.gpu,
        gpu_resource=spec.resources.gpu_resource,
        memory=spec.resources.memory,
        queue_name=spec.scheduling.queue_name,
        start_failure_grace_seconds=settings.start_failure_grace_seconds,
    )


def task_location(task: dict[str, Any], spec: TaskSpec) -> ResultsLocation:
    meta = task["metadata"]
    return results_location(spec.output.bucket, spec.output.prefix, meta["namespace"],
                            meta["name"], meta["uid"])


def _results_field(location: ResultsLocation) -> dict[str, str]:
    return {"uri": location.uri, "bundle": location.bundle_uri}


# --- creation -----------------------------------------------------------------------------


def _create_owned(kube: Kube, task: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Create a child; True if created now. An existing one is ours (a restart) unless it
    belongs to an older task of the same name."""
    if kube.create(manifest):
        return True
    meta = manifest["metadata"]
    try:
        existing = (kube.get_job if manifest["kind"] == "Job" else kube.get_configmap)(
            meta["namespace"], meta["name"])
    except ApiException as error:
        if error.status != 403:
            raise
        log.warning("cannot read %s %s/%s to check its owner (RBAC); assuming it is ours",
                    manifest["kind"], meta["namespace"], meta["name"])
        return False
    if existing is not None and _owner_uid(existing) not in (None, task["metadata"]["uid"]):
        raise ForeignChildError(
            f"{manifest['kind']} {meta['name']} still belongs to a deleted task of the same "
            "name; waiting for the garbage collector to remove it", delay=3)
    if existing is None:
        raise RetryLater(f"{manifest['kind']} {meta['name']} vanished while being created",
                         delay=1)
    return False


def _create_children(task: dict[str, Any], spec: TaskSpec, location: ResultsLocation,
                     settings: OperatorSettings, kube: Kube) -> bool:
    """Create the ConfigMap and the Job unless they exist; True if the Job was created now.

    Raises ForeignChildError while an older task's children are in the way, and
    RejectedSpecError when the API server refuses what the spec asks for (e.g. a toleration).
    """
    meta = task["metadata"]
    config = build_runner_config(spec, name=meta["name"], namespace=meta["namespace"],
                                 uid=meta["uid"], location=location, settings=settings)
    try:
        _create_owned(kube, task, build_configmap(task, config))
        created = _create_owned(kube, task, build_job(task, spec, settings))
    except ApiException as error:
        if error.status != 422:
            raise
        raise RejectedSpecError(_api_message(error)) from error
    if created:
        events.normal(task, "JobCreated", f"Created Job {naming.job_name(meta['name'])}; "
                                          f"results will go to {location.uri}")
    return created


def ensure_children(task: dict[str, Any], settings: OperatorSettings, kube: Kube) -> None:
    """Create the ConfigMap and Job of a task that is not finished yet.

    Raises RetryLater while an older task's children are in the way.
    """
    meta = task["metadata"]
    status = task.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        return
    try:
        spec = parse_task_spec(task.get("spec") or {}, settings)
        location = task_location(task, spec)
    except (SpecError, ValueError) as error:
        fail_invalid_spec(task, str(error), kube)
        return
    try:
        _create_children(task, spec, location, settings, kube)
    except ForeignChildError as waiting:
        _report_waiting(task, "PreviousRunCleanup", f"{waiting}.", kube)
        raise
    except RejectedSpecError as error:
        fail_invalid_spec(task, str(error), kube)
        return
    refresh_status(meta["namespace"], meta["name"], settings, kube)


def _report_waiting(task: dict[str, Any], reason: str, message: str, kube: Kube) -> None:
    meta = task["metadata"]
    previous = task.get("status") or {}
    if previous.get("reason") == reason:
        return
    status = render_status(
        previous, Assessment(EVALUATING, reason, message),
        generation=int(meta.get("generation", 1)), now=now_iso(),
        job_name=naming.job_name(meta["name"]), configmap_name=naming.configmap_name(meta["name"]),
        results=previous.get("results") or {})
    kube.patch_task_status(meta["namespace"], meta["name"], status)


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


def fail_invalid_spec(task: dict[str, Any], message: str, kube: Kube) -> None:
    meta = task["metadata"]
    previous = task.get("status") or {}
    assessment = Assessment(FAILED, "InvalidSpec",
                            f"Invalid spec: {message}. Fix it and create a new task.")
    status = render_status(
        previous, assessment, generation=int(meta.get("generation", 1)), now=now_iso(),
        job_name="", configmap_name="", results=previous.get("results") or {},
    )
    kube.patch_task_status(meta["namespace"], meta["name"], status)
    metrics.record_failure(meta["namespace"], "InvalidSpec")
    events.warning(task, "InvalidSpec", message)


# --- status -------------------------------------------------------------------------------


def refresh_status(
    namespace: str, name: str, settings: OperatorSettings, kube: Kube, s3: Any | None = None,
) -> dict[str, Any] | None:
    """Recompute the task's status from its Job and pods and write it if it changed."""
    with _locks[f"{namespace}/{name}"]:
        task = kube.get_task(namespace, name)  # always fresh: another thread may have written
        if task is None or task["metadata"].get("deletionTimestamp"):
            return None
        previous = task.get("status") or {}
        if previous.get("phase") in TERMINAL_PHASES:
            return previous
        try:
            spec = parse_task_spec(task.get("spec") or {}, settings)
            location = task_location(task, spec)
        except (SpecError, ValueError) as error:
            fail_invalid_spec(task, str(error), kube)
            return None
        job_name = naming.job_name(name)
        job = kube.get_job(namespace, job_name)
        if job is not None and _owner_uid(job) != task["metadata"]["uid"]:
            job = None  # a Job of an older task with the same name, on its way out
        assessment: Assessment | None = None
        if job is None and previous.get("startTime"):
            assessment = job_deleted(job_name, location)
        elif job is None:
            # No runner ever started, so (re)creating is safe: a create that was lost, or
            # an older task's Job that has gone now.
            try:
                if _create_children(task, spec, location, settings, kube):
                    job = kube.get_job(namespace, job_name)
            except ForeignChildError as waiting:
                assessment = Assessment(EVALUATING, "PreviousRunCleanup", f"{waiting}.")
            except RejectedSpecError as error:
                fail_invalid_spec(task, str(error), kube)
                return None
        if assessment is None:
            pods = kube.job_pods(namespace, job) if job else []
            assessment = assess(job, pods, _task_context(task, spec, settings),
                                now=datetime.datetime.now(datetime.UTC))
        scores = None
        if assessment.phase == COMPLETED:
            def read_summary() -> bytes | None:
                return read_capped(s3 or s3_client(settings), location, "summary.json",
                                   runner_output.MAX_SUMMARY_BYTES)

            assessment, scores = collect_scores(
                assessment, read_summary, location,
                limit_seconds=settings.results_timeout_seconds,
                now=datetime.datetime.now(datetime.UTC), s3_endpoint=settings.s3_endpoint)
        status = render_status(
            previous, assessment, generation=int(task["metadata"].get("generation", 1)),
            now=now_iso(), job_name=job_name, configmap_name=naming.configmap_name(name),
            results=_results_field(location), scores=scores,
        )
        if previous == status:
            return previous
        kube.patch_task_status(namespace, name, status)
        _after_transition(task, previous, status, kube)
        return status


def job_deleted(job_name: str, location: ResultsLocation) -> Assessment:
    return Assessment(
        FAILED, "JobDeleted",
        f"The Job {job_name} was deleted before the run finished; anything it wrote is under "
        f"{location.uri}. Create a new task (or delete and re-create this one) to run again.",
        scheduled=True)


def refresh_status_of_owner(child: dict[str, Any], settings: OperatorSettings, kube: Kube
                            ) -> None:
    """A Job or pod of ours changed: refresh its task (named by the child's annotation)."""
    meta = child.get("metadata") or {}
    task_name = (meta.get("annotations") or {}).get(naming.ANNOTATION_TASK_NAME) or (
        meta.get("labels") or {}).get(naming.LABEL_TASK)
    if task_name:
        refresh_status(str(meta["namespace"]), str(task_name), settings, kube)


def _after_transition(task: dict[str, Any], previous: dict[str, Any], status: dict[str, Any],
                      kube: Kube) -> None:
    meta = task["metadata"]
    if (previous.get("phase"), previous.get("reason")) == (status["phase"], status["reason"]):
        return
    if status["phase"] == FAILED or status["reason"] in (
            "Unschedulable", "CollectingResults", "ImagePullBackOff", "ContainerConfigPending"):
        events.warning(task, status["reason"], status["message"])
    else:
        events.normal(task, status["reason"], status["message"])
    metrics.observe_transition(meta["namespace"], meta["name"], previous, status,
                               created=meta.get("creationTimestamp"))
    if status["phase"] == FAILED:
        metrics.record_failure(meta["namespace"], status["reason"])
        if status["reason"] in ("ImagePullError", "ContainerConfigError"):
            # The Job would wait until its deadline holding a GPU: stop it now.
            kube.delete_job(meta["namespace"], naming.job_name(meta["name"]))
    if status["phase"] == COMPLETED:
        metrics.record_scores(meta["namespace"], meta["name"], status)


def refresh_progress(task: dict[str, Any], settings: OperatorSettings, kube: Kube,
                     s3: Any | None = None) -> None:
    meta = task["metadata"]
    status = task.get("status") or {}
    if status.get("phase") != EVALUATING or not status.get("startTime"):
        return
    try:
        location = ResultsLocation.from_uri(status["results"]["uri"])
        data = read_capped(s3 or s3_client(settings), location, "progress.json",
                           runner_output.MAX_PROGRESS_BYTES)
        if data is None:
            return
        value = runner_output.parse_progress(data).status_field()
    except Exception as error:
        # Progress is informational: a bad progress.json is not shown, and the run goes on.
        log.warning("progress.json of %s/%s not shown: %s", meta["namespace"], meta["name"],
                    error)
        return
    if value != status.get("progress"):
        kube.patch_task_status(meta["namespace"], meta["name"], {"progress": value})


def resync(namespace: str, name: str, settings: OperatorSettings, kube: Kube) -> None:
    """Periodic: catches anything the watches missed, and mirrors progress.json."""
    # Held across both writes, so a status refresh never puts back an older progress.
    with _locks[f"{namespace}/{name}"]:
        status = refresh_status(namespace, name, settings, kube)
        if status is not None:
            task = kube.get_task(namespace, name)
            if task is not None:
                refresh_progress(task, settings, kube)


# --- deletion -----------------------------------------------------------------------------


def runner_never_started(status: dict[str, Any], job: dict[str, Any] | None,
                         pods: list[dict[str, Any]]) -> bool:
    """True only when it is certain that no runner ever ran, so nothing can be in S3.

    Unsure means False: the purge then runs (and waits for S3 if it must).
    """
    if status.get("startTime") or status.get("phase") == COMPLETED:
        return False
    if status.get("reason") == "InvalidSpec" and job is None and not pods:
        return True  # the operator never created a Job for it
    if job is None:
        return False  # gone already (or never seen): cannot tell
    job_status = job.get("status") or {}
    if job_status.get("succeeded") or job_status.get("failed"):
        return False
    return not any((p.get("spec") or {}).get("nodeName") for p in pods)


# A pod on a node that died never confirms its deletion; waiting for it would keep the task
# (and its results) forever. Past its grace period and this much more, it counts as stopped.
UNCONFIRMED_STOP_SECONDS = 300


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


def delete_task(task: dict[str, Any], retry: int, settings: OperatorSettings, kube: Kube,
                s3: Any | None = None) -> None:
    """Stop the runner, then delete every object version under the task's prefix.

    The order matters: a runner still going after the purge would write its progress or
    results again, and they would stay behind. Raises RetryLater until both are done; the
    task (with its finalizer) stays meanwhile, saying why in its status and events.
    """
    meta = task["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    status = task.get("status") or {}
    job = kube.get_job(namespace, naming.job_name(name))
    if job is not None and _owner_uid(job) != uid:
        job = None
    pods = kube.task_pods(namespace, uid)
    if runner_never_started(status, job, pods):
        log.info("no runner of %s/%s ever started: nothing to purge", namespace, name)
        metrics.forget_task(namespace, name)
        return
    if job is not None:
        kube.delete_job(namespace, job["metadata"]["name"])
    running, overdue = pods_still_running(pods, datetime.datetime.now(datetime.UTC))
    if running:
        raise RetryLater(f"waiting for runner pod(s) {', '.join(running)} to stop before "
                         "deleting the results", delay=2)
    if overdue:
        events.warning(task, "RunnerStopUnconfirmed", (
            f"Pod(s) {', '.join(overdue)} never confirmed they stopped (is the node down?); "
            f"deleting the results anyway. Check {purge_location_uri(task, settings)} later: a "
            "runner still alive on that node could write there again."))
    started = time.monotonic()
    try:
        deleted = purge_task_results(task, settings, s3)
    except Exception as error:
        delay = purge_retry_delay(retry, settings.purge_retry_max_seconds)
        metrics.record_purge("failed", time.monotonic() - started)
        kube.patch_task_status(namespace, name, purge_failed_status(task, error, delay))
        events.warning(task, "PurgeFailed",
                       f"Deleting the results failed ({error}); retrying in {int(delay)}s")
        raise RetryLater(f"purge failed: {error}", delay=delay) from error
    metrics.record_purge("succeeded", time.monotonic() - started, deleted)
    metrics.forget_task(namespace, name)
    _locks.pop(f"{namespace}/{name}", None)
    events.normal(task, "ResultsPurged", f"Deleted {deleted} object versions")


def _purge_location(task: dict[str, Any], settings: OperatorSettings) -> ResultsLocation:
    uri = ((task.get("status") or {}).get("results") or {}).get("uri")
    if uri:
        return ResultsLocation.from_uri(uri)
    return task_location(task, parse_task_spec(task.get("spec") or {}, settings))


def purge_location_uri(task: dict[str, Any], settings: OperatorSettings) -> str:
    return _purge_location(task, settings).uri


def purge_task_results(task: dict[str, Any], settings: OperatorSettings, s3: Any | None = None
                       ) -> int:
    """Delete every object and version under the task's prefix. Raises when S3 fails."""
    return purge(s3 or s3_client(settings), _purge_location(task, settings))


def purge_failed_status(task: dict[str, Any], error: Exception, retry_in: float
                        ) -> dict[str, Any]:
    meta = task["metadata"]
    status = task.get("status") or {}
    message = (f"Deleting the results failed: {error}. The task stays until they are gone; "
               f"retrying in {int(retry_in)}s. Check the operator's S3 endpoint and "
               "credentials.")
    conditions = merge_conditions(
        status.get("conditions") or [],
        {"ResultsPurged": ("False", "PurgeFailed", message)},
        int(meta.get("generation", 1)), now_iso(),
    )
    return {"conditions": conditions, "message": message}
