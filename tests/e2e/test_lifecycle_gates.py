"""Issue 13's features on real runs: gates judged on the scores the runner really produced,
one benchmark failing alone (failurePolicy Continue), and per-benchmark progress moving while
the runner works, all as a user sees them (status, events, `kubectl get -o wide`, S3).

The scripted model answers 3 of the 4 quiz questions right (tests/e2e/support.py), so a quiz
run scores accuracy 0.75 and, with one benchmark, overall 0.75.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM

from tests.e2e.support import (
    DATA_BUCKET,
    QUIZ_ANSWERS,
    QUIZ_ROWS,
    TRANSLATION_ROWS,
    Timings,
    create_task,
    prefix_of,
    quiz_benchmark,
    read_object,
    results_zip,
    translation_benchmark,
)
from tests.support.s3 import S3Endpoint

pytestmark = pytest.mark.e2e


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found = next((c for c in status.get("conditions") or [] if c["type"] == kind), None)
    assert found is not None, f"no {kind} condition in {status}"
    return dict(found)


def wait_event(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        items = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                                     f"involvedObject.name={name}")["items"]
        return next((e for e in items if e["reason"] == reason), None)

    event: dict[str, Any] = cluster.wait_until(f"a {reason} event on {name}", find, timeout=30)
    return event


def test_gates_judge_the_real_scores_one_missed_one_met(
        cluster: Cluster, e2e_namespace: str, model: FakeLLM, spec_for: Any,
        timings: Timings) -> None:
    model.answers = dict(QUIZ_ANSWERS)
    missed = create_task(cluster, e2e_namespace, "gate-missed", spec_for(gates=[
        {"benchmark": "quiz", "metric": "accuracy", "min": 0.7},
        {"overall": True, "min": 0.9}]))
    met = create_task(cluster, e2e_namespace, "gate-met", spec_for(gates=[
        {"benchmark": "quiz", "metric": "accuracy", "min": 0.7},
        {"overall": True, "min": 0.5, "max": 0.8}]))

    status = missed.finish(timings, "gates: one missed")

    # The evaluation worked (Completed, Ready); the model did not pass.
    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    assert condition(status, "Ready")["status"] == "True"
    passed = condition(status, "Passed")
    assert (passed["status"], passed["reason"]) == ("False", "GatesFailed"), passed
    assert passed["message"] == "1 of 2 gate(s) failed: overall 0.75 is below the minimum 0.9."
    assert [(g["target"], g.get("value"), g["passed"]) for g in status["gates"]] == [
        ("quiz/accuracy", 0.75, True), ("overall", 0.75, False)]
    event = wait_event(cluster, e2e_namespace, missed.name, "GatesFailed")
    assert event["type"] == "Warning" and "overall 0.75 is below the minimum 0.9" in \
        event["message"], event

    status = met.finish(timings, "gates: all met")

    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    passed = condition(status, "Passed")
    assert (passed["status"], passed["reason"]) == ("True", "GatesPassed"), passed
    assert [(g["target"], g.get("value"), g["passed"]) for g in status["gates"]] == [
        ("quiz/accuracy", 0.75, True), ("overall", 0.75, True)]
    assert wait_event(cluster, e2e_namespace, met.name, "GatesPassed")["type"] == "Normal"

    # What `kubectl get evt` shows the user: the run's phase, its score, the verdict.
    table = cluster.kubectl("get", "evt", "-n", e2e_namespace).stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["gate-missed"][1:4] == ["Completed", "0.75", "False"], table
    assert rows["gate-met"][1:4] == ["Completed", "0.75", "True"], table


def test_a_benchmark_whose_dataset_is_missing_fails_alone_and_the_bundle_is_uploaded(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        spec_for: Any, timings: Timings) -> None:
    model.answers = dict(QUIZ_ANSWERS)
    missing = f"s3://{DATA_BUCKET}/no-such-wmt.jsonl"
    bad = translation_benchmark()
    bad["dataset"]["uri"] = missing
    run = create_task(cluster, e2e_namespace, "partial", spec_for(quiz_benchmark(), bad))

    status = run.finish(timings, "one dataset missing")

    assert (status["phase"], status["reason"]) == ("Failed", "PartiallyFailed"), status
    stored = run.get()
    assert stored is not None and stored["spec"]["failurePolicy"] == "Continue"  # the default
    quiz, wmt = status["benchmarks"]
    assert (quiz["name"], quiz["state"], quiz["score"]) == ("quiz", "Completed", 0.75), quiz
    assert quiz["metrics"] == {"accuracy": 0.75} and quiz["samples"] == len(QUIZ_ROWS)
    assert (wmt["name"], wmt["state"]) == ("wmt-de-en", "Failed"), wmt
    assert missing in wmt["error"] and "score" not in wmt, wmt
    assert status["overallScore"] == 0.75 and status["overallScorePartial"] is True
    assert status.get("currentBenchmark", "") == ""
    assert "wmt-de-en" in status["message"] and missing in status["message"], status
    assert status["results"]["bundle"] in status["message"]
    assert (condition(status, "Failed")["status"],
            condition(status, "Failed")["reason"]) == ("True", "PartiallyFailed")
    assert wait_event(cluster, e2e_namespace, run.name, "PartiallyFailed")["type"] == "Warning"
    # The runner never asked the model about the benchmark it could not read.
    assert len(model.requests) == len(QUIZ_ROWS)
    assert not any("Das Haus" in json.dumps(r) for r in model.requests)

    # The bundle is in S3 where the status says, and says what failed.
    assert status["results"]["bundle"] == status["results"]["uri"] + "results.zip"
    with results_zip(pod_s3, status) as bundle:
        names = set(bundle.namelist())
        summary = json.loads(bundle.read("summary.json"))
    assert "benchmarks/quiz/samples.jsonl" in names
    assert "benchmarks/wmt-de-en/samples.jsonl" not in names
    assert summary["partial"] is True
    assert {b["name"]: b["state"] for b in summary["benchmarks"]} == {
        "quiz": "Completed", "wmt-de-en": "Failed"}
    stored = json.loads(read_object(pod_s3, prefix_of(status) + "summary.json"))
    assert stored["overallScore"] == status["overallScore"]


SLOW_ANSWER_SECONDS = 5.0  # per quiz question: 20 s for the benchmark, one at a time


def test_each_benchmark_s_progress_moves_while_the_runner_works(
        cluster: Cluster, e2e_namespace: str, model: FakeLLM, spec_for: Any,
        timings: Timings) -> None:
    model.answers = dict(QUIZ_ANSWERS)
    model.delay_seconds = SLOW_ANSWER_SECONDS
    run = create_task(cluster, e2e_namespace, "progress", spec_for(
        quiz_benchmark(), translation_benchmark(), parameters={"concurrency": 1}))

    def quiz_running(status: dict[str, Any], after: int) -> bool:
        entries = status.get("benchmarks") or []
        return bool(entries) and entries[0].get("state") == "Running" and \
            entries[0].get("samplesDone", 0) > after

    first = run.wait("quiz Running with a sample done", lambda s: quiz_running(s, 0),
                     timeout=180)
    quiz, wmt = first["benchmarks"]
    assert first["currentBenchmark"] == "quiz", first
    assert quiz["samplesTotal"] == len(QUIZ_ROWS) and quiz["samplesDone"] < len(QUIZ_ROWS)
    assert quiz["startedAt"] and "finishedAt" not in quiz, quiz
    assert (wmt["name"], wmt["state"], wmt.get("samplesDone", 0)) == ("wmt-de-en", "Pending", 0)
    wide = cluster.kubectl("get", "evt", run.name, "-n", e2e_namespace, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    # Columns are aligned and empty cells blank (no score yet): read the cell at its offset.
    assert row[header.index("BENCHMARK"):].split()[0] == "quiz", wide

    done = int(quiz["samplesDone"])
    later = run.wait(f"quiz past {done} samples, still Running",
                     lambda s: quiz_running(s, done), timeout=4 * SLOW_ANSWER_SECONDS)
    assert later["currentBenchmark"] == "quiz", later
    model.delay_seconds = 0  # the rest at full speed

    status = run.finish(timings, "progress, slowed model")

    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    assert status.get("currentBenchmark", "") == ""
    # The scores fill the entries progress made (what the last progress read said of times
    # and counts is kept; how recent that read was is not the user's concern here).
    assert [(b["name"], b["state"], b["samples"]) for b in status["benchmarks"]] == [
        ("quiz", "Completed", len(QUIZ_ROWS)), ("wmt-de-en", "Completed", len(TRANSLATION_ROWS))]
    assert status["benchmarks"][0]["startedAt"] == quiz["startedAt"]
