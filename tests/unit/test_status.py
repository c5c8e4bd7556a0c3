"""Job and pod state -> phase, conditions and the message users read."""

from __future__ import annotations

import datetime
import json
from typing import Any

from evaluation_operator.runner_output import (
    BenchmarkScore,
    RunnerFailed,
    RunnerSucceeded,
    Scores,
    parse_termination_message,
)
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import (
    TaskContext,
    assess,
    has_scores,
    merge_conditions,
    render_status,
)

CTX = TaskContext(job_name="t-eval", timeout="2h", retries=2, gpus=2,
                  gpu_resource="nvidia.com/gpu", memory="16Gi")


def job(conditions: list[dict[str, Any]] | None = None, suspend: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": "t-eval", "uid": "j"}, "spec": {"suspend": suspend},
            "status": {"conditions": conditions or [], "startTime": "2026-01-01T00:00:00Z"}}


def pod(phase: str, created: str = "2026-01-01T00:00:01Z", node: str | None = "gpu-node-0",
        terminated: dict[str, Any] | None = None, waiting: dict[str, Any] | None = None,
        conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if terminated:
        state["terminated"] = terminated
    if waiting:
        state["waiting"] = waiting
    if phase == "Running":
        state["running"] = {"startedAt": created}
    return {
        "metadata": {"name": f"p-{created}", "creationTimestamp": created},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "startTime": created if phase != "Pending" else None,
                   "conditions": conditions or [],
                   "containerStatuses": [{"name": "runner", "image": "img:1", "state": state}]},
    }


def failed(code: int, reason: str = "Error", message: str = "",
           created: str = "2026-01-01T00:00:01Z") -> dict[str, Any]:
    return pod("Failed", created=created,
               terminated={"exitCode": code, "reason": reason, "message": message})


def test_waiting_for_gpu_reports_the_scheduler_reason() -> None:
    pending = pod("Pending", node=None, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    a = assess(job(), [pending], CTX)
    assert (a.phase, a.reason, a.scheduled) == ("Evaluating", "Unschedulable", False)
    assert "2 free nvidia.com/gpu" in a.message and "Insufficient nvidia.com/gpu" in a.message


def test_running() -> None:
    a = assess(job(), [pod("Running")], CTX)
    assert (a.phase, a.reason, a.running, a.scheduled) == ("Evaluating", "Running", True, True)
    assert a.start_time == "2026-01-01T00:00:01Z"


def test_success_reads_scores_from_the_termination_message() -> None:
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})
    done = pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": message,
                                        "finishedAt": "2026-01-01T01:00:00Z"})
    a = assess(job([{"type": "Complete", "status": "True"}]), [done], CTX)
    assert a.phase == "Completed"
    assert a.runner_summary == RunnerSucceeded(Scores(0.5, (BenchmarkScore("a", 0.5),)))


def test_truncated_summary_has_no_scores() -> None:
    message = parse_termination_message('{"v": 1, "status": "Succeeded", "truncated": true}')
    assert message == RunnerSucceeded(scores=None, truncated=True)
    assert parse_termination_message("") is None


def test_config_error_is_not_retried_and_quotes_the_runner() -> None:
    message = json.dumps({"v": 1, "status": "Failed", "reason": "ConfigurationError",
                          "message": "benchmarks[0].metrics: unknown metric 'blue'"})
    a = assess(job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]),
               [failed(78, message=message)], CTX)
    assert (a.phase, a.reason) == ("Failed", "ConfigurationError")
    assert "unknown metric 'blue'" in a.message and "Retrying cannot help" in a.message


def test_a_job_failure_waits_for_the_pod_event_that_quotes_the_runner() -> None:
    # The Job's Failed condition can arrive before the pod's: deciding then would lose the
    # runner's own message for good (a terminal status is never rewritten).
    message = json.dumps({"v": 1, "status": "Failed", "reason": "ConfigurationError",
                          "message": "benchmarks[0].dataset: no column 'question'"})
    failed_job = job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    assert assess(failed_job, [pod("Running")], CTX).phase == "Evaluating"
    a = assess(failed_job, [failed(78, message=message)], CTX)
    assert (a.phase, a.reason) == ("Failed", "ConfigurationError")
    assert "no column 'question'" in a.message


