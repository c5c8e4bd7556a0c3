"""Prometheus metrics on /metrics: task phases, waiting and running time, failures, purges,
and the scores themselves, so a dashboard can plot model quality over time.

Everything lives on this module's own registry (`REGISTRY`), never the process-wide default,
so importing the operator in tests or next to other code registers nothing twice.

What the handlers call:

* `observe_task(ns, name, status)`: idempotent; sets the task's phase and, once Completed, its
  scores from a status as it is now. Call it when the operator (re)starts handling a task, so
  the gauges are right after a restart.
* `observe_transition(ns, name, previous, status, created)`: after writing a new status; also
  observes the wait for a GPU and the run time, once each.
* `set_phase(ns, name, phase)`, `record_scores(ns, name, status)`,
  `record_failure(ns, reason)`, `record_purge(outcome, seconds, objects)`,
  `record_gates(ns, name, passed)` (a completed task with spec.gates: its verdict),
  `forget_task(ns, name)` (the task is gone: its series go too),
  `start_metrics_server(port)`.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
PHASES = ("Evaluating", "Completed", "Failed")

TASK_PHASE = Gauge(
    "evaluation_tasks", "EvaluationTasks by phase (tasks this operator handles now).",
    ["namespace", "phase"], registry=REGISTRY)
GPU_WAIT = Histogram(
    "evaluation_task_wait_seconds",
    "Time from task creation until its runner pod started (waiting for a GPU and the image).",
    buckets=_DURATION_BUCKETS, registry=REGISTRY)
RUN_TIME = Histogram(
    "evaluation_task_run_seconds",
    "Time from the runner pod starting to the task finishing, by final phase.",
    ["phase"], buckets=_DURATION_BUCKETS, registry=REGISTRY)
FAILURES = Counter(
    "evaluation_task_failures", "Failed tasks by reason (status.reason).",
    ["namespace", "reason"], registry=REGISTRY)
PURGES = Counter(
    "evaluation_results_purges", "Purges of task results by outcome (succeeded, failed).",
    ["outcome"], registry=REGISTRY)
PURGED_OBJECTS = Counter(
    "evaluation_results_purged_objects", "Object versions and delete markers deleted.",
    registry=REGISTRY)
PURGE_DURATION = Histogram(
    "evaluation_results_purge_seconds", "Duration of one purge attempt, by outcome.",
    ["outcome"], buckets=(0.05, 0.1, 0.5, 1, 5, 15, 60, 300), registry=REGISTRY)
SCORE = Gauge(
    "evaluation_score",
    "Scores of completed tasks. benchmark=\"\" metric=\"overall\": the overall score; "
    "metric=\"score\": a benchmark's score (0-1); other metrics on their own scale "
    "(bleu and chrf 0-100, the rest 0-1).",
    ["namespace", "task", "benchmark", "metric"], registry=REGISTRY)

GATES_PASSED = Gauge(
    "evaluation_task_gates_passed",
    "Completed tasks with spec.gates: 1 when every gate passed, 0 when one failed (the "
    "Passed condition).", ["namespace", "task"], registry=REGISTRY)
GATE_VERDICTS = Counter(
    "evaluation_gate_verdicts", "Completed tasks with spec.gates, by verdict (passed, failed).",
    ["namespace", "verdict"], registry=REGISTRY)

_lock = threading.RLock()
_phases: dict[tuple[str, str], str] = {}
_score_series: dict[tuple[str, str], set[tuple[str, str, str, str]]] = {}
_gated: set[tuple[str, str]] = set()


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = datetime.datetime.fromisoformat
    try:
        return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))
                ).total_seconds()
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    """Count the task under `phase` (None: under none)."""
    with _lock:
        old = _phases.pop((namespace, name), None)
        if old:
            TASK_PHASE.labels(namespace, old).dec()
        if phase:
            _phases[(namespace, name)] = phase
            TASK_PHASE.labels(namespace, phase).inc()


def observe_task(namespace: str, name: str, status: dict[str, Any] | None) -> None:
    """Bring the task's series in line with `status` as it is now (idempotent)."""
    status = status or {}
    with _lock:
        set_phase(namespace, name, status.get("phase"))
        if status.get("phase") == "Completed":
            record_scores(namespace, name, status)
            if status.get("gates"):
                _set_gates(namespace, name, all(g.get("passed") for g in status["gates"]))


def observe_transition(namespace: str, name: str, previous: dict[str, Any],
                       status: dict[str, Any], created: str | None = None) -> None:
    """After a status change: the phase, and the wait and run durations the first time
    startTime and completionTime appear."""
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
    FAILURES.labels(namespace, reason or "Unknown").inc()


def record_scores(namespace: str, name: str, status: dict[str, Any]) -> None:
    """The overall score, each benchmark's score and each metric, replacing the task's
    previous score series."""
    values: dict[tuple[str, str, str, str], float] = {}
    overall = _number(status.get("overallScore"))
    if overall is not None:
        values[(namespace, name, "", "overall")] = overall
    for benchmark in status.get("benchmarks") or []:
        bench = str(benchmark.get("name") or "")
        score = _number(benchmark.get("score"))
        if score is not None:
            values[(namespace, name, bench, "score")] = score
        for metric, raw in (benchmark.get("metrics") or {}).items():
            value = _number(raw)
            if value is not None:
                values[(namespace, name, bench, str(metric))] = value
    with _lock:
        for labels in _score_series.pop((namespace, name), set()) - set(values):
            SCORE.remove(*labels)
        for labels, value in values.items():
            SCORE.labels(*labels).set(value)
        if values:
            _score_series[(namespace, name)] = set(values)


def _set_gates(namespace: str, name: str, passed: bool) -> None:
    with _lock:
        GATES_PASSED.labels(namespace, name).set(1 if passed else 0)
        _gated.add((namespace, name))


def record_gates(namespace: str, name: str, passed: bool) -> None:
    """A completed task's gate verdict, once, when it completes."""
    _set_gates(namespace, name, passed)
    GATE_VERDICTS.labels(namespace, "passed" if passed else "failed").inc()


def record_purge(outcome: str, seconds: float, objects: int = 0) -> None:
    """One purge attempt: outcome "succeeded" or "failed", its duration, objects deleted."""
    PURGES.labels(outcome).inc()
    PURGE_DURATION.labels(outcome).observe(max(seconds, 0.0))
    if objects:
        PURGED_OBJECTS.inc(objects)


def forget_task(namespace: str, name: str) -> None:
    """A deleted task's series go away with it (its phase count drops)."""
    with _lock:
        set_phase(namespace, name, None)
        for labels in _score_series.pop((namespace, name), set()):
            SCORE.remove(*labels)
        if (namespace, name) in _gated:
            _gated.discard((namespace, name))
            GATES_PASSED.remove(namespace, name)


LEADER = Gauge(
    "evaluation_operator_leader",
    "1 on the operator replica that leads (holds the Lease, or runs alone), 0 on a standby.",
    registry=REGISTRY)
_servers: dict[tuple[str, int], Any] = {}


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve REGISTRY on http://addr:port/metrics in a daemon thread; returns the server
    (call `.shutdown()` to stop it). A standby starts it before it leads (leader.py): the
    same port again returns the server already running."""
    if port and (addr, port) in _servers:
        return _servers[addr, port]
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    if port:
        _servers[addr, port] = server
    return server
