"""The Job and ConfigMap built for a task."""

from __future__ import annotations

import json
from typing import Any

import pytest
from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings
from evaluation_operator.manifests import build_configmap, build_job
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.s3 import results_location
from evaluation_operator.spec import SpecError, parse_task_spec
from evaluation_operator.task import Task

SETTINGS = OperatorSettings(s3_bucket="eval-results", runner_image="runner:1",
                            s3_endpoint="http://minio:9000")
UID = "0b6c4f5e-1111-2222-3333-444455556666"


def task(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "m", "endpoint": {"url": "http://m:8000/v1",
                                            "apiKeySecretRef": {"name": "k", "key": "token"}}},
        "benchmarks": [{"name": "arc", "dataset": {"uri": "s3://datasets/arc.jsonl"},
                        "task": "multiple-choice", "metrics": ["accuracy"]}],
    }
    base.update(spec)
    return {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
            "metadata": {"name": "t", "namespace": "team-a", "uid": UID}, "spec": base}


def job_for(**spec: Any) -> dict[str, Any]:
    t = task(**spec)
    return build_job(Task.from_body(t, SETTINGS), parse_task_spec(t["spec"], SETTINGS), SETTINGS)


def test_gpu_limit_retries_and_deadline() -> None:
    job = job_for(resources={"gpu": 4, "memory": "32Gi"}, retries=3, timeout="1h30m")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["limits"]["memory"] == "32Gi"
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["activeDeadlineSeconds"] == 5400


def test_no_gpu_requested_means_no_gpu_limit() -> None:
    container = job_for(resources={"gpu": 0})["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_custom_gpu_resource_name() -> None:
    container = job_for(resources={"gpu": 1, "gpuResource": "amd.com/gpu"})[
        "spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["amd.com/gpu"] == "1"


def test_pod_failure_policy_fails_fast_on_config_errors_and_ignores_preemption() -> None:
    rules = job_for()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {
        "containerName": "runner", "operator": "In", "values": [78]}}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert job_for()["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_restricted_pod_security() -> None:
    pod = job_for()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert {"name": "scratch", "mountPath": "/tmp"} in container["volumeMounts"]


def test_secrets_only_by_reference() -> None:
    job = job_for()
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EVAL_MODEL_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "k", "key": "token"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == \
        "evaluation-s3-credentials"
    assert all("value" not in e or e["name"] in ("HOME", "TMPDIR", "HF_HOME")
               for e in env.values())


def test_scheduling_and_kueue() -> None:
    job = job_for(scheduling={
        "nodeSelector": {"pool": "h100"}, "priorityClassName": "batch-low", "queueName": "team-a",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert pod["priorityClassName"] == "batch-low"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    assert "suspend" not in job_for()["spec"]


def test_owner_reference_and_labels() -> None:
    job = job_for()
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("EvaluationTask", UID, True)
    assert job["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "evaluation-operator",
        "evaluation.dev/task": "t", "evaluation.dev/task-uid": UID}
    assert job["spec"]["template"]["metadata"]["labels"] == job["metadata"]["labels"]


def test_long_task_names_get_short_deterministic_children() -> None:
    long_name = "a" * 200
    name = naming.job_name(long_name)
    assert len(name) <= 63 and name.endswith("-eval")
    assert name == naming.job_name(long_name)
    assert name != naming.job_name("a" * 199 + "b")
    assert len(naming.task_label_value(long_name)) <= 63


def test_configmap_holds_the_runner_config_without_secrets() -> None:
    t = task(benchmarks=[
        {"name": "squad", "dataset": {"configMap": {"name": "squad", "key": "squad.jsonl"},
                                      "fields": {"prompt": "question"}},
         "task": "generation", "metrics": ["f1"], "limit": 5},
        {"name": "boolq", "dataset": {"pvc": {"claimName": "data", "path": "/boolq/v.csv"}},
         "task": "classification", "metrics": ["f1"], "labels": ["yes", "no"]},
    ])
    spec = parse_task_spec(t["spec"], SETTINGS)
    location = results_location("eval-results", "runs", "team-a", "t", UID)
    config = build_runner_config(spec, name="t", namespace="team-a", uid=UID,
                                 location=location, settings=SETTINGS)
    cm = build_configmap(Task.from_body(t, SETTINGS), config)
    data = json.loads(cm["data"]["config.json"])
    assert data["output"]["s3"] == {"bucket": "eval-results",
                                    "prefix": f"runs/team-a/t/{UID}/",
                                    "endpointUrl": "http://minio:9000", "region": None}
    assert data["benchmarks"][0]["dataset"]["uri"] == "/datasets/squad/squad.jsonl"
    assert data["benchmarks"][0]["dataset"]["fields"]["prompt"] == "question"
    assert data["benchmarks"][1]["dataset"]["uri"] == "/datasets/boolq/boolq/v.csv"
    assert data["model"]["endpoint"]["apiKeyEnv"] == "EVAL_MODEL_API_KEY"
    assert "token" not in cm["data"]["config.json"]
    job = build_job(Task.from_body(t, SETTINGS), spec, SETTINGS)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dataset-0"]["configMap"]["name"] == "squad"
    assert volumes["dataset-1"]["persistentVolumeClaim"] == {"claimName": "data",
                                                             "readOnly": True}


@pytest.mark.parametrize(("spec", "field"), [
    ({"timeout": "soon"}, "spec.timeout"),
    ({"output": {"s3": {"prefix": "../x"}}}, "spec.output.s3.prefix"),
    ({"benchmarks": []}, "spec.benchmarks"),
    ({"model": {"name": "m"}}, "spec.model"),
])
def test_spec_errors_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_task_spec(task(**spec)["spec"], SETTINGS)
    assert error.value.field == field


def test_no_bucket_anywhere_is_an_error() -> None:
    with pytest.raises(SpecError, match="EVAL_S3_BUCKET"):
        parse_task_spec(task()["spec"], OperatorSettings())


def test_model_weights_on_a_pvc_are_mounted_read_only_and_named_in_the_config() -> None:
    t = task(model={"name": "m", "source": {"pvc": {"claimName": "weights",
                                                    "path": "llama3-8b/"}}})
    spec = parse_task_spec(t["spec"], SETTINGS)
    job = build_job(Task.from_body(t, SETTINGS), spec, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "weights",
                                                         "readOnly": True}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["model"] == {"name": "model", "mountPath": "/models", "readOnly": True}
    location = results_location("eval-results", "runs", "team-a", "t", UID)
    config = build_runner_config(spec, name="t", namespace="team-a", uid=UID,
                                 location=location, settings=SETTINGS)
    assert config["model"] == {"name": "m", "endpoint": None,
                               "source": {"uri": "/models/llama3-8b"}}


def test_model_from_s3_needs_no_volume() -> None:
    pod = job_for(model={"name": "m", "source": {"uri": "s3://models/m/"}})[
        "spec"]["template"]["spec"]
    assert "model" not in {v["name"] for v in pod["volumes"]}


def test_finished_jobs_are_removed_after_the_configured_ttl() -> None:
    assert job_for()["spec"]["ttlSecondsAfterFinished"] == SETTINGS.job_ttl_seconds
    t = task()
    kept = OperatorSettings(s3_bucket="eval-results", job_ttl_seconds=0)
    job = build_job(Task.from_body(t, kept), parse_task_spec(t["spec"], kept), kept)
    assert "ttlSecondsAfterFinished" not in job["spec"]
