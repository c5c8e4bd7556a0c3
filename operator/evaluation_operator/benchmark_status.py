"""Each benchmark's state in status: `status.benchmarks[]` and `status.currentBenchmark` while
the run goes on (from progress.json), the final entries (scores over the last progress), and
the `PartiallyFailed` outcome of a run whose failurePolicy let it finish without some.

Pure functions over typed runner output (runner_output.py) and the stored status.
"""

from __future__ import annotations

from typing import Any

from evaluation_operator.runner_output import BenchmarkState, Progress, Scores
from evaluation_operator.states import Reason

# Progress fields a final entry keeps from the last progress.json when the scores lack them.
_KEPT_FROM_PROGRESS = ("samplesDone", "samplesTotal", "startedAt", "finishedAt")
# How much of the failed benchmarks the status message names (all are in status.benchmarks).
MESSAGE_BENCHMARKS = 5
MESSAGE_ERROR_LENGTH = 200


def progress_fields(progress: Progress) -> dict[str, Any]:
    """The status fields progress.json fills: `progress`, and with per-benchmark entries
    `benchmarks` and `currentBenchmark` ("" between benchmarks)."""
    fields: dict[str, Any] = {"progress": progress.status_field()}
    if progress.benchmarks:
        fields["benchmarks"] = [b.status_entry() for b in progress.benchmarks]
        fields["currentBenchmark"] = progress.current or ""
    return fields


def _entries(value: Any) -> list[dict[str, Any]]:
    """status.benchmarks as stored (our own writes, but status is editable: check types)."""
    if not isinstance(value, list):
        return []
    return [dict(e) for e in value if isinstance(e, dict) and isinstance(e.get("name"), str)]


def final_benchmarks(previous: Any, final: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished run's entries, each over what the last progress said of it (start and end
    times, how far a failed one got), in the order progress showed them."""
    before = {e["name"]: e for e in _entries(previous)}
    order = list(before)
    merged = []
    for entry in final:
        kept = before.get(entry["name"]) or {}
        merged.append({**{k: kept[k] for k in _KEPT_FROM_PROGRESS if k in kept}, **entry})
    return sorted(merged, key=lambda e: (order.index(e["name"]) if e["name"] in order
                                         else len(order)))


def stopped_benchmarks(previous: Any, reason: Reason) -> list[dict[str, Any]]:
    """A run that ended without scores: the benchmark that was running did not finish."""
    entries = _entries(previous)
    for entry in entries:
        if entry.get("state") == BenchmarkState.RUNNING.value:
            entry["state"] = BenchmarkState.FAILED.value
            entry["error"] = f"the run ended ({reason.value}) before this benchmark finished"
    return entries


def partial_failure_message(scores: Scores, bundle_uri: str) -> str:
    failed = scores.failed
    named = "; ".join(f"{b.name}: {(b.error or '')[:MESSAGE_ERROR_LENGTH]}"
                      for b in failed[:MESSAGE_BENCHMARKS])
    more = (f"; and {len(failed) - MESSAGE_BENCHMARKS} more (status.benchmarks)"
            if len(failed) > MESSAGE_BENCHMARKS else "")
    return (
        f"{len(failed)} of {len(scores.benchmarks)} benchmarks failed ({named}{more}). The "
        "others finished: their scores are in status.benchmarks, and status.overallScore is "
        "their weighted mean only (status.overallScorePartial: true). The results bundle is "
        f"at {bundle_uri}. Fix what each error names (the dataset, or the requests the model "
        "rejects) and create a new task; spec.failurePolicy: FailFast stops a run at its "
        "first failed benchmark instead.")