def test_a_shard_config_error_is_quoted_not_the_shard_the_job_stopped() -> None:
    message = json.dumps({"v": 1, "status": "Failed", "reason": "ConfigurationError",
                          "message": "benchmarks[0].dataset: no column 'question'"})
    culprit = failed(78, message=message, created="2026-01-01T00:00:01Z")
    stopped = failed(137, created="2026-01-01T00:00:02Z")
    stopped["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    ctx = TaskContext(job_name="t-eval", timeout="2h", retries=3, gpus=1,
                      gpu_resource="nvidia.com/gpu", memory="16Gi", shards=2)
    a = assess(job([{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}]),
               [culprit, stopped], ctx)
    assert (a.phase, a.reason) == ("Failed", "ConfigurationError")
    assert "no column 'question'" in a.message


def test_a_job_failure_does_not_wait_for_pods_being_stopped() -> None:
    stopping = pod("Running")
    stopping["metadata"]["deletionTimestamp"] = "2026-01-01T02:00:00Z"
    a = assess(job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]),
               [stopping], CTX)
    assert (a.phase, a.reason) == ("Failed", "DeadlineExceeded")


def test_deadline_exceeded_names_the_timeout() -> None:
    a = assess(job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]),
               [failed(143)], CTX)
    assert a.reason == "DeadlineExceeded" and "spec.timeout (2h)" in a.message


def test_oom_killed_points_at_memory() -> None:
    a = assess(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
               [failed(137, "OOMKilled")], CTX)
    assert a.reason == "OOMKilled" and "spec.resources.memory (now 16Gi)" in a.message


def test_retries_exhausted_counts_attempts_and_quotes_the_last_failure() -> None:
    pods = [failed(1, created="2026-01-01T00:00:01Z"),
            failed(1, created="2026-01-01T00:00:02Z"),
            failed(3, message='{"v": 1, "status": "Failed", "message": "CUDA error"}',
                   created="2026-01-01T00:00:03Z")]
    a = assess(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
               pods, CTX)
    assert a.reason == "RetriesExhausted"
    assert "failed 3 time(s)" in a.message and "CUDA error" in a.message


def test_retry_in_progress_mentions_the_previous_failure() -> None:
    a = assess(job(), [failed(75, created="2026-01-01T00:00:01Z"),
                       pod("Running", created="2026-01-01T00:00:05Z")], CTX)
    assert a.phase == "Evaluating" and "Attempt 2 of 3" in a.message


def test_image_pull_error_fails() -> None:
    a = assess(job(), [pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "nope"})],
               CTX)
    assert (a.phase, a.reason) == ("Failed", "ImagePullError") and "img:1" in a.message


def test_missing_secret_fails_with_what_to_check() -> None:
    a = assess(job(), [pod("Pending", waiting={"reason": "CreateContainerConfigError",
                                               "message": 'secret "s3" not found'})], CTX)
    assert a.reason == "ContainerConfigError" and "credentialsSecretRef" in a.message


def test_suspended_job_waits_for_kueue() -> None:
    ctx = TaskContext(**{**CTX.__dict__, "queue_name": "team-a"})
    a = assess(job(suspend=True), [], ctx)
    assert a.reason == "Queued" and "team-a" in a.message


def test_a_failed_runner_without_a_contract_message_is_described_by_its_exit_code() -> None:
    for text in ("panic: oops", '{"status": "Failed"}', '{"v": 1, "status": "Failed", "x": [[['):
        a = assess(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
                   [failed(1, message=text)], CTX)
        assert a.reason == "RetriesExhausted" and "exit code 1" in a.message, text
    assert parse_termination_message('{"v": 1, "status": "Failed"}') == RunnerFailed(None, "")


def test_condition_transition_time_moves_only_on_change() -> None:
    first = merge_conditions([], {"Ready": ("False", "Running", "x")}, 1, "T1")
    same = merge_conditions(first, {"Ready": ("False", "Running", "y")}, 1, "T2")
    flipped = merge_conditions(same, {"Ready": ("True", "Succeeded", "")}, 1, "T3")
    assert same[0]["lastTransitionTime"] == "T1"
    assert flipped[0]["lastTransitionTime"] == "T3"


def test_kstatus_view_of_each_phase() -> None:
    """Flux's kstatus: Reconciling while in progress, Ready on success, Stalled on failure,
    all stamped with observedGeneration."""
    cases = {
        "Evaluating": (job(), [pod("Running")], {"Reconciling": "True", "Ready": "False",
                                                 "Stalled": "False"}),
        "Completed": (job([{"type": "Complete", "status": "True"}]), [],
                      {"Reconciling": "False", "Ready": "True", "Stalled": "False"}),
        "Failed": (job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]), [],
                   {"Reconciling": "False", "Ready": "False", "Stalled": "True"}),
    }
    for phase, (j, pods, expected) in cases.items():
        status = render_status({}, assess(j, pods, CTX), generation=3, now="T", job_name="t-eval",
                               configmap_name="t-config", results={})
        assert status["phase"] == phase
        got = {c["type"]: c["status"] for c in status["conditions"]}
        assert {k: got[k] for k in expected} == expected
        assert status["observedGeneration"] == 3
        assert all(c["observedGeneration"] == 3 for c in status["conditions"])


