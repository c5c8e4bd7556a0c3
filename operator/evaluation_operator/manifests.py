"""Pure builders for the ConfigMap and Job of one EvaluationTask."""

from __future__ import annotations

import json
from typing import Any

from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings
from evaluation_operator.runner_config import (
    CONFIG_DIR,
    CONFIG_KEY,
    MODEL_API_KEY_ENV,
    MODELS_DIR,
    dataset_mount_dir,
)
from evaluation_operator.spec import TaskSpec
from evaluation_operator.task import Task

RUNNER_CONTAINER = "runner"
RUNNER_UID = 65532
EXIT_CONFIGURATION_ERROR = 78
EXIT_TRANSIENT_ERROR = 75
TERMINATION_MESSAGE_PATH = "/dev/termination-log"


def owner_reference(task: Task) -> dict[str, Any]:
    return {
        "apiVersion": f"{naming.GROUP}/{naming.VERSION}",
        "kind": naming.KIND,
        "name": task.name,
        "uid": task.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(task: Task, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": task.namespace,
        "labels": naming.child_labels(task.name, task.uid),
        "annotations": naming.child_annotations(task.name),
        "ownerReferences": [owner_reference(task)],
    }


def build_configmap(task: Task, runner_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(task, task.configmap_name),
        "data": {CONFIG_KEY: json.dumps(runner_config, indent=2, sort_keys=True)},
    }


def _env(spec: TaskSpec) -> list[dict[str, Any]]:
    secret = spec.output.credentials_secret
    env: list[dict[str, Any]] = [
        {"name": "AWS_ACCESS_KEY_ID",
         "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "AWS_SECRET_ACCESS_KEY",
         "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}}},
        {"name": "AWS_SESSION_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SESSION_TOKEN",
                                        "optional": True}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
    ]
    if spec.model.endpoint and spec.model.endpoint.api_key:
        ref = spec.model.endpoint.api_key
        env.append({"name": MODEL_API_KEY_ENV,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _data_volumes(spec: TaskSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read-only volumes for ConfigMap and PVC datasets and a PVC model: (volumes, mounts)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.model.source_pvc_claim:
        volumes.append({"name": "model", "persistentVolumeClaim": {
            "claimName": spec.model.source_pvc_claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
    for index, benchmark in enumerate(spec.benchmarks):
        dataset = benchmark.dataset
        volume_name = f"dataset-{index}"
        if dataset.configmap:
            volumes.append({"name": volume_name, "configMap": {
                "name": dataset.configmap.name,
                "items": [{"key": dataset.configmap.key, "path": dataset.configmap.key}],
            }})
        elif dataset.pvc_claim:
            volumes.append({"name": volume_name, "persistentVolumeClaim": {
                "claimName": dataset.pvc_claim, "readOnly": True}})
        else:
            continue
        mounts.append({"name": volume_name, "mountPath": dataset_mount_dir(benchmark),
                       "readOnly": True})
    return volumes, mounts


def build_job(task: Task, spec: TaskSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The evaluation Job: one pod, or with spec.parallelism N > 1 an Indexed Job of N pods
    (pod i answers shard i; evaluation_runner.sharding), each with spec.resources."""
    job = _job(task, spec, settings, task.job_name, gpus=True, args=[])
    if spec.parallelism > 1:
        job["spec"].update({
            "completionMode": "Indexed",
            "completions": spec.parallelism,
            "parallelism": spec.parallelism,
            # Each index retries on its own; one index out of retries fails the Job at once
            # (the others' answers cannot make a complete result without it).
            "backoffLimitPerIndex": spec.retries,
            "maxFailedIndexes": 0,
        })
        del job["spec"]["backoffLimit"]  # defaults to "no limit" beside backoffLimitPerIndex
    return job


def build_merge_job(task: Task, spec: TaskSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The merge of a sharded run, created once every index succeeded: the runner in merge
    mode scores all shards' answers and writes the bundle. CPU only; outside Kueue's queue
    (the shards' workload is admitted and done; the merge holds no GPU)."""
    job = _job(task, spec, settings, task.merge_job_name, gpus=False, args=["--mode", "merge"])
    job["metadata"]["labels"].pop(naming.LABEL_KUEUE_QUEUE, None)
    job["spec"].pop("suspend", None)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        labels[naming.LABEL_ROLE] = naming.ROLE_MERGE
    return job


def _job(task: Task, spec: TaskSpec, settings: OperatorSettings, name: str, *, gpus: bool,
         args: list[str]) -> dict[str, Any]:
    task_name = task.name
    labels = naming.child_labels(task_name, task.uid)
    metadata = _metadata(task, name)
    resources: dict[str, Any] = {
        "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
        "limits": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
    }
    if gpus and spec.resources.gpu > 0:
        resources["limits"][spec.resources.gpu_resource] = str(spec.resources.gpu)
        resources["requests"][spec.resources.gpu_resource] = str(spec.resources.gpu)
    data_volumes, data_mounts = _data_volumes(spec)
    container = {
        "name": RUNNER_CONTAINER,
        "image": spec.image or settings.runner_image,
        "imagePullPolicy": settings.runner_image_pull_policy,
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}", *args],
        "env": _env(spec),
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": "/tmp"},
            *data_mounts,
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": naming.configmap_name(task_name)}},
            {"name": "scratch", "emptyDir": {}},
            *data_volumes,
        ],
    }
    if spec.scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(spec.scheduling.node_selector)
    if spec.scheduling.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.scheduling.tolerations]
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.retries,
        "activeDeadlineSeconds": spec.timeout_seconds,
        "completions": 1,
        "parallelism": 1,
        # Never two runner pods at once: a replacement starts only after the old one failed.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {
                "containerName": RUNNER_CONTAINER, "operator": "In",
                "values": [EXIT_CONFIGURATION_ERROR]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]},
        # Once the status holds the outcome, finished Jobs and pods need not fill the cluster.
        **({"ttlSecondsAfterFinished": settings.job_ttl_seconds}
           if settings.job_ttl_seconds else {}),
        "template": {"metadata": {"labels": labels,
                                  "annotations": naming.child_annotations(task_name)},
                     "spec": pod_spec},
    }
    if spec.scheduling.queue_name:
        metadata["labels"][naming.LABEL_KUEUE_QUEUE] = spec.scheduling.queue_name
        job_spec["suspend"] = True  # Kueue unsuspends the Job when it admits it
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
