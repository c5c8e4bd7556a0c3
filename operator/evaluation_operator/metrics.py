"""Prometheus metrics on /metrics: task phases, waiting and running time, failures, purges,
and the scores themselves, so a dashboard can plot model quality over time."""

from __future__ import annotations

import datetime
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)

TASK_PHASE = Gauge(
    "evaluation_tasks", "EvaluationTasks by phase (tasks this operator has seen).",
    ["namespace", "phase"], registry=REGISTRY)
GPU_WAIT = Histogram(
    "evaluation_task_wait_seconds", "Time from task creation until its runner pod started.",
    buckets=_DURATION_BUCKETS, registry=REGISTRY)
RUN_TIME = Histogram(
    "evaluation_task_run_seconds", "Time from the runner pod starting to the task finishing.",
    ["phase"], buckets=_DURATION_BUCKETS, registry=REGISTRY)
FAILURES = Counter(
    "evaluation_task_failures", "Failed tasks by reason.", ["namespace", "reason"],
    registry=REGISTRY)
PURGES = Counter(
    "evaluation_results_purges", "Purges of task results by outcome (succeeded, failed).",
    ["outcome"], registry=REGISTRY)
PURGED_OBJECTS = Counter(
    "evaluation_results_purged_objects", "Object versions and delete markers deleted.",
    registry=REGISTRY)
PURGE_DURATION = Histogram(
    "evaluation_results_purge_seconds", "Duration of one purge attempt.",
    buckets=(0.05, 0.1, 0.5, 1, 5, 15, 60, 300), registry=REGISTRY)
SCORE = Gauge(
    "evaluation_score", "Score of a completed task: overall, or per benchmark and metric.",
    ["namespace", "task", "benchmark", "metric"], registry=REGISTRY)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = datetime.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))
            ).total_seconds()


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    with _lock:
        old = _phases.pop((namespace, name), None)
        if old:
            TASK_PHASE.labels(namespace, old).dec()
        if phase:
            _phases[(namespace, name)] = phase
            TASK_PHASE.labels(namespace, phase).inc()


def observe_transition(namespace: str, name: str, previous: dict[str, Any],
                       status: dict[str, Any], created: str | None = None) -> None:
    set_phase(namespace, name, status.get("phase"))
    if status.get("startTime") and not previous.get("startTime"):
        waited = _seconds_between(created, status["startTime"])
        if waited is not None and waited >= 0:
            GPU_WAIT.observe(waited)
    if status.get("completionTime") and not previous.get("completionTime"):
        ran = _seconds_between(status.get("startTime"), status["completionTime"])
        if ran is not None and ran >= 0:
            RUN_TIME.labels(status.get("phase", "")).observe(ran)


def record_failure(namespace: str, reason: str) -> None:
    FAILURES.labels(namespace, reason).inc()


def record_scores(namespace: str, name: str, status: dict[str, Any]) -> None:
    if status.get("overallScore") is not None:
        SCORE.labels(namespace, name, "", "overall").set(float(status["overallScore"]))
    for benchmark in status.get("benchmarks") or []:
        bench = str(benchmark.get("name"))
        if benchmark.get("score") is not None:
            SCORE.labels(namespace, name, bench, "score").set(float(benchmark["score"]))
        for metric, value in (benchmark.get("metrics") or {}).items():
            SCORE.labels(namespace, name, bench, metric).set(float(value))


def record_purge(outcome: str, seconds: float, objects: int = 0) -> None:
    PURGES.labels(outcome).inc()
    PURGE_DURATION.observe(seconds)
    if objects:
        PURGED_OBJECTS.inc(objects)


def forget_task(namespace: str, name: str) -> None:
    """A deleted task's series go away with it."""
    set_phase(namespace, name, None)
    for labels in list(SCORE._metrics):
        if labels[0] == namespace and labels[1] == name:
            SCORE.remove(*labels)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)
