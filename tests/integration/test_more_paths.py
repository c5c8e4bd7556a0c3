"""More of a task's life on the real control plane: runner failure without retries, a Kueue
queue, long names, deleting a running task, re-creating a task under the same name."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from devcluster.cluster import GPU_NODES, Cluster
from devcluster.kwok_pods import finish_pod

from tests.integration.conftest import (
    BUCKET,
    OperatorProcess,
    condition,
    create_task,
    get_task,
    prefix_of,
    running_pod,
    success_message,
    task_manifest,
    versions_under,
    wait_status,
)
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]

SCORES = [{"name": "arc-easy", "score": 0.5, "primaryMetric": "accuracy",
           "metrics": {"accuracy": 0.5}, "samples": 2},
          {"name": "wmt-de-en", "score": 0.2, "primaryMetric": "bleu",
           "metrics": {"bleu": 20.0}, "samples": 2}]


def test_runner_failure_without_retries_says_what_to_check(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any
) -> None:
    create_task(cluster, namespace, task_manifest("unreachable", retries=0))
    pod = running_pod(cluster, namespace, "unreachable")
    failure = json.dumps({"v": 1, "status": "Failed", "reason": "ModelUnreachable",
                          "message": "http://tiny-llm.models.svc:8000/v1: connection refused"})
    finish_pod(core, namespace, pod["metadata"]["name"], 75, message=failure)
    status = wait_status(cluster, namespace, "unreachable", "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "RunnerFailed"
    assert "connection refused" in status["message"]
    assert "spec.model.endpoint.url" in status["message"]
    assert condition(status, "Failed")["reason"] == "RunnerFailed"
    assert condition(status, "Stalled")["status"] == "True"
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                "evaluation.dev/task=unreachable")["items"]
    assert len(pods) == 1


def test_kueue_queue_holds_the_job_until_admitted(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any
) -> None:
    create_task(cluster, namespace, task_manifest("queued", scheduling={"queueName": "gpu-q"}))
    status = wait_status(cluster, namespace, "queued", "Queued",
                         lambda s: s.get("reason") == "Queued")
    assert status["phase"] == "Evaluating"
    assert "gpu-q" in status["message"]
    assert condition(status, "Scheduled") == {**condition(status, "Scheduled"),
                                              "status": "False", "reason": "Queued"}
    job = cluster.kubectl_json("get", "job", "queued-eval", "-n", namespace)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-q"
    assert cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                "evaluation.dev/task=queued")["items"] == []
    # Kueue admits the workload by unsuspending the Job.
    cluster.kubectl("patch", "job", "queued-eval", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"suspend": false}}')
    running_pod(cluster, namespace, "queued")
    wait_status(cluster, namespace, "queued", "Running",
                lambda s: condition(s, "Running").get("status") == "True")


def test_long_task_name_gets_hashed_children_and_a_full_status(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any
) -> None:
    name = "llama-3-70b-instruct-reasoning-and-translation-suite-nightly-2026-11-27"
    assert len(name) > 63
    create_task(cluster, namespace, task_manifest(name))
    status = wait_status(cluster, namespace, name, "Running",
                         lambda s: condition(s, "Running").get("status") == "True")
    job_name = status["jobName"]
    assert len(job_name) <= 63 and job_name.endswith("-eval") and job_name != f"{name}-eval"
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                f"batch.kubernetes.io/job-name={job_name}")["items"]
    assert len(pods) == 1 and pods[0]["spec"]["nodeName"] in GPU_NODES
    finish_pod(core, namespace, pods[0]["metadata"]["name"], 0,
               message=success_message(0.35, SCORES, status["results"]["uri"]))
    status = wait_status(cluster, namespace, name, "Completed",
                         lambda s: s.get("phase") == "Completed")
    assert status["overallScore"] == 0.35


def test_deleting_a_running_task_stops_the_runner_and_purges(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, s3_server: S3Endpoint
) -> None:
    s3 = s3_server.client()
    create_task(cluster, namespace, task_manifest("cancelled"))
    pod = running_pod(cluster, namespace, "cancelled")
    status = wait_status(cluster, namespace, "cancelled", "started",
                         lambda s: s.get("startTime") and s.get("results"))
    prefix = prefix_of(status)
    for key in ("progress.json", "benchmarks/arc-easy/samples.jsonl"):
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=b"partial")
    cluster.kubectl("delete", "evaluationtask", "cancelled", "-n", namespace, "--timeout=60s")
    assert versions_under(s3, prefix) == []
    assert cluster.kubectl("get", "pod", pod["metadata"]["name"], "-n", namespace,
                           check=False).returncode != 0, "the runner pod was stopped"


def test_recreating_a_task_under_the_same_name_starts_a_fresh_run(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    s3 = s3_server.client()
    first = create_task(cluster, namespace, task_manifest("nightly"))
    pod = running_pod(cluster, namespace, "nightly")
    status = wait_status(cluster, namespace, "nightly", "started",
                         lambda s: s.get("startTime") and s.get("results"))
    first_prefix = prefix_of(status)
    s3.put_object(Bucket=BUCKET, Key=first_prefix + "summary.json", Body=b"{}")
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0.1, SCORES, status["results"]["uri"]))
    wait_status(cluster, namespace, "nightly", "Completed", lambda s: s.get("phase") == "Completed")

    cluster.kubectl("delete", "evaluationtask", "nightly", "-n", namespace, "--timeout=60s")
    second = create_task(cluster, namespace, task_manifest("nightly"))
    new_uid = second["metadata"]["uid"]
    assert new_uid != first["metadata"]["uid"]
    # Whatever the garbage collector has left of the first run, the new task gets its own Job.
    pod = running_pod(cluster, namespace, "nightly", timeout=90)
    assert pod["metadata"]["labels"]["evaluation.dev/task-uid"] == new_uid
    job = cluster.kubectl_json("get", "job", "nightly-eval", "-n", namespace)
    assert job["metadata"]["ownerReferences"][0]["uid"] == new_uid
    status = wait_status(cluster, namespace, "nightly", "Running",
                         lambda s: condition(s, "Running").get("status") == "True")
    assert new_uid in status["results"]["uri"]
    assert versions_under(s3, first_prefix) == []
    task = get_task(cluster, namespace, "nightly")
    assert task is not None and task["status"]["phase"] == "Evaluating"


def test_job_deleted_before_the_runner_started_is_created_again(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    create_task(cluster, namespace, task_manifest("waiting", resources={"gpu": 16}))
    wait_status(cluster, namespace, "waiting", "Unschedulable",
                lambda s: condition(s, "Scheduled").get("status") == "False")
    old_uid = cluster.kubectl_json("get", "job", "waiting-eval", "-n", namespace)[
        "metadata"]["uid"]
    cluster.kubectl("delete", "job", "waiting-eval", "-n", namespace)

    def recreated() -> bool:
        result = cluster.kubectl("get", "job", "waiting-eval", "-n", namespace, "-o", "json",
                                 check=False)
        return result.returncode == 0 and json.loads(result.stdout)["metadata"]["uid"] != old_uid

    cluster.wait_until("the Job created again", recreated, timeout=30)
    status = get_task(cluster, namespace, "waiting")
    assert status is not None and status["status"]["phase"] == "Evaluating"


def test_job_deleted_mid_run_fails_the_task(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    create_task(cluster, namespace, task_manifest("orphaned"))
    running_pod(cluster, namespace, "orphaned")
    wait_status(cluster, namespace, "orphaned", "started", lambda s: s.get("startTime"))
    cluster.kubectl("delete", "job", "orphaned-eval", "-n", namespace)
    status = wait_status(cluster, namespace, "orphaned", "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "JobDeleted"
    assert "Create a new task" in status["message"]
    # Not silently re-run: no new Job appears.
    assert cluster.kubectl("get", "job", "orphaned-eval", "-n", namespace,
                           check=False).returncode != 0


def test_operator_killed_during_a_stuck_purge_finishes_it_after_restart(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    s3 = s3_server.client()
    create_task(cluster, namespace, task_manifest("interrupted"))
    pod = running_pod(cluster, namespace, "interrupted")
    status = wait_status(cluster, namespace, "interrupted", "started",
                         lambda s: s.get("startTime") and s.get("results"))
    prefix = prefix_of(status)
    s3.put_object(Bucket=BUCKET, Key=prefix + "summary.json", Body=b"{}")
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0.2, SCORES, status["results"]["uri"]))
    wait_status(cluster, namespace, "interrupted", "Completed",
                lambda s: s.get("phase") == "Completed")
    s3_server.stop()
    try:
        cluster.kubectl("delete", "evaluationtask", "interrupted", "-n", namespace,
                        "--wait=false")
        wait_status(cluster, namespace, "interrupted", "purge failure reported",
                    lambda s: condition(s, "ResultsPurged").get("status") == "False")
        running_operator.kill()
    finally:
        s3_server.restart()
    assert get_task(cluster, namespace, "interrupted") is not None, \
        "without an operator the finalizer keeps the task"
    running_operator.start()
    cluster.wait_until("the task gone", lambda: get_task(cluster, namespace,
                                                         "interrupted") is None, timeout=60)
    assert versions_under(s3, prefix) == []


def test_operator_watching_one_namespace_leaves_the_others_alone(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, s3_server: S3Endpoint,
    tmp_path: Path,
) -> None:
    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    running_operator.kill()  # the cluster-wide one; the next test gets it back
    scoped = OperatorProcess(cluster, s3_server, tmp_path, flags=("--namespace", namespace))
    scoped.start()
    try:
        create_task(cluster, namespace, task_manifest("watched"))
        create_task(cluster, other, task_manifest("unwatched"))
        wait_status(cluster, namespace, "watched", "Evaluating",
                    lambda s: s.get("phase") == "Evaluating")
        time.sleep(3)
        unwatched = get_task(cluster, other, "unwatched")
        assert unwatched is not None and not unwatched.get("status")
        assert not unwatched["metadata"].get("finalizers")
        assert cluster.kubectl("get", "job", "unwatched-eval", "-n", other,
                               check=False).returncode != 0
    finally:
        scoped.stop()
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
