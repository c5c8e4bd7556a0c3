"""A runner that succeeded, to the scores in status: from its termination message, else from
summary.json, within a time limit.

Pure apart from the `read_summary` callable it is given, so every outcome is reachable from
unit tests: scores; `Failed/PartiallyFailed` with the finished benchmarks' scores when some
failed (failurePolicy: Continue); `Failed/InvalidRunnerOutput` when the runner's output breaks the
contract; `Evaluating/CollectingResults` while summary.json is missing (until the limit) or S3
cannot be reached (without limit: an S3 outage must not fail finished runs); then
`Failed/ResultsUnreadable`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from evaluation_operator.benchmark_status import partial_failure_message
from evaluation_operator.runner_output import (
    MAX_SUMMARY_BYTES,
    InvalidRunnerOutput,
    RunnerSucceeded,
    Scores,
    Source,
    parse_summary,
)
from evaluation_operator.s3 import ObjectTooLargeError, ResultsLocation, is_unreachable
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import Assessment, invalid_runner_output


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def collect_scores(
    completed: Assessment, read_summary: Callable[[], bytes | None], location: ResultsLocation,
    *, limit_seconds: int, now: datetime.datetime, s3_endpoint: str | None = None,
) -> tuple[Assessment, dict[str, Any] | None]:
    """The assessment to show for a Completed Job, and the status's score fields (or None).

    `read_summary` returns summary.json's bytes (None: no such object), raising
    ObjectTooLargeError past MAX_SUMMARY_BYTES and S3's errors otherwise.
    """
    if completed.phase is not Phase.COMPLETED:
        return completed, None
    message = completed.runner_summary
    if isinstance(message, RunnerSucceeded) and message.scores is not None:
        return _outcome(completed, message.scores, location)
    summary_uri = f"{location.uri}summary.json"
    unreachable = False
    try:
        data = read_summary()
        if data is not None:
            scores = parse_summary(data)
            if isinstance(message, RunnerSucceeded) and message.partial and not scores.partial:
                raise InvalidRunnerOutput(Source.SUMMARY, "benchmarks", (
                    "no benchmark failed, but the termination message says PartiallyFailed"))
            return _outcome(completed, scores, location)
        problem = f"{summary_uri} does not exist"
    except InvalidRunnerOutput as error:
        return _failed_output(completed, error), None
    except ObjectTooLargeError as error:
        too_large = InvalidRunnerOutput(
            Source.SUMMARY, "", f"{error.size} bytes, more than the limit of "
                                f"{MAX_SUMMARY_BYTES} bytes")
        return _failed_output(completed, too_large), None
    except Exception as error:
        unreachable = is_unreachable(error)
        problem = f"reading {summary_uri} failed: {str(error)[:300]}"
    why = ("its termination message was truncated" if isinstance(message, RunnerSucceeded)
           else "it left no termination message")
    finished = _parse_time(completed.completion_time) or now
    if unreachable:
        endpoint = s3_endpoint or "the operator's S3 endpoint"
        return _collecting(completed, (
            f"The runner finished, but {why} and S3 ({endpoint}) cannot be reached to read "
            f"the scores: {problem}. Waiting for S3; the task does not fail while S3 is "
            "unreachable. Check the operator's S3 endpoint and network.")), None
    deadline = finished + datetime.timedelta(seconds=limit_seconds)
    if now >= deadline:
        return Assessment(
            Reason.RESULTS_UNREADABLE,
            f"The runner finished, but {why} and its scores could not be read within "
            f"{limit_seconds}s: {problem}. Check that the runner uploaded its results to "
            f"{location.uri} and that the operator's S3 credentials can read them, then "
            "create a new task.",
            scheduled=True, start_time=completed.start_time,
            completion_time=completed.completion_time), None
    return _collecting(completed, (
        f"The runner finished, but {why} and its scores could not be read yet: {problem}; "
        f"retrying until {_iso(deadline)}, when the task fails with "
        f"{Reason.RESULTS_UNREADABLE.value}. "
        "If this lasts, check that summary.json exists and that the operator's S3 endpoint "
        "and credentials can read it.")), None


def _outcome(completed: Assessment, scores: Scores, location: ResultsLocation
             ) -> tuple[Assessment, dict[str, Any]]:
    """Completed with every score, or Failed/PartiallyFailed with the finished ones."""
    if not scores.partial:
        return completed, scores.status_fields()
    return Assessment(
        Reason.PARTIALLY_FAILED, partial_failure_message(scores, location.bundle_uri),
        scheduled=True, start_time=completed.start_time,
        completion_time=completed.completion_time), scores.status_fields()


def _collecting(completed: Assessment, message: str) -> Assessment:
    return Assessment(Reason.COLLECTING_RESULTS, message, scheduled=True,
                      start_time=completed.start_time)


def _failed_output(completed: Assessment, error: InvalidRunnerOutput) -> Assessment:
    return invalid_runner_output(error, completed.start_time, completed.completion_time)
