"""Preemption on the real node: the runner's pod is evicted (as the scheduler's preemption or
a node drain does) or deleted mid-benchmark, and the replacement pod resumes from the
checkpoints.

The unit/runner tier proves resume with a process killed on the host
(tests/runner/test_resume.py); this is the same promise through Kubernetes: eviction, the
Job's podFailurePolicy, a new pod of the same task uid, and the bundle saying what it reused.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM

from tests.e2e.support import (
    DATA_BUCKET,
    Timings,
    create_task,
    prefix_of,
    read_object,
)
from tests.support.s3 import S3Endpoint

pytestmark = pytest.mark.e2e

ROWS = [{"q": f"number {i}?", "a": f"answer {i}"} for i in range(24)]


def evict(cluster: Cluster, namespace: str, pod: str) -> None:
    """The Eviction API: what `kubectl drain` and the cluster autoscaler call; the pod gets
    SIGTERM and the DisruptionTarget condition."""
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
                    "-f", "-", input=json.dumps({
                        "apiVersion": "policy/v1", "kind": "Eviction",
                        "metadata": {"name": pod, "namespace": namespace}}))


def delete(cluster: Cluster, namespace: str, pod: str) -> None:
    """A plain delete (a person, or a controller): SIGTERM, and no DisruptionTarget condition,
    so the Job counts the attempt against its retries."""
    cluster.kubectl("delete", "pod", pod, "-n", namespace, "--wait=false")


# (how the pod goes, spec.retries): an eviction spends no retry; a plain delete spends one.
@pytest.mark.parametrize(("stop", "retries", "what"),
                         [(evict, 0, "evicted"), (delete, 1, "deleted")], ids=["evict", "delete"])
def test_a_runner_pod_stopped_mid_run_is_replaced_and_resumes_without_asking_again(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        spec_for: Any, timings: Timings, stop: Any, retries: int,
        what: str) -> None:
    pod_s3.client().put_object(Bucket=DATA_BUCKET, Key="resume.jsonl", Body="".join(
        json.dumps(r) + "\n" for r in ROWS).encode())
    model.answers = {r["q"]: r["a"] for r in ROWS[::2]}  # half right
    model.delay_seconds = 1.0  # slow enough to stop the pod half-way
    benchmark = {"name": "qa", "dataset": {"uri": f"s3://{DATA_BUCKET}/resume.jsonl",
                                           "fields": {"prompt": "q", "reference": "a"}},
                 "task": "generation", "metrics": ["exact-match"]}
    # retries: 0 with an eviction: it is not the runner's failure (the Job's podFailurePolicy
    # ignores DisruptionTarget), so the replacement must come without spending a retry.
    run = create_task(cluster, e2e_namespace, what,
                      spec_for(benchmark, retries=retries))
    first = run.running_pod()["metadata"]
    cluster.wait_until("the runner to have asked a few questions",
                       lambda: len(model.requests) >= 4, timeout=120)
    stop(cluster, e2e_namespace, first["name"])
    asked_before = len(model.requests)
    model.delay_seconds = 0.0

    status = run.finish(timings, f"pod {what} mid-run, resumed")

    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    assert status["benchmarks"][0]["metrics"]["exact-match"] == 0.5  # every sample scored
    assert len({p["metadata"]["uid"] for p in run.pods()} | {first["uid"]}) == 2
    prompts = Counter(r["messages"][-1]["content"] for r in model.requests)
    assert len(prompts) == len(ROWS)
    assert max(prompts.values()) == 1, f"asked again after the eviction: {prompts}"
    summary = json.loads(read_object(pod_s3, prefix_of(status) + "summary.json"))
    resumed = summary["resumed"]["benchmarks"]["qa"]
    # Requests under way at SIGTERM finish and are saved before the runner exits.
    assert resumed["answersReused"] >= asked_before > 0, summary["resumed"]
    assert resumed["answersReused"] + resumed["answersRequested"] == len(ROWS)
