"""What the handlers do, against the Kubernetes API and S3.

Every step is idempotent and derived from what exists, so a restarted operator converges:
children have deterministic names (409 AlreadyExists means "already made"), status is
recomputed from the Job and its pods, and terminal phases are final.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import defaultdict
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from evaluation_operator import metrics, naming
from evaluation_operator.manifests import build_configmap, build_job
from evaluation_operator.results_store import (
    ResultsLocation,
    purge,
    read_json,
    results_location,
    s3_client,
)
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.settings import OperatorSettings
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
    progress_status,
    render_status,
    scores_from_summary,
    summary_is_complete,
)

log = logging.getLogger(__name__)
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """The few API calls the operator makes."""

    def __init__(self, api_client: Any | None = None) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

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

    def create_if_absent(self, manifest: dict[str, Any]) -> bool:
        """Create; True if created now, False if it already existed."""
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

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            job = self.batch.read_namespaced_job(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        result: dict[str, Any] = self.batch.api_client.sanitize_for_serialization(job)
        return result

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    def job_pods(self, namespace: str, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"]["uid"]
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"controller-uid={uid}")
        items: list[dict[str, Any]] = self.core.api_client.sanitize_for_serialization(pods)[
            "items"]
        return items


def _task_context(task: dict[str, Any], spec: TaskSpec | None) -> TaskContext:
    raw = task.get("spec") or {}
    resources = raw.get("resources") or {}
    return TaskContext(
        job_name=naming.job_name(task["metadata"]["name"]),
        timeout=str(raw.get("timeout", "2h")),
        retries=int(raw.get("retries", 2)),
        gpus=spec.resources.gpu if spec else int(resources.get("gpu", 1)),
        gpu_resource=spec.resources.gpu_resource if spec else "nvidia.com/gpu",
        memory=str(resources.get("memory", "8Gi")),
        queue_name=spec.scheduling.queue_name if spec else "",
    )


def task_location(task: dict[str, Any], spec: TaskSpec) -> ResultsLocation:
    meta = task["metadata"]
    return results_location(spec.output.bucket, spec.output.prefix, meta["namespace"],
                            meta["name"], meta["uid"])


def _results_field(location: ResultsLocation) -> dict[str, str]:
    return {"uri": location.uri, "bundle": location.bundle_uri}


def _event(task: dict[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        import kopf

        reference = {"apiVersion": task.get("apiVersion", f"{naming.GROUP}/{naming.VERSION}"),
                     "kind": task.get("kind", naming.KIND), "metadata": task["metadata"]}
        kopf.event(kopf.Body(reference),  # type: ignore[arg-type]
                   type=type_, reason=reason, message=message[:1024])
    except Exception:  # events are best effort; status carries the same information
        log.debug("could not post event %s for %s", reason, task["metadata"]["name"])


def ensure_children(task: dict[str, Any], settings: OperatorSettings, kube: Kube) -> None:
    """Create the ConfigMap and Job of a task that is not finished yet."""
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
    config = build_runner_config(spec, name=meta["name"], namespace=meta["namespace"],
                                 uid=meta["uid"], location=location, settings=settings)
    kube.create_if_absent(build_configmap(task, config))
    created = kube.create_if_absent(build_job(task, spec, settings))
    if created:
        _event(task, "Normal", "JobCreated",
               f"Created Job {naming.job_name(meta['name'])}; results will go to {location.uri}")
    refresh_status(meta["namespace"], meta["name"], settings, kube, task=task)


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
    _event(task, "Warning", "InvalidSpec", message)


def refresh_status(
    namespace: str, name: str, settings: OperatorSettings, kube: Kube,
    task: dict[str, Any] | None = None, s3: Any | None = None,
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
        if job is not None and job["metadata"].get("ownerReferences", [{}])[0].get(
                "uid") != task["metadata"]["uid"]:
            job = None  # a Job of an older task with the same name, on its way out
        pods = kube.job_pods(namespace, job) if job else []
        assessment = assess(job, pods, _task_context(task, spec))
        scores = None
        if assessment.phase == COMPLETED:
            summary = assessment.runner_summary
            if not summary_is_complete(summary):
                try:
                    summary = read_json(s3 or s3_client(settings), location, "summary.json")
                except Exception as error:
                    summary = None
                    log.warning("reading summary.json for %s/%s: %s", namespace, name, error)
                if not summary_is_complete(summary):
                    assessment = Assessment(
                        EVALUATING, "CollectingResults",
                        f"The runner finished, but its scores could not be read yet (neither "
                        f"the termination message nor {location.uri}summary.json); retrying.",
                        scheduled=True, start_time=assessment.start_time)
            if summary_is_complete(summary):
                scores = scores_from_summary(summary or {})
        status = render_status(
            previous, assessment, generation=int(task["metadata"].get("generation", 1)),
            now=now_iso(), job_name=job_name, configmap_name=naming.configmap_name(name),
            results=_results_field(location), scores=scores,
        )
        if _same(previous, status):
            return previous
        kube.patch_task_status(namespace, name, status)
        _after_transition(task, previous, status, assessment, kube)
        return status


def _same(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    keys = set(previous) | set(status)
    return all(previous.get(k) == status.get(k) for k in keys)


def _after_transition(task: dict[str, Any], previous: dict[str, Any], status: dict[str, Any],
                      assessment: Assessment, kube: Kube) -> None:
    meta = task["metadata"]
    if (previous.get("phase"), previous.get("reason")) == (status["phase"], status["reason"]):
        return
    kind = "Warning" if status["phase"] == FAILED or status["reason"] in (
        "Unschedulable", "CollectingResults") else "Normal"
    _event(task, kind, status["reason"], status["message"])
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
        progress = read_json(s3 or s3_client(settings), location, "progress.json")
    except Exception as error:
        log.info("progress for %s/%s not readable: %s", meta["namespace"], meta["name"], error)
        return
    value = progress_status(progress or {})
    if value and value != status.get("progress"):
        kube.patch_task_status(meta["namespace"], meta["name"], {"progress": value})


def nothing_was_written(task: dict[str, Any]) -> bool:
    """No runner pod ever started, so the task has no results to purge."""
    status = task.get("status") or {}
    return not status.get("startTime") and status.get("phase") != COMPLETED


def purge_task_results(task: dict[str, Any], settings: OperatorSettings, s3: Any | None = None
                       ) -> int:
    """Delete every object and version under the task's prefix. Raises when S3 fails."""
    status = task.get("status") or {}
    uri = (status.get("results") or {}).get("uri")
    if uri:
        location = ResultsLocation.from_uri(uri)
    else:
        location = task_location(task, parse_task_spec(task.get("spec") or {}, settings))
    return purge(s3 or s3_client(settings), location)


def purge_failed_status(task: dict[str, Any], error: Exception, retry_in: float) -> dict[str, Any]:
    meta = task["metadata"]
    status = task.get("status") or {}
    message = (f"Deleting the results failed: {error}. The task stays until they are gone; "
               f"retrying in {int(retry_in)}s. Check the operator's S3 endpoint and credentials.")
    conditions = merge_conditions(
        status.get("conditions") or [],
        {"ResultsPurged": ("False", "PurgeFailed", message)},
        int(meta.get("generation", 1)), now_iso(),
    )
    return {"conditions": conditions, "message": message}
