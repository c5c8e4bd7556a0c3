"""The operator's Prometheus metrics, read the way Prometheus reads them: the text exposition."""

from __future__ import annotations

import urllib.request
import uuid
from typing import Any

import pytest
from evaluation_operator import metrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def samples(name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of `name` (the exposition's sample name) whose labels include `labels`."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(name: str, **labels: str) -> float | None:
    got = metrics.REGISTRY.get_sample_value(name, labels)
    return None if got is None else float(got)


@pytest.fixture
def ns() -> str:
    """A namespace of its own per test: the registry is process-wide."""
    return f"ns-{uuid.uuid4().hex[:8]}"


COMPLETED: dict[str, Any] = {
    "phase": "Completed", "overallScore": 0.4508,
    "startTime": "2026-01-01T00:01:40Z", "completionTime": "2026-01-01T00:11:40Z",
    "benchmarks": [
        {"name": "arc-easy", "score": 0.75, "metrics": {"accuracy": 0.75}},
        {"name": "wmt-de-en", "score": 0.3012, "metrics": {"bleu": 30.12, "exact-match": 0.25}},
    ],
}


def test_a_task_is_counted_under_its_current_phase_only(ns: str) -> None:
    metrics.observe_transition(ns, "t", {}, {"phase": "Evaluating"})
    assert value("evaluation_tasks", namespace=ns, phase="Evaluating") == 1
    metrics.observe_transition(ns, "t", {"phase": "Evaluating"}, {"phase": "Completed"})
    metrics.observe_transition(ns, "u", {}, {"phase": "Evaluating"})
    assert value("evaluation_tasks", namespace=ns, phase="Evaluating") == 1
    assert value("evaluation_tasks", namespace=ns, phase="Completed") == 1


def test_observe_task_after_a_restart_counts_each_task_once(ns: str) -> None:
    for _ in range(3):  # resume handlers may run more than once
        metrics.observe_task(ns, "done", COMPLETED)
        metrics.observe_task(ns, "running", {"phase": "Evaluating"})
        metrics.observe_task(ns, "new", {})
    assert value("evaluation_tasks", namespace=ns, phase="Completed") == 1
    assert value("evaluation_tasks", namespace=ns, phase="Evaluating") == 1
    assert value("evaluation_score", namespace=ns, task="done", benchmark="",
                 metric="overall") == pytest.approx(0.4508)


def test_scores_are_gauges_per_benchmark_and_metric(ns: str) -> None:
    metrics.record_scores(ns, "llm-eval", COMPLETED)
    text = generate_latest(metrics.REGISTRY).decode()
    assert (f'evaluation_score{{benchmark="wmt-de-en",metric="bleu",namespace="{ns}",'
            f'task="llm-eval"}} 30.12') in text
    got = samples("evaluation_score", namespace=ns, task="llm-eval")
    assert {dict(k)["benchmark"] + "/" + dict(k)["metric"]: v for k, v in got.items()} == {
        "/overall": 0.4508,
        "arc-easy/score": 0.75, "arc-easy/accuracy": 0.75,
        "wmt-de-en/score": 0.3012, "wmt-de-en/bleu": 30.12, "wmt-de-en/exact-match": 0.25,
    }


def test_rerecorded_scores_drop_series_that_no_longer_exist(ns: str) -> None:
    metrics.record_scores(ns, "t", COMPLETED)
    metrics.record_scores(ns, "t", {"overallScore": 0.9, "benchmarks": [
        {"name": "arc-easy", "score": 0.9, "metrics": {"accuracy": 0.9, "f1": "n/a"}}]})
    got = samples("evaluation_score", namespace=ns, task="t")
    assert sorted(dict(k)["metric"] for k in got) == ["accuracy", "overall", "score"]
    assert not samples("evaluation_score", namespace=ns, benchmark="wmt-de-en")


def test_forgetting_a_deleted_task_removes_its_series(ns: str) -> None:
    metrics.observe_task(ns, "gone", COMPLETED)
    metrics.observe_task(ns, "kept", COMPLETED)
    metrics.forget_task(ns, "gone")
    assert not samples("evaluation_score", namespace=ns, task="gone")
    assert samples("evaluation_score", namespace=ns, task="kept")
    assert value("evaluation_tasks", namespace=ns, phase="Completed") == 1
    metrics.forget_task(ns, "gone")  # twice is harmless
    metrics.forget_task(ns, "never-seen")
    assert value("evaluation_tasks", namespace=ns, phase="Completed") == 1


def test_wait_for_a_gpu_and_run_time_are_observed_once(ns: str) -> None:
    wait_count = value("evaluation_task_wait_seconds_count") or 0
    wait_sum = value("evaluation_task_wait_seconds_sum") or 0
    run_count = value("evaluation_task_run_seconds_count", phase="Completed") or 0
    running = {"phase": "Evaluating", "startTime": COMPLETED["startTime"]}
    metrics.observe_transition(ns, "t", {"phase": "Evaluating"}, running,
                               created="2026-01-01T00:00:00Z")
    metrics.observe_transition(ns, "t", running, running, created="2026-01-01T00:00:00Z")
    metrics.observe_transition(ns, "t", running, COMPLETED, created="2026-01-01T00:00:00Z")
    assert value("evaluation_task_wait_seconds_count") == wait_count + 1
    assert value("evaluation_task_wait_seconds_sum") == pytest.approx(wait_sum + 100)
    assert value("evaluation_task_run_seconds_count", phase="Completed") == run_count + 1
    # 600 s falls in the le=900 bucket, not le=300.
    assert (value("evaluation_task_run_seconds_bucket", phase="Completed", le="900.0") or 0) \
        >= 1


def test_failures_are_counted_by_namespace_and_reason(ns: str) -> None:
    metrics.record_failure(ns, "OOMKilled")
    metrics.record_failure(ns, "OOMKilled")
    metrics.record_failure(ns, "DeadlineExceeded")
    assert value("evaluation_task_failures_total", namespace=ns, reason="OOMKilled") == 2
    assert value("evaluation_task_failures_total", namespace=ns,
                 reason="DeadlineExceeded") == 1


def test_purges_count_outcomes_objects_and_duration() -> None:
    before = {o: value("evaluation_results_purges_total", outcome=o) or 0
              for o in ("succeeded", "failed")}
    objects = value("evaluation_results_purged_objects_total") or 0
    metrics.record_purge("failed", 2.5)
    metrics.record_purge("succeeded", 0.2, objects=1500)
    assert value("evaluation_results_purges_total", outcome="failed") == before["failed"] + 1
    assert value("evaluation_results_purges_total",
                 outcome="succeeded") == before["succeeded"] + 1
    assert value("evaluation_results_purged_objects_total") == objects + 1500
    assert (value("evaluation_results_purge_seconds_count", outcome="failed") or 0) >= 1


def test_metrics_server_serves_the_registry_over_http(ns: str) -> None:
    metrics.record_scores(ns, "served", {"overallScore": 0.5, "benchmarks": []})
    server = metrics.start_metrics_server(0, addr="127.0.0.1")
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
            assert answer.headers["Content-Type"].startswith("text/plain")
    finally:
        server.shutdown()
        server.server_close()
    assert f'namespace="{ns}",task="served"' in body
    assert "# HELP evaluation_tasks " in body
    assert "python_gc" not in body  # our registry only, not the process-wide default


def test_gate_verdicts_are_a_gauge_per_task_and_a_count_per_verdict(ns: str) -> None:
    metrics.record_gates(ns, "good", True)
    metrics.record_gates(ns, "bad", False)
    assert value("evaluation_task_gates_passed", namespace=ns, task="good") == 1
    assert value("evaluation_task_gates_passed", namespace=ns, task="bad") == 0
    assert value("evaluation_gate_verdicts_total", namespace=ns, verdict="passed") == 1
    assert value("evaluation_gate_verdicts_total", namespace=ns, verdict="failed") == 1
    # After a restart the gauge comes back from the status; the count does not double.
    metrics.forget_task(ns, "bad")
    assert value("evaluation_task_gates_passed", namespace=ns, task="bad") is None
    metrics.observe_task(ns, "bad", {**COMPLETED, "gates": [{"passed": True},
                                                          {"passed": False}]})
    assert value("evaluation_task_gates_passed", namespace=ns, task="bad") == 0
    assert value("evaluation_gate_verdicts_total", namespace=ns, verdict="failed") == 1
    metrics.observe_task(ns, "plain", COMPLETED)  # no gates: no series
    assert value("evaluation_task_gates_passed", namespace=ns, task="plain") is None
