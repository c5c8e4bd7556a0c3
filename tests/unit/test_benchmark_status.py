"""Per-benchmark status and partial failure, from the operator's side: progress.json's states
parsed strictly, status.benchmarks[] and currentBenchmark while running, the final entries,
and a PartiallyFailed run's status."""

from __future__ import annotations

import json
from typing import Any

import pytest
from evaluation_operator import runner_output as ro
from evaluation_operator.benchmark_status import (
    final_benchmarks,
    progress_fields,
    stopped_benchmarks,
)
from evaluation_operator.collecting import collect_scores
from evaluation_operator.runner_output import BenchmarkState, InvalidRunnerOutput
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import Assessment, render_status
from evaluation_runner import progress as runner_progress

from tests.unit.test_reconcile import UID, Cluster, FakeS3, job, pod, run, task
from tests.unit.test_runner_output import LOCATION, NOW, completed

RUNNING = {"samplesDone": 4, "samplesTotal": 10, "updatedAt": "2026-01-01T00:10:00Z",
           "benchmarks": {
               "arc": {"samplesDone": 3, "samplesTotal": 3, "state": "Completed",
                       "startedAt": "2026-01-01T00:01:00Z",
                       "finishedAt": "2026-01-01T00:05:00+00:00"},
               "gsm": {"samplesDone": 1, "samplesTotal": 7, "state": "Running",
                       "startedAt": "2026-01-01T00:05:00Z"},
               "lost": {"samplesDone": 0, "samplesTotal": 0, "state": "Failed",
                        "startedAt": "2026-01-01T00:00:59Z",
                        "finishedAt": "2026-01-01T00:00:59Z", "error": "NoSuchKey"},
               "mmlu": {"samplesDone": 0, "samplesTotal": 0, "state": "Pending"}}}


def test_the_states_are_one_list_on_both_sides() -> None:
    assert [s.value for s in BenchmarkState] == [s.value for s in runner_progress.BenchmarkState]


def test_progress_fills_each_benchmark_and_the_current_one() -> None:
    fields = progress_fields(ro.parse_progress(json.dumps(RUNNING)))
    assert fields["progress"] == {"samplesDone": 4, "samplesTotal": 10, "text": "4/10"}
    assert fields["currentBenchmark"] == "gsm"
    entries = {e["name"]: e for e in fields["benchmarks"]}
    assert list(entries) == ["arc", "gsm", "lost", "mmlu"]  # the runner's (spec) order
    assert entries["arc"] == {"name": "arc", "state": "Completed", "samplesDone": 3,
                              "samplesTotal": 3, "startedAt": "2026-01-01T00:01:00Z",
                              "finishedAt": "2026-01-01T00:05:00Z"}  # offsets made Z
    assert entries["lost"]["error"] == "NoSuchKey" and entries["lost"]["state"] == "Failed"
    assert "startedAt" not in entries["mmlu"]


def test_between_benchmarks_nothing_is_current_and_old_runners_show_counts_only() -> None:
    between = json.loads(json.dumps(RUNNING))
    between["benchmarks"]["gsm"]["state"] = "Pending"
    assert progress_fields(ro.parse_progress(json.dumps(between)))["currentBenchmark"] == ""
    old = {"samplesDone": 1, "samplesTotal": 2,
           "benchmarks": {"a": {"samplesDone": 1, "samplesTotal": 2}}}
    fields = progress_fields(ro.parse_progress(json.dumps(old)))
    assert fields["benchmarks"] == [{"name": "a", "samplesDone": 1, "samplesTotal": 2}]
    assert fields["currentBenchmark"] == ""
    assert set(progress_fields(ro.parse_progress('{"samplesDone": 0, "samplesTotal": 0}'))) \
        == {"progress"}


