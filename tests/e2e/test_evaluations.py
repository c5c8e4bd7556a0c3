"""Real EvaluationTasks run as real pods of the runner image on the real node.

Every task is pinned to the node with its hostname; the model server and S3 are the session's
scripted server and moto on the node bridge's gateway. What each test checks is what a user
sees: status, the bundle in S3, and, for the stop paths, that the runner really stopped.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from devcluster.node import RealNode

from tests.e2e.support import (
    QUIZ_ANSWERS,
    QUIZ_ROWS,
    TRANSLATION_ANSWERS,
    TRANSLATION_ROWS,
    Timings,
    create_task,
    kill_runner,
    prefix_of,
    processes_in_pod,
    quiz_benchmark,
    read_object,
    results_zip,
    translation_benchmark,
    versions_under,
)
from tests.support.s3 import S3Endpoint

pytestmark = pytest.mark.e2e


def assert_status_mirrors_the_bundle(s3: S3Endpoint, status: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(read_object(s3, prefix_of(status) + "summary.json"))
    assert status["overallScore"] == summary["overallScore"]
    assert [(b["name"], b["score"], b["metrics"], b["samples"]) for b in status["benchmarks"]] \
        == [(b["name"], b["score"], b["metrics"], b["samples"]) for b in summary["benchmarks"]]
    return summary


def assert_bundle_is_complete(s3: S3Endpoint, status: dict[str, Any],
                              rows: dict[str, list[dict[str, Any]]],
                              predictions: dict[str, list[str]] | None = None) -> None:
    """results.zip: the summary table, each benchmark's metrics, every sample's prediction."""
    with results_zip(s3, status) as bundle:
        names = set(bundle.namelist())
        table = list(csv.DictReader(io.StringIO(bundle.read("summary.csv").decode())))
        for benchmark in status["benchmarks"]:
            name = benchmark["name"]
            assert {f"benchmarks/{name}/metrics.json", f"benchmarks/{name}/samples.jsonl"} \
                <= names
            metrics = json.loads(bundle.read(f"benchmarks/{name}/metrics.json"))
            assert metrics["metrics"] == benchmark["metrics"]
            assert {r["metric"] for r in table if r["benchmark"] == name} == set(
                benchmark["metrics"])
            samples = [json.loads(line) for line in
                       bundle.read(f"benchmarks/{name}/samples.jsonl").decode().splitlines()]
            assert len(samples) == len(rows[name]) == benchmark["samples"]
            assert all(isinstance(s["prediction"], str) for s in samples)
            if predictions and name in predictions:
                assert [s["prediction"] for s in samples] == predictions[name]


def test_builtin_multiple_choice_and_generation_complete_with_the_bundles_scores(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        spec_for: Any, timings: Timings) -> None:
    model.answers = {**QUIZ_ANSWERS, **TRANSLATION_ANSWERS}
    run = create_task(cluster, e2e_namespace, "builtin", spec_for(
        quiz_benchmark(), translation_benchmark()))

    status = run.finish(timings, "builtin mc + generation")

    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    quiz = next(b for b in status["benchmarks"] if b["name"] == "quiz")
    assert quiz["metrics"]["accuracy"] == 0.75  # 3 of 4 scripted answers are right
    assert_status_mirrors_the_bundle(pod_s3, status)
    assert_bundle_is_complete(
        pod_s3, status, {"quiz": QUIZ_ROWS, "wmt-de-en": TRANSLATION_ROWS},
        {"wmt-de-en": [TRANSLATION_ANSWERS[k] for k in ("Das Haus", "Katzen", "Morgen")]})
    # The runner ran in the real container: it asked the scripted server for every sample.
    assert len(model.requests) == len(QUIZ_ROWS) + len(TRANSLATION_ROWS)


def test_lm_eval_framework_completes_in_its_image(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        spec_for: Any, images: dict[str, str], real_node: RealNode, timings: Timings) -> None:
    started = time.monotonic()
    real_node.import_image(images["evaluation-runner-lm-eval"])  # big: only when needed
    timings.record("import the lm-eval image", "imported", time.monotonic() - started)
    model.answers = dict(TRANSLATION_ANSWERS)
    run = create_task(cluster, e2e_namespace, "lm-eval", spec_for(
        translation_benchmark(),
        framework={"name": "lm-eval", "image": images["evaluation-runner-lm-eval"]},
        resources={"gpu": 0, "cpu": "1", "memory": "2Gi"}))

    status = run.finish(timings, "lm-eval generation", timeout=420)

    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    summary = assert_status_mirrors_the_bundle(pod_s3, status)
    assert summary["framework"]["name"] == "lm-eval" and summary["framework"]["version"]
    assert_bundle_is_complete(
        pod_s3, status, {"wmt-de-en": TRANSLATION_ROWS},
        {"wmt-de-en": [TRANSLATION_ANSWERS[k] for k in ("Das Haus", "Katzen", "Morgen")]})


def test_memory_limit_ends_in_oomkilled(
        cluster: Cluster, e2e_namespace: str, spec_for: Any, timings: Timings) -> None:
    run = create_task(cluster, e2e_namespace, "oom", spec_for(
        resources={"gpu": 0, "cpu": "500m", "memory": "40Mi"}))

    status = run.finish(timings, "memory limit")

    assert (status["phase"], status["reason"]) == ("Failed", "OOMKilled"), status
    assert "spec.resources.memory" in status["message"]
    terminated = run.pods()[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled"  # the kernel's verdict, not a script's


def test_missing_dataset_is_a_configuration_error_without_retry(
        cluster: Cluster, e2e_namespace: str, spec_for: Any, timings: Timings) -> None:
    missing = "s3://datasets/no-such-file.jsonl"
    run = create_task(cluster, e2e_namespace, "no-dataset", spec_for(
        quiz_benchmark(uri=missing), retries=2))

    status = run.finish(timings, "missing dataset")

    assert (status["phase"], status["reason"]) == ("Failed", "ConfigurationError"), status
    assert missing in status["message"]
    assert len(run.pods()) == 1, "a configuration error must not be retried"
    terminated = run.pods()[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 78


def test_missing_image_ends_in_image_pull_error(
        cluster: Cluster, e2e_namespace: str, spec_for: Any, timings: Timings) -> None:
    image = "evaluation.local/no-such-runner:0"
    run = create_task(cluster, e2e_namespace, "no-image", spec_for(
        framework={"name": "builtin", "image": image}))

    status = run.finish(timings, "missing image")

    assert (status["phase"], status["reason"]) == ("Failed", "ImagePullError"), status
    assert image in status["message"]


def test_timeout_ends_in_deadline_exceeded_with_the_pod_stopped(
        cluster: Cluster, e2e_namespace: str, model: FakeLLM, spec_for: Any,
        timings: Timings) -> None:
    model.delay_seconds = 600  # the model never answers in time
    run = create_task(cluster, e2e_namespace, "deadline", spec_for(timeout="1m"))
    pod_uid = run.running_pod()["metadata"]["uid"]

    status = run.finish(timings, "timeout 1m", timeout=200)

    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded"), status
    cluster.wait_until("the deadline's pod to stop on the node",
                       lambda: not processes_in_pod(pod_uid), timeout=60)


def test_runner_killed_mid_run_is_retried_and_completes(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        spec_for: Any, timings: Timings) -> None:
    model.answers = dict(QUIZ_ANSWERS)
    model.delay_seconds = 600  # the first attempt hangs on the model...
    run = create_task(cluster, e2e_namespace, "killed", spec_for(retries=1))
    first = run.running_pod()["metadata"]["uid"]
    cluster.wait_until("the runner to ask the model", lambda: model.requests, timeout=120)
    model.delay_seconds = 0  # ...the retry does not
    kill_runner(first)

    status = run.finish(timings, "runner killed, retried")

    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    assert status["overallScore"] == 0.75
    assert run.job()["status"].get("failed") == 1
    assert len({p["metadata"]["uid"] for p in run.pods()}) == 2
    assert_status_mirrors_the_bundle(pod_s3, status)


def test_delete_during_a_run_stops_the_pod_then_purges_everything(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        spec_for: Any, timings: Timings) -> None:
    model.delay_seconds = 600
    run = create_task(cluster, e2e_namespace, "deleted", spec_for())
    pod_uid = run.running_pod()["metadata"]["uid"]
    status = run.wait("results location in status", lambda s: (s.get("results") or {}).get(
        "uri"), timeout=60)
    prefix = prefix_of(status)
    cluster.wait_until("the runner's first progress.json",
                       lambda: versions_under(pod_s3, prefix), timeout=120)
    assert processes_in_pod(pod_uid), "the runner should be running"

    started = time.monotonic()
    cluster.kubectl("delete", "evaluationtask", run.name, "-n", e2e_namespace, "--wait=true",
                    "--timeout=180s", timeout=200)
    timings.record("delete during a run", "purged", time.monotonic() - started)

    assert not processes_in_pod(pod_uid), "the task went while its runner still ran"
    assert versions_under(pod_s3, prefix) == []
    # A runner still alive would write progress.json again within its interval (2 s).
    time.sleep(5)
    assert versions_under(pod_s3, prefix) == []


def test_cancel_during_a_run_stops_the_pod_and_keeps_the_uploads(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        spec_for: Any, timings: Timings) -> None:
    model.delay_seconds = 600  # the runner is mid-run when the cancel comes
    run = create_task(cluster, e2e_namespace, "cancelled", spec_for(
        gates=[{"overall": True, "min": 0.5}]))
    pod_uid = run.running_pod()["metadata"]["uid"]
    status = run.wait("results location in status", lambda s: (s.get("results") or {}).get(
        "uri"), timeout=60)
    prefix = prefix_of(status)
    cluster.wait_until("the runner to ask the model", lambda: model.requests, timeout=120)

    started = time.monotonic()
    cluster.kubectl("patch", "evaluationtask", run.name, "-n", e2e_namespace, "--type=merge",
                    "-p", '{"spec": {"cancel": true}}')
    status = run.finish(timings, "cancel during a run", timeout=120)
    assert (status["phase"], status["reason"]) == ("Failed", "Cancelled"), status
    cluster.wait_until("the cancelled runner to stop on the node",
                       lambda: not processes_in_pod(pod_uid), timeout=90)
    timings.record("cancel during a run", "runner stopped", time.monotonic() - started)
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert (passed["status"], passed["reason"]) == ("False", "RunNotCompleted")

    # The runner's own log went up as it stopped (its SIGTERM path is the only upload
    # before the end), where the status says; nothing was purged, and nothing is written
    # after the pod is gone.
    assert status["results"]["log"] == f"{status['results']['uri']}runner.log"
    versions = sorted(versions_under(pod_s3, prefix))
    assert {prefix + "progress.json", prefix + "runner.log"} <= set(versions), versions
    assert b"benchmark quiz: 4 samples" in read_object(pod_s3, prefix + "runner.log")
    time.sleep(5)
    assert sorted(versions_under(pod_s3, prefix)) == versions


# A missing Secret or key as the real kubelet reports it (CreateContainerConfigError), mapped
# back to the task's own field (issue 10): the KWOK tests play the kubelet's words, here the
# kubelet itself says them.
def test_a_missing_secret_or_key_as_the_kubelet_reports_it(
        cluster: Cluster, e2e_namespace: str, spec_for: Any, model: Any,
        timings: Timings) -> None:
    cluster.kubectl("create", "secret", "generic", "llm-key-wrong", "-n", e2e_namespace,
                    "--from-literal=other=x")
    runs = {}
    for name, secret in (("no-secret", "llm-key"), ("no-key", "llm-key-wrong")):
        spec = spec_for()
        spec["model"]["endpoint"]["apiKeySecretRef"] = {"name": secret, "key": "token"}
        runs[name] = create_task(cluster, e2e_namespace, name, spec)
    expected = {
        "no-secret": ('spec.model.endpoint.apiKeySecretRef.name: Secret "llm-key" not found '
                      f'in namespace "{e2e_namespace}"'),
        "no-key": ('spec.model.endpoint.apiKeySecretRef.key: Secret "llm-key-wrong" in '
                   f'namespace "{e2e_namespace}" has no key "token"'),
    }
    for name, text in expected.items():
        status = runs[name].finish(timings, f"missing reference ({name})")
        assert (status["phase"], status["reason"]) == ("Failed", "ReferenceNotFound"), status
        # The operator never reads Secrets: the field comes from the kubelet's message alone.
        assert status["message"].startswith(text), status
