"""An EvaluationTask from the user's side: apply, watch status, read scores, fail, delete.

The test plays the runner: it writes the S3 objects a runner would write and finishes the
KWOK pod with the runner's exit code and termination message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster.cluster import GPU_NODES, Cluster
from devcluster.kwok_pods import finish_pod, unpullable_image

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
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

BENCHMARK_SCORES = [
    {"name": "arc-easy", "score": 0.75, "primaryMetric": "accuracy",
     "metrics": {"accuracy": 0.75}, "samples": 4},
    {"name": "wmt-de-en", "score": 0.3012, "primaryMetric": "bleu",
     "metrics": {"bleu": 30.12, "exact-match": 0.25}, "samples": 4},
]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_applies_and_gets_a_status(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, example: Path
) -> None:
    docs = list(yaml.safe_load_all(example.read_text()))
    manifest = next(doc for doc in docs if doc["kind"] == "EvaluationTask")
    # A dataset ConfigMap the example only names is the user's to create: without it the
    # task waits with no Job (MissingReference; tests/integration/test_references.py).
    shipped = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ConfigMap"}
    for benchmark in manifest["spec"]["benchmarks"]:
        ref = benchmark["dataset"].get("configMap")
        if ref and ref["name"] not in shipped:
            cluster.kubectl("create", "configmap", ref["name"], "-n", namespace,
                            f"--from-literal={ref['key']}={{}}")
    cluster.kubectl("apply", "-n", namespace, "-f", str(example))
    name = manifest["metadata"]["name"]
    status = wait_status(cluster, namespace, name, "a phase", lambda s: s.get("phase"))
    assert status["phase"] == "Evaluating"
    assert status["jobName"] == f"{name}-eval"
    job = cluster.kubectl_json("get", "job", f"{name}-eval", "-n", namespace)
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus = (manifest["spec"].get("resources") or {}).get("gpu", 1)
    assert limits.get("nvidia.com/gpu", "0") == str(gpus)
    mounted = {v["configMap"]["name"] for v in job["spec"]["template"]["spec"]["volumes"]
               if "configMap" in v}
    for benchmark in manifest["spec"]["benchmarks"]:
        if "configMap" in benchmark["dataset"]:
            assert benchmark["dataset"]["configMap"]["name"] in mounted


def test_task_runs_on_a_gpu_node_and_completes_with_scores(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    create_task(cluster, namespace, task_manifest("llm-eval", resources={"gpu": 2}))
    job = cluster.wait_until("the Job", lambda: cluster.kubectl(
        "get", "job", "llm-eval-eval", "-n", namespace, "-o", "json", check=False).stdout)
    job = json.loads(job)
    pod_spec = job["spec"]["template"]["spec"]
    runner = pod_spec["containers"][0]
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert runner["securityContext"]["allowPrivilegeEscalation"] is False
    assert runner["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec["automountServiceAccountToken"] is False
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["metadata"]["ownerReferences"][0]["kind"] == "EvaluationTask"

    pod = running_pod(cluster, namespace, "llm-eval")
    assert pod["spec"]["nodeName"] in GPU_NODES
    status = wait_status(cluster, namespace, "llm-eval", "Running",
                         lambda s: condition(s, "Running").get("status") == "True")
    assert status["phase"] == "Evaluating"
    assert condition(status, "Scheduled")["status"] == "True"
    assert condition(status, "Reconciling")["status"] == "True"
    assert status["observedGeneration"] == 1

    # While running, progress.json is mirrored into status.
    s3 = s3_server.client()
    prefix = prefix_of(status)
    assert prefix.startswith(f"runs/{namespace}/llm-eval/")
    s3.put_object(Bucket=BUCKET, Key=prefix + "progress.json",
                  Body=json.dumps({"samplesDone": 3, "samplesTotal": 8}).encode())
    status = wait_status(cluster, namespace, "llm-eval", "progress",
                         lambda s: (s.get("progress") or {}).get("samplesDone") == 3)
    assert status["progress"]["text"] == "3/8"

    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0.4508, BENCHMARK_SCORES, status["results"]["uri"]))
    status = wait_status(cluster, namespace, "llm-eval", "Completed",
                         lambda s: s.get("phase") == "Completed")
    assert status["overallScore"] == pytest.approx(0.4508)
    assert {b["name"]: b["score"] for b in status["benchmarks"]} == {
        "arc-easy": 0.75, "wmt-de-en": 0.3012}
    assert status["benchmarks"][1]["metrics"] == {"bleu": 30.12, "exact-match": 0.25}
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Reconciling")["status"] == "False"
    assert status["completionTime"] and status["startTime"]

    table = cluster.kubectl("get", "evaluationtasks", "-n", namespace).stdout
    row = next(line for line in table.splitlines() if line.startswith("llm-eval"))
    assert "Completed" in row and "0.4508" in row and "tiny-llm" in row
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "evt/llm-eval",
                    "--timeout=5s")
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=llm-eval").stdout
    # Events are for what needs attention; progress is in the status, not repeated as Events.
    assert "JobCreated" not in events and "PodPending" not in events


def test_scores_come_from_summary_json_when_the_message_was_truncated(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    create_task(cluster, namespace, task_manifest("big-eval"))
    pod = running_pod(cluster, namespace, "big-eval")
    status = wait_status(cluster, namespace, "big-eval", "results location",
                         lambda s: s.get("results"))
    summary = {"overallScore": 0.5, "benchmarks": BENCHMARK_SCORES}
    s3_server.client().put_object(Bucket=BUCKET, Key=prefix_of(status) + "summary.json",
                                  Body=json.dumps(summary).encode())
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0, [], "", truncated=True))
    status = wait_status(cluster, namespace, "big-eval", "Completed",
                         lambda s: s.get("phase") == "Completed")
    assert status["overallScore"] == 0.5
    assert [b["name"] for b in status["benchmarks"]] == ["arc-easy", "wmt-de-en"]


def test_waiting_for_a_gpu_says_so(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    create_task(cluster, namespace, task_manifest("greedy", resources={"gpu": 16}))
    status = wait_status(cluster, namespace, "greedy", "Scheduled=False",
                         lambda s: condition(s, "Scheduled").get("status") == "False")
    assert status["phase"] == "Evaluating"
    scheduled = condition(status, "Scheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert "16 free nvidia.com/gpu" in status["message"]
    assert "Insufficient nvidia.com/gpu" in status["message"]


def test_image_that_cannot_be_pulled_fails_the_task_and_frees_the_gpu(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    create_task(cluster, namespace, task_manifest(
        "bad-image", framework={"name": "builtin", "image": unpullable_image()}))
    # First a grace period (registries have bad minutes), saying what is wrong...
    status = wait_status(cluster, namespace, "bad-image", "ImagePullBackOff",
                         lambda s: s.get("reason") == "ImagePullBackOff")
    assert status["phase"] == "Evaluating"
    assert "cannot be pulled yet" in status["message"]
    # ...then the task fails and the GPU is freed.
    status = wait_status(cluster, namespace, "bad-image", "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "ImagePullError"
    assert unpullable_image() in status["message"]
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Ready")["status"] == "False"
    cluster.wait_until("the Job deleted", lambda: cluster.kubectl(
        "get", "job", "bad-image-eval", "-n", namespace, check=False).returncode != 0)


def test_deadline_exceeded(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    create_task(cluster, namespace, task_manifest("slow", timeout="1h"))
    running_pod(cluster, namespace, "slow")
    # Shorten the Job's deadline (a mutable field) instead of waiting out the CRD's 1m minimum.
    cluster.kubectl("patch", "job", "slow-eval", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"activeDeadlineSeconds": 1}}')
    status = wait_status(cluster, namespace, "slow", "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "DeadlineExceeded"
    assert "spec.timeout (1h)" in status["message"]


def test_retries_exhausted_after_runner_failures(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any
) -> None:
    create_task(cluster, namespace, task_manifest("flaky", retries=1))
    first = running_pod(cluster, namespace, "flaky")
    finish_pod(core, namespace, first["metadata"]["name"], 1)
    status = wait_status(cluster, namespace, "flaky", "a retry",
                         lambda s: "Attempt 2 of 2" in (s.get("message") or ""))
    assert status["phase"] == "Evaluating"
    second = running_pod(cluster, namespace, "flaky")
    assert second["metadata"]["name"] != first["metadata"]["name"]
    failure = json.dumps({"v": 1, "status": "Failed", "reason": "RunnerError",
                          "message": "tokenizer crashed on sample 17"})
    finish_pod(core, namespace, second["metadata"]["name"], 1, message=failure)
    status = wait_status(cluster, namespace, "flaky", "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "RetriesExhausted"
    assert "failed 2 time(s)" in status["message"]
    assert "tokenizer crashed on sample 17" in status["message"]


def test_out_of_memory(cluster: Cluster, namespace: str, running_operator: OperatorProcess,
                       core: Any) -> None:
    create_task(cluster, namespace, task_manifest(
        "hungry", retries=0, resources={"gpu": 1, "memory": "4Gi"}))
    pod = running_pod(cluster, namespace, "hungry")
    finish_pod(core, namespace, pod["metadata"]["name"], 137, reason="OOMKilled")
    status = wait_status(cluster, namespace, "hungry", "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "OOMKilled"
    assert "spec.resources.memory (now 4Gi)" in status["message"]


def test_configuration_error_fails_at_once_without_retrying(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any
) -> None:
    create_task(cluster, namespace, task_manifest("misconfigured", retries=3))
    pod = running_pod(cluster, namespace, "misconfigured")
    message = json.dumps({"v": 1, "status": "Failed", "reason": "ConfigurationError",
                          "message": "benchmarks[0].dataset.uri: s3://datasets/arc-easy.jsonl "
                                     "does not exist"})
    finish_pod(core, namespace, pod["metadata"]["name"], 78, message=message)
    status = wait_status(cluster, namespace, "misconfigured", "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "ConfigurationError"
    assert "benchmarks[0].dataset.uri" in status["message"]
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                "evaluation.dev/task=misconfigured")["items"]
    assert len(pods) == 1, "a configuration error must not be retried"


def test_transient_failure_is_retried_and_then_succeeds(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any
) -> None:
    create_task(cluster, namespace, task_manifest("bumpy", retries=2))
    pod = running_pod(cluster, namespace, "bumpy")
    failure = json.dumps({"v": 1, "status": "Failed", "reason": "ModelUnreachable",
                          "message": "model endpoint refused connections"})
    finish_pod(core, namespace, pod["metadata"]["name"], 75, message=failure)
    status = wait_status(cluster, namespace, "bumpy", "a retry",
                         lambda s: "model endpoint refused connections" in (s.get("message")
                                                                            or ""))
    assert status["phase"] == "Evaluating"
    pod = running_pod(cluster, namespace, "bumpy")
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0.9, BENCHMARK_SCORES, status["results"]["uri"]))
    status = wait_status(cluster, namespace, "bumpy", "Completed",
                         lambda s: s.get("phase") == "Completed")
    assert status["overallScore"] == 0.9


def _write_versioned_results(s3: Any, prefix: str) -> None:
    for key in ("summary.json", "summary.csv", "results.zip", "benchmarks/arc-easy/samples.jsonl"):
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=b"first")
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=b"second")
    s3.delete_object(Bucket=BUCKET, Key=prefix + "summary.csv")  # leaves a delete marker


def test_delete_purges_every_version_and_leaves_the_neighbour_alone(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    s3 = s3_server.client()
    prefixes = {}
    for name in ("doomed", "doomed-2"):
        create_task(cluster, namespace, task_manifest(name))
        pod = running_pod(cluster, namespace, name)
        status = wait_status(cluster, namespace, name, "started",
                             lambda s: s.get("startTime") and s.get("results"))
        prefixes[name] = prefix_of(status)
        _write_versioned_results(s3, prefixes[name])
        finish_pod(core, namespace, pod["metadata"]["name"], 0, message=success_message(
            0.5, BENCHMARK_SCORES, status["results"]["uri"]))
    assert len(versions_under(s3, prefixes["doomed"])) == 9

    cluster.kubectl("delete", "evaluationtask", "doomed", "-n", namespace, "--timeout=60s")
    assert versions_under(s3, prefixes["doomed"]) == []
    assert len(versions_under(s3, prefixes["doomed-2"])) == 9
    cluster.wait_until("Job and ConfigMap garbage-collected", lambda: cluster.kubectl(
        "get", "job/doomed-eval", "configmap/doomed-config", "-n", namespace,
        check=False).returncode != 0, timeout=60)
    cluster.wait_until("a ResultsPurged event", lambda: "Deleted 9 object versions" in
                       cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                       "involvedObject.name=doomed").stdout, timeout=20)


def test_delete_waits_for_s3_and_purges_when_it_is_back(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    s3 = s3_server.client()
    create_task(cluster, namespace, task_manifest("outage"))
    pod = running_pod(cluster, namespace, "outage")
    status = wait_status(cluster, namespace, "outage", "started",
                         lambda s: s.get("startTime") and s.get("results"))
    prefix = prefix_of(status)
    _write_versioned_results(s3, prefix)
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0.5, BENCHMARK_SCORES, status["results"]["uri"]))
    wait_status(cluster, namespace, "outage", "Completed", lambda s: s.get("phase") == "Completed")

    s3_server.stop()
    try:
        cluster.kubectl("delete", "evaluationtask", "outage", "-n", namespace, "--wait=false")
        status = wait_status(cluster, namespace, "outage", "purge failure reported",
                             lambda s: condition(s, "ResultsPurged").get("status") == "False")
        assert "Deleting the results failed" in condition(status, "ResultsPurged")["message"]
        task = get_task(cluster, namespace, "outage")
        assert task is not None and "evaluation.dev/purge-results" in task["metadata"][
            "finalizers"]
        events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                 "involvedObject.name=outage").stdout
        assert "PurgeFailed" in events
    finally:
        s3_server.restart()
    cluster.wait_until("the task gone", lambda: get_task(cluster, namespace, "outage") is None,
                       timeout=60)
    assert versions_under(s3, prefix) == []


def test_task_that_never_ran_deletes_at_once_even_without_s3(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, s3_server: S3Endpoint
) -> None:
    create_task(cluster, namespace, task_manifest("never-ran", resources={"gpu": 16}))
    wait_status(cluster, namespace, "never-ran", "Unschedulable",
                lambda s: condition(s, "Scheduled").get("status") == "False")
    s3_server.stop()
    try:
        cluster.kubectl("delete", "evaluationtask", "never-ran", "-n", namespace,
                        "--timeout=30s")
    finally:
        s3_server.restart()


def test_operator_killed_mid_run_restarts_without_a_second_job(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any
) -> None:
    create_task(cluster, namespace, task_manifest("survivor"))
    pod = running_pod(cluster, namespace, "survivor")
    job_uid = cluster.kubectl_json("get", "job", "survivor-eval", "-n", namespace)[
        "metadata"]["uid"]
    # In-progress status is written after a short debounce: wait until the run is recorded.
    status_before = wait_status(cluster, namespace, "survivor", "started",
                                lambda s: s.get("startTime") and s.get("results"))
    running_operator.kill()
    # The runner finishes while no operator is watching.
    finish_pod(core, namespace, pod["metadata"]["name"], 0, message=success_message(
        0.66, BENCHMARK_SCORES, status_before["results"]["uri"]))
    cluster.wait_until("Job complete", lambda: any(
        c["type"] == "Complete" and c["status"] == "True" for c in cluster.kubectl_json(
            "get", "job", "survivor-eval", "-n", namespace)["status"].get("conditions", [])))
    running_operator.start()
    status = wait_status(cluster, namespace, "survivor", "Completed",
                         lambda s: s.get("phase") == "Completed")
    assert status["overallScore"] == 0.66
    assert status["startTime"] == status_before["startTime"]
    jobs = cluster.kubectl_json("get", "jobs", "-n", namespace, "-l",
                                "evaluation.dev/task=survivor")["items"]
    assert [j["metadata"]["uid"] for j in jobs] == [job_uid]