GRACE = TaskContext(**{**CTX.__dict__, "start_failure_grace_seconds": 120})
SCHEDULED_AT = [{"type": "PodScheduled", "status": "True",
                 "lastTransitionTime": "2026-01-01T01:00:00Z"}]


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_image_pull_error_waits_out_the_grace_period_counted_from_scheduling() -> None:
    # Created an hour before it got a GPU: the grace starts when it was scheduled.
    pulling = pod("Pending", created="2026-01-01T00:00:00Z", conditions=SCHEDULED_AT,
                  waiting={"reason": "ErrImagePull", "message": "429 Too Many Requests"})
    early = assess(job(), [pulling], GRACE, now=at("2026-01-01T01:00:30Z"))
    assert (early.phase, early.reason) == ("Evaluating", "ImagePullBackOff")
    assert "429 Too Many Requests" in early.message and "90s more" in early.message
    late = assess(job(), [pulling], GRACE, now=at("2026-01-01T01:02:00Z"))
    assert (late.phase, late.reason) == ("Failed", "ImagePullError")


def test_missing_secret_gets_the_same_grace() -> None:
    waiting = pod("Pending", created="2026-01-01T01:00:00Z",
                  waiting={"reason": "CreateContainerConfigError",
                           "message": 'secret "s3-creds" not found'})
    early = assess(job(), [waiting], GRACE, now=at("2026-01-01T01:01:00Z"))
    assert early.reason == "ContainerConfigPending" and 's3-creds' in early.message
    assert assess(job(), [waiting], GRACE, now=at("2026-01-01T01:05:00Z")).reason == \
        "ContainerConfigError"


def test_runner_failure_without_retries_is_runner_failed_with_a_hint() -> None:
    ctx = TaskContext(**{**CTX.__dict__, "retries": 0})
    message = json.dumps({"v": 1, "status": "Failed", "reason": "ModelUnreachable",
                          "message": "http://m:8000/v1: connection refused"})
    a = assess(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
               [failed(75, message=message)], ctx)
    assert (a.phase, a.reason) == ("Failed", "RunnerFailed")
    assert "connection refused" in a.message
    assert "spec.model.endpoint.url" in a.message
    assert "kubectl logs job/t-eval" in a.message


def test_upload_failure_points_at_s3() -> None:
    message = json.dumps({"v": 1, "status": "Failed", "reason": "UploadFailed",
                          "message": "PutObject: AccessDenied"})
    a = assess(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
               [failed(75, message=message)], CTX)
    assert a.reason == "RetriesExhausted" and "credentialsSecretRef" in a.message


def test_runner_failure_without_a_message_reports_the_exit_code() -> None:
    ctx = TaskContext(**{**CTX.__dict__, "retries": 0})
    a = assess(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
               [failed(2)], ctx)
    assert a.reason == "RunnerFailed" and "exit code 2 (Error)" in a.message


def test_preempted_pod_is_replaced_without_counting_as_a_failure() -> None:
    """DisruptionTarget pods are ignored by the Job; status keeps evaluating."""
    a = assess(job(), [pod("Pending", node=None)], CTX)
    assert (a.phase, a.reason) == ("Evaluating", "Scheduling")


def test_status_keeps_start_time_and_progress_across_updates() -> None:
    previous = {"startTime": "T0", "progress": {"samplesDone": 1, "samplesTotal": 2,
                                                "text": "1/2"}}
    status = render_status(previous, assess(job(), [pod("Running")], CTX), generation=1,
                           now="T9", job_name="t-eval", configmap_name="t-config", results={})
    assert status["startTime"] == "T0" and status["progress"]["text"] == "1/2"