@pytest.mark.parametrize(("change", "expected"), [
    ({"state": "Sleeping"}, 'benchmarks.gsm.state: "Sleeping" is not one of Pending, Running'),
    ({"state": 3}, "benchmarks.gsm.state: expected a non-empty string, got 3"),
    ({"startedAt": "yesterday"}, 'benchmarks.gsm.startedAt: "yesterday" is not an RFC 3339'),
    ({"startedAt": "2026-01-01T00:05:00"}, "startedAt: \"2026-01-01T00:05:00\" has no UTC"),
    ({"finishedAt": "2" * 100}, "finishedAt"),
    ({"error": {"why": "x"}}, "benchmarks.gsm.error: expected a string, got an object"),
    ({"error": "\ud800"}, "benchmarks.gsm.error"),
])
def test_bad_benchmark_progress_is_refused_naming_the_field(change: dict[str, Any],
                                                            expected: str) -> None:
    bad = json.loads(json.dumps(RUNNING))
    bad["benchmarks"]["gsm"].update(change)
    with pytest.raises(InvalidRunnerOutput) as caught:
        ro.parse_progress(json.dumps(bad))
    assert str(caught.value).startswith("progress.json") and expected in str(caught.value)


def test_a_long_error_is_cut() -> None:
    long = json.loads(json.dumps(RUNNING))
    long["benchmarks"]["lost"]["error"] = "x" * 5000
    entry = ro.parse_progress(json.dumps(long)).benchmarks[2]
    assert entry.error == "x" * ro.MAX_BENCHMARK_ERROR


# --- the end of the run -------------------------------------------------------------------

ARC = {"name": "arc", "score": 0.8, "primaryMetric": "accuracy", "metrics": {"accuracy": 0.8},
       "samples": 3, "startedAt": "2026-01-01T00:01:00Z", "finishedAt": "2026-01-01T00:05:00Z"}
PARTIAL = {"v": 1, "status": "PartiallyFailed", "partial": True, "overallScore": 0.8,
           "benchmarks": [
               ARC,
               {"name": "lost", "state": "Failed",
                "error": "benchmarks[1].dataset.uri: s3://d/lost.jsonl cannot be read: "
                         "NoSuchKey"}],
           "results": {"uri": LOCATION.uri, "bundle": LOCATION.bundle_uri}}


def finish(message: dict[str, Any] | None, summary: dict[str, Any] | None = None,
           previous: dict[str, Any] | None = None) -> dict[str, Any]:
    assessment, scores = collect_scores(
        completed(None if message is None else json.dumps(message)),
        lambda: None if summary is None else json.dumps(summary).encode(), LOCATION,
        limit_seconds=300, now=NOW)
    return render_status(previous or {}, assessment, generation=1, now="2026-01-01T01:00:00Z",
                         job_name="t-eval", configmap_name="t-config",
                         results={"uri": LOCATION.uri, "bundle": LOCATION.bundle_uri},
                         scores=scores)


def test_a_partial_run_fails_with_the_finished_scores_and_says_what_failed() -> None:
    status = finish(PARTIAL)
    assert (status["phase"], status["reason"]) == ("Failed", "PartiallyFailed")
    assert status["overallScore"] == 0.8 and status["overallScorePartial"] is True
    arc, lost = status["benchmarks"]
    assert (arc["state"], arc["score"], arc["samplesDone"]) == ("Completed", 0.8, 3)
    assert lost["state"] == "Failed" and "score" not in lost
    assert "NoSuchKey" in lost["error"]
    message = status["message"]
    assert message.startswith("1 of 2 benchmarks failed (lost: benchmarks[1].dataset.uri")
    assert LOCATION.bundle_uri in message and "overallScorePartial" in message
    assert "failurePolicy: FailFast" in message
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "PartiallyFailed")
    assert "currentBenchmark" not in status


def test_a_truncated_partial_message_reads_the_failures_from_summary_json() -> None:
    truncated = {"v": 1, "status": "PartiallyFailed", "truncated": True}
    summary = {k: v for k, v in PARTIAL.items() if k not in ("v", "status", "results")}
    status = finish(truncated, summary)
    assert status["reason"] == "PartiallyFailed" and status["benchmarks"][1]["state"] == "Failed"
    # summary.json that contradicts the message is not believed.
    whole = {"overallScore": 0.8, "benchmarks": [ARC]}
    status = finish(truncated, whole)
    assert status["reason"] == "InvalidRunnerOutput"
    assert "termination message says PartiallyFailed" in status["message"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"status": "Succeeded"}, 'status: "Succeeded", but a benchmark failed'),
    ({"partial": False}, "partial: is false, but a benchmark failed"),
    ({"partial": "yes"}, 'partial: expected true or false, got "yes"'),
    ({"benchmarks": [{"name": "lost", "state": "Failed", "error": "x"}]},
     "every benchmark failed"),
    ({"benchmarks": [{"name": "arc", "state": "Running", "score": 0.5}, {"name": "b",
                                                                        "state": "Failed"}]},
     'benchmarks[0].state: "Running" in a finished run'),
])
def test_contradictory_partial_results_are_refused(change: dict[str, Any], expected: str
                                                   ) -> None:
    with pytest.raises(InvalidRunnerOutput) as caught:
        ro.parse_termination_message(json.dumps({**PARTIAL, **change}))
    assert expected in str(caught.value)


