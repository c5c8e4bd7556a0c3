"""EvaluationTask objects as the operator writes them, one per situation users meet.

Built by the operator's own code (`status.assess` + `render_status`, and the purge-failure
status), from Job and pod objects shaped like the API server's, so the GitOps health checks
are tested against what the operator really produces rather than hand-written statuses.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from evaluation_operator.collecting import collect_scores
from evaluation_operator.config import OperatorSettings
from evaluation_operator.deletion import purge_failed_status
from evaluation_operator.reconcile import cancelled
from evaluation_operator.s3 import ResultsLocation
from evaluation_operator.spec import Gate
from evaluation_operator.status import (
    Assessment,
    TaskContext,
    acknowledge_generation,
    assess,
    render_status,
)
from evaluation_operator.task import Task

CTX = TaskContext(job_name="llm-eval-eval", timeout="2h", retries=2, gpus=1,
                  gpu_resource="nvidia.com/gpu", memory="16Gi")
RESULTS = {"uri": "s3://eval-results/runs/team-a/llm-eval/u1/",
           "bundle": "s3://eval-results/runs/team-a/llm-eval/u1/results.zip"}
ARC_EASY = {"name": "arc-easy", "score": 0.81, "primaryMetric": "accuracy",
            "metrics": {"accuracy": 0.81}, "samples": 500}
SUMMARY = {"v": 1, "status": "Succeeded", "overallScore": 0.7132, "benchmarks": [ARC_EASY],
           "results": RESULTS}


def _job(conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "llm-eval-eval", "uid": "job-uid"}, "spec": {},
            "status": {"conditions": conditions or [], "startTime": "2026-01-01T00:00:00Z"}}


def _pod(phase: str, *, node: str | None = "gpu-node-0", state: dict[str, Any] | None = None,
         conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "llm-eval-eval-x1", "creationTimestamp": "2026-01-01T00:00:01Z"},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": conditions or [],
                   "startTime": None if phase == "Pending" else "2026-01-01T00:00:05Z",
                   "containerStatuses": [{"name": "runner", "image": "runner:0.1.0",
                                          "state": state or {}}]},
    }


def _terminated(code: int, message: dict[str, Any] | None = None, reason: str = "Error"
                ) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason,
                           "message": json.dumps(message) if message else "",
                           "finishedAt": "2026-01-01T00:30:00Z"}}


def task(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
        "metadata": {"name": "llm-eval", "namespace": "team-a", "generation": generation,
                     "uid": "u1"},
        "spec": {"model": {"name": "tiny"}},
    }
    if status is not None:
        body["status"] = status
    return body


PARTIAL = {"v": 1, "status": "PartiallyFailed", "partial": True, "overallScore": 0.81,
           "benchmarks": [ARC_EASY,
                          {"name": "gsm8k", "state": "Failed",
                           "error": "benchmarks[1].dataset.uri: s3://datasets/gsm8k.jsonl "
                                    "cannot be read: NoSuchKey"}],
           "results": RESULTS}


def _render(job: dict[str, Any] | None, pods: list[dict[str, Any]], generation: int = 1,
            gates: tuple[Gate, ...] = (), previous: dict[str, Any] | None = None,
            assessment: Assessment | None = None) -> dict[str, Any]:
    assessment, scores = collect_scores(
        assessment or assess(job, pods, CTX), lambda: None,
        ResultsLocation("eval-results", "runs/team-a/llm-eval/u1/"),
        limit_seconds=300, now=datetime.datetime(2026, 1, 1, 0, 31, tzinfo=datetime.UTC))
    return render_status(previous or {}, assessment, generation=generation,
                         now="2026-01-01T00:31:00Z", job_name=CTX.job_name,
                         configmap_name="llm-eval-config", results=RESULTS, scores=scores,
                         gates=gates)


def statuses() -> dict[str, tuple[dict[str, Any], str]]:
    """situation -> (task object, the Argo CD health it should get)."""
    unschedulable = _pod("Pending", node=None, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    completed = _render(_job([{"type": "Complete", "status": "True"}]),
                        [_pod("Succeeded", state=_terminated(0, SUMMARY, "Completed"))])
    deleting = task({**completed, **purge_failed_status(
        Task.from_body(task(completed), OperatorSettings()), RuntimeError("AccessDenied"), 60)})
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    running = _render(_job(), [_pod("Running", state={"running": {}})])
    done = (_job([{"type": "Complete", "status": "True"}]),
            [_pod("Succeeded", state=_terminated(0, SUMMARY, "Completed"))])
    gates_passed = _render(*done, gates=(Gate("arc-easy", "accuracy", min=0.8),))
    gates_failed = _render(*done, gates=(Gate("arc-easy", "accuracy", min=0.85),
                                         Gate(None, None, min=0.7)))
    # spec.cancel: true (generation 2) on a running task, and on one that had completed.
    cancel = cancelled(Task.from_body(task(running, generation=2), OperatorSettings()),
                       running, job_existed=True)
    return {
        "new": (task(None), "Progressing"),
        "job-pending": (task(_render(None, [])), "Progressing"),
        "waiting-for-gpu": (task(_render(_job(), [unschedulable])), "Progressing"),
        "running": (task(running), "Progressing"),
        "running-with-progress": (task({**running, "progress": {
            "samplesDone": 350, "samplesTotal": 1000, "text": "350/1000"}}), "Progressing"),
        "running-a-benchmark": (task({**running, "currentBenchmark": "arc-easy", "benchmarks": [
            {"name": "arc-easy", "state": "Running", "samplesDone": 350, "samplesTotal": 500,
             "startedAt": "2026-01-01T00:10:00Z"},
            {"name": "gsm8k", "state": "Pending", "samplesDone": 0, "samplesTotal": 500}]}),
            "Progressing"),
        "completed": (task(completed), "Healthy"),
        "partially-failed": (task(_render(
            _job([{"type": "Complete", "status": "True"}]),
            [_pod("Succeeded", state=_terminated(0, PARTIAL, "Completed"))])), "Degraded"),
        "retries-exhausted": (task(_render(
            _job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
            [_pod("Failed", state=_terminated(1))])), "Degraded"),
        "configuration-error": (task(_render(
            _job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]),
            [_pod("Failed", state=_terminated(78, {
                "v": 1, "status": "Failed", "reason": "ConfigurationError",
                "message": "benchmarks[0].dataset.uri: s3://datasets/x.jsonl does not exist"}))]
        )), "Degraded"),
        "deadline-exceeded": (task(_render(
            _job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]), [])),
            "Degraded"),
        "image-pull-error": (task(_render(_job(), [_pod("Pending", state={"waiting": {
            "reason": "ImagePullBackOff", "message": "not found"}})])), "Degraded"),
        "purge-failing": (deleting, "Degraded"),
        # A status written for generation 1 seen with generation 2: not yet observed.
        "stale-generation": (task(completed, generation=2), "Progressing"),
        "completed-gates-passed": (task(gates_passed), "Healthy"),
        "completed-gates-failed": (task(gates_failed), "Degraded"),
        "cancelled": (task(_render(None, [], generation=2, previous=running,
                                   assessment=cancel), generation=2), "Suspended"),
        "cancel-after-completion": (task(acknowledge_generation(completed, 2), generation=2),
                                    "Healthy"),
    }