def test_the_docs_status_table_lists_exactly_the_reasons_in_the_code() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "operator.md").read_text()
    table = doc.split("## Status", 1)[1].split("## Deletion", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
    documented: dict[str, str] = {}
    for row in rows:
        phase = row.split("|")[1].strip()
        for reason in re.findall(r"`([A-Z][A-Za-z]+)`", row.split("|")[2]):
            documented[reason] = phase
    assert documented == {r.value: r.phase.value for r in Reason}


def test_a_succeeded_pod_with_full_scores_completes_before_the_job_does() -> None:
    """A real kubelet reports the pod seconds before the Job controller marks the Job."""
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})
    done = pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": message,
                                        "finishedAt": "2026-01-01T01:00:00Z"})
    a = assess(job(), [done], CTX)
    assert (a.phase, a.reason) == ("Completed", "Succeeded")
    assert a.completion_time == "2026-01-01T01:00:00Z"
    assert has_scores(a.runner_summary)


def test_a_job_complete_before_its_pod_event_waits_for_the_pods_message() -> None:
    """Watches are not ordered with each other: when the Job's Complete arrives while the
    pod still looks Running, the scores come with the pod's event; not from S3 now."""
    complete = job([{"type": "Complete", "status": "True"}])
    early = assess(complete, [pod("Running")], CTX)
    assert (early.phase, early.reason) == ("Evaluating", "Running")
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})
    done = pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": message})
    assert has_scores(assess(complete, [done], CTX).runner_summary)
    # The pod is gone (TTL, eviction): nothing else will come; completed, scores from S3.
    gone = assess(complete, [], CTX)
    assert (gone.reason, gone.runner_summary) == ("Succeeded", None)


def test_a_succeeded_pod_never_reads_as_waiting_for_a_pod() -> None:
    truncated = pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed",
                                             "message": '{"v": 1, "status": "Succeeded", '
                                                        '"truncated": true}'})
    a = assess(job(), [truncated], CTX)
    assert a.reason is not Reason.POD_PENDING
    assert a.reason is Reason.SUCCEEDED
    assert not has_scores(a.runner_summary)  # the reconciler reads summary.json


def test_what_each_reason_implies() -> None:
    assert Reason.SUCCEEDED.phase is Phase.COMPLETED and Phase.COMPLETED.terminal
    assert Reason.RUNNING.phase is Phase.EVALUATING and not Phase.EVALUATING.terminal
    assert {r for r in Reason if r.stops_job} == {Reason.IMAGE_PULL_ERROR,
                                                 Reason.CONTAINER_CONFIG_ERROR, Reason.CANCELLED,
                                                 Reason.REFERENCE_NOT_FOUND}
    # A cancel is deliberate: a Normal event, not a warning; still a final Failed.
    assert Reason.CANCELLED.phase is Phase.FAILED and Reason.CANCELLED.posts_event
    assert not Reason.CANCELLED.warning
    # Progress in between is in the status only; warnings and failures are Events too.
    assert not Reason.POD_PENDING.posts_event and not Reason.RUNNING.posts_event
    assert not Reason.SUCCEEDED.posts_event
    assert Reason.UNSCHEDULABLE.warning and Reason.OOM_KILLED.warning
    assert {r for r in Reason if r.reads_s3} == {Reason.RUNNING, Reason.COLLECTING_RESULTS}
    assert Reason("Running") is Reason.RUNNING and str(Reason.RUNNING) == "Running"


def test_a_start_failure_in_its_grace_period_asks_to_be_looked_at_again() -> None:
    pulling = pod("Pending", created="2026-01-01T00:00:00Z", conditions=SCHEDULED_AT,
                  waiting={"reason": "ErrImagePull", "message": "429"})
    a = assess(job(), [pulling], GRACE, now=at("2026-01-01T01:00:30Z"))
    assert a.recheck_seconds == 90


def test_a_completed_run_shows_full_progress_even_if_never_polled() -> None:
    """`kubectl get` shows 503/503 for a run that finished before progress.json was read."""
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})
    done = pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": message})
    scores = {"overallScore": 0.5, "benchmarks": [{"name": "a", "score": 0.5, "samples": 500},
                                                  {"name": "b", "score": 0.5, "samples": 3}]}
    status = render_status({}, assess(job(), [done], CTX), generation=1, now="T",
                           job_name="t-eval", configmap_name="t-config", results={},
                           scores=scores)
    assert status["progress"] == {"samplesDone": 503, "samplesTotal": 503, "text": "503/503"}
    no_counts = {"overallScore": 0.5, "benchmarks": [{"name": "a", "score": 0.5}]}
    status = render_status({}, assess(job(), [done], CTX), generation=1, now="T",
                           job_name="t-eval", configmap_name="t-config", results={},
                           scores=no_counts)
    assert "progress" not in status