def test_the_final_entries_keep_what_progress_said() -> None:
    previous = progress_fields(ro.parse_progress(json.dumps(RUNNING)))["benchmarks"]
    final = [{"name": "gsm", "state": "Completed", "score": 0.5, "samples": 7,
              "samplesDone": 7, "samplesTotal": 7},
             {"name": "arc", "state": "Completed", "score": 1.0}]
    merged = final_benchmarks(previous, final)
    assert [e["name"] for e in merged] == ["arc", "gsm"]  # progress' order
    assert merged[0]["startedAt"] == "2026-01-01T00:01:00Z" and merged[0]["score"] == 1.0
    assert merged[1]["samplesDone"] == 7 and merged[1]["startedAt"] == "2026-01-01T00:05:00Z"
    assert final_benchmarks("garbage", final) == final


def test_a_run_that_ends_without_scores_does_not_leave_a_benchmark_running() -> None:
    previous = progress_fields(ro.parse_progress(json.dumps(RUNNING)))["benchmarks"]
    stopped = {e["name"]: e for e in stopped_benchmarks(previous, Reason.DEADLINE_EXCEEDED)}
    assert stopped["gsm"]["state"] == "Failed"
    assert stopped["gsm"]["error"] == ("the run ended (DeadlineExceeded) before this benchmark "
                                       "finished")
    assert stopped["mmlu"]["state"] == "Pending" and stopped["arc"]["state"] == "Completed"
    status = render_status(
        {"benchmarks": previous, "currentBenchmark": "gsm"},
        Assessment(Reason.DEADLINE_EXCEEDED, "too slow"), generation=1, now="T",
        job_name="j", configmap_name="c", results={})
    assert status["currentBenchmark"] == ""  # a merge patch cannot remove it
    assert status["benchmarks"][1]["state"] == "Failed"
    running = render_status({"benchmarks": previous, "currentBenchmark": "gsm"},
                            Assessment(Reason.RUNNING, "on n"), generation=1, now="T",
                            job_name="j", configmap_name="c", results={})
    assert running["benchmarks"] == previous and running["currentBenchmark"] == "gsm"
    assert Reason.PARTIALLY_FAILED.phase is Phase.FAILED and Reason.PARTIALLY_FAILED.warning


def test_the_reconciler_writes_benchmark_states_only_when_they_change() -> None:
    async def scenario() -> list[dict[str, Any]]:
        t = task({"phase": "Evaluating", "reason": "Running",
                  "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
        s3 = FakeS3({"progress.json": RUNNING})
        c = Cluster(t, s3=s3)
        c.set(job(), [pod("Running")])
        for _ in range(3):  # the same progress.json, read three times
            await c.reconciler.read_progress(t)
            await c.reconciler.drain()
        moved = json.loads(json.dumps(RUNNING))
        moved["benchmarks"]["gsm"].update(state="Completed", samplesDone=7,
                                          finishedAt="2026-01-01T00:09:00Z")
        moved["benchmarks"]["mmlu"].update(state="Running", startedAt="2026-01-01T00:09:00Z")
        s3.objects["progress.json"] = moved
        await c.reconciler.read_progress(t)
        await c.reconciler.drain()
        s3.objects["progress.json"] = {**moved, "benchmarks": {"gsm": {"state": "Lost"}}}
        await c.reconciler.read_progress(t)  # refused: nothing written, no exception
        await c.reconciler.drain()
        return c.kube.status_patches

    patches = run(scenario())
    with_benchmarks = [p for p in patches if p.get("benchmarks")]
    assert [p["currentBenchmark"] for p in with_benchmarks] == ["gsm", "mmlu"]
    assert {e["name"]: e["state"] for e in with_benchmarks[-1]["benchmarks"]} == {
        "arc": "Completed", "gsm": "Completed", "lost": "Failed", "mmlu": "Running"}
