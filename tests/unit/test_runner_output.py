"""Runner output is untrusted: the parsers accept the contract and refuse everything else with
InvalidRunnerOutput, and whatever they accept makes a status the API server takes."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from evaluation_operator import runner_output as ro
from evaluation_operator.collecting import collect_scores
from evaluation_operator.runner_output import InvalidRunnerOutput
from evaluation_operator.s3 import ResultsLocation
from evaluation_operator.spec import METRICS
from evaluation_operator.status import TaskContext, assess, render_status
from evaluation_runner import bundle, termination
from evaluation_runner.config import METRICS as RUNNER_METRICS
from evaluation_runner.metrics import REGISTRY, MetricValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import crd_schema

# Metrics the runner reports on sacrebleu's 0-100 scale (its registry says so).
SCALE_100 = tuple(name for name, metric in REGISTRY.items() if metric.scale == 100.0)

LOCATION = ResultsLocation("eval-results", "runs/team-a/t/0b6c1234/")
CTX = TaskContext(job_name="t-eval", timeout="2h", retries=0, gpus=1,
                  gpu_resource="nvidia.com/gpu", memory="16Gi")
NOW = datetime.datetime(2026, 1, 1, 1, 0, tzinfo=datetime.UTC)
FINISHED = "2026-01-01T00:59:00Z"


def good_message(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "v": 1, "status": "Succeeded", "overallScore": 0.71,
        "benchmarks": [{"name": "arc-easy", "score": 0.81, "primaryMetric": "accuracy",
                        "metrics": {"accuracy": 0.81}, "samples": 500},
                       {"name": "wmt", "score": 0.3, "primaryMetric": "bleu",
                        "metrics": {"bleu": 30.0, "exact-match": 0.1}, "samples": 20}],
        "results": {"uri": LOCATION.uri, "bundle": LOCATION.bundle_uri}}
    message.update(changes)
    return message


def error_of(parse: Callable[[str], Any], text: str) -> str:
    with pytest.raises(InvalidRunnerOutput) as caught:
        parse(text)
    return str(caught.value)


# --- what the runner really writes is accepted ---------------------------------------------


def runner_results() -> list[bundle.BenchmarkResult]:
    return [bundle.BenchmarkResult(
        name=f"bench-{i}", task="generation", primary_metric="bleu", score=0.4213, weight=1.0,
        metrics={m: MetricValue(value=42.13 if m in SCALE_100 else 0.5, stderr=None,
                                samples=7) for m in RUNNER_METRICS},
        samples=[{"input": "x"}] * 7, dataset={"uri": "s3://d/x.jsonl", "sha256": "0" * 64})
        for i in range(32)]


def test_the_runners_own_termination_message_and_summary_parse() -> None:
    results = runner_results()
    entries = [{"name": r.name, "score": r.score, "primaryMetric": r.primary_metric,
                "metrics": {k: v.value for k, v in r.metrics.items()}, "samples": 7}
               for r in results]
    data = termination.success_message(0.4213, entries[:1], LOCATION.uri, LOCATION.bundle_uri)
    message = ro.parse_termination_message(data.decode())
    assert isinstance(message, ro.RunnerSucceeded) and message.scores is not None
    assert message.scores.benchmarks[0].metrics == {
        m: (42.13 if m in SCALE_100 else 0.5) for m in RUNNER_METRICS}
    # 32 benchmarks do not fit in 4 KiB: the runner truncates and summary.json has them all.
    truncated = termination.success_message(0.4213, entries, LOCATION.uri, LOCATION.bundle_uri)
    assert ro.parse_termination_message(truncated.decode()) == ro.RunnerSucceeded(None, True)
    summary = bundle.bundle_files(results, bundle.summary_document(results, 0.4213, {
        "framework": {"name": "builtin", "version": "0.1.0"}}))["summary.json"]
    assert len(ro.parse_summary(summary).benchmarks) == 32
    failure = termination.failure_message("ModelUnreachable", "x" * 5000)
    assert ro.parse_termination_message(failure.decode()) == ro.RunnerFailed(
        ro.RunnerReason.MODEL_UNREACHABLE, "x" * 1024)


def test_operator_and_runner_share_metric_names_and_scales() -> None:
    assert set(METRICS) == set(RUNNER_METRICS)
    assert set(ro.PERCENT_METRICS) == set(SCALE_100)


def test_caps_match_the_crd() -> None:
    spec = crd_schema.task_schema()["properties"]["spec"]["properties"]["benchmarks"]
    assert spec["maxItems"] == ro.MAX_BENCHMARKS
    assert spec["items"]["properties"]["name"]["maxLength"] == ro.MAX_NAME_LENGTH


# --- what the issue found, each refused with the field and value named -------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("[" * 2000 + "]" * 2000, "nested more than 32 levels"),
    ('{"v": 1, "status": "Succeeded", "overallScore": NaN, "benchmarks": []}',
     "overallScore: NaN is not a finite number"),
    ('{"v": 1, "status": "Succeeded", "overallScore": Infinity}',
     "overallScore: Infinity is not a finite"),
    ('{"v": 1, "status": "Succeeded", "overallScore": 1e999}',
     "overallScore: Infinity is not a finite"),
    (json.dumps(good_message(overallScore=42)), "overallScore: 42 is outside 0-1"),
    (json.dumps(good_message(overallScore=-5)), "overallScore: -5 is outside 0-1"),
    (json.dumps(good_message(benchmarks=[1, 2])), "benchmarks[0]: expected an object, got 1"),
    (json.dumps(good_message(benchmarks=[{"name": "a", "score": "high"}])),
     'benchmarks[0].score: expected a number, got "high"'),
    (json.dumps(good_message(benchmarks=[{"name": "a", "score": 0.5, "samples": "many"}])),
     'benchmarks[0].samples: expected a whole number, got "many"'),
    (json.dumps(good_message(benchmarks=[{"name": "a", "score": 0.5, "samples": -1}])),
     "benchmarks[0].samples: -1 is outside"),
    (json.dumps(good_message(benchmarks=[{"name": "a", "score": 0.5,
                                          "metrics": {"bleu": 101}}])),
     "benchmarks[0].metrics.bleu: 101 is outside 0-100"),
    (json.dumps(good_message(benchmarks=[{"name": "a", "score": 0.5,
                                          "metrics": {"accuracy": 1.5}}])),
     "benchmarks[0].metrics.accuracy: 1.5 is outside 0-1"),
    (json.dumps(good_message(benchmarks=[{"name": "a", "score": 0.5,
                                          "metrics": {"vibes": 0.5}}])),
     'benchmarks[0].metrics.vibes: "vibes" is not a metric'),
    (json.dumps(good_message(benchmarks=[])), "benchmarks: is empty"),
    (json.dumps(good_message(benchmarks=[{"name": "a", "score": True}])),
     "benchmarks[0].score: expected a number, got true"),
    (json.dumps(good_message(v=2)), "v: expected 1"),
    (json.dumps(good_message(v=True)), "v: expected 1"),
    (json.dumps(good_message(status="Done")),
     'status: "Done" is not one of Succeeded, PartiallyFailed, Failed'),
    ("done, all good", "not JSON"),
    ('{"v": 1, "status": "Succeeded", "overallScore": 0.5, "benchmarks": [{"name": "'
     + "a" * 5000 + '"}]}', "more than the limit of 4096 bytes"),
    ('{"v": 1, "status": "Succeeded", "overallScore": ' + "1" * 1000 + "}", "too large"),
    ('{"v": 1, "status": "Succeeded", "overallScore": 0.5, "benchmarks": [{"name": "\\ud800",'
     ' "score": 0.5}]}', "not valid UTF-8 text"),
])
def test_bad_termination_messages_name_field_and_value(text: str, expected: str) -> None:
    message = error_of(ro.parse_termination_message, text)
    assert message.startswith("termination message")
    assert expected in message


@pytest.mark.parametrize(("text", "expected"), [
    ('{"samplesDone": 50, "samplesTotal": 10}', "samplesDone: 50 is more than samplesTotal"),
    ('{"samplesDone": -5, "samplesTotal": 10}', "samplesDone: -5 is outside"),
    ('{"samplesDone": 1, "samplesTotal": 10, "benchmarks": {"a": {"samplesDone": 3, '
     '"samplesTotal": 2}}}', "benchmarks.a.samplesDone: 3 is more than samplesTotal"),
    ('{"samplesDone": 1.5, "samplesTotal": 10}', "samplesDone: expected a whole number"),
    ("[]", "(document): expected an object"),
    ('{"samplesDone": 1, "samplesTotal": 2, "pad": "' + "x" * 70_000 + '"}', "more than the"),
])
def test_bad_progress_is_refused(text: str, expected: str) -> None:
    message = error_of(ro.parse_progress, text)
    assert message.startswith("progress.json") and expected in message


def test_progress_within_the_contract() -> None:
    progress = ro.parse_progress(b'{"samplesDone": 350, "samplesTotal": 1000, "updatedAt": "x",'
                                 b' "benchmarks": {"arc": {"samplesDone": 350,'
                                 b' "samplesTotal": 500}}}')
    assert progress.status_field() == {"samplesDone": 350, "samplesTotal": 1000,
                                       "text": "350/1000"}
    assert progress.benchmarks == (ro.BenchmarkProgress("arc", 350, 500),)


def test_long_values_are_quoted_short() -> None:
    text = json.dumps(good_message(status="x" * 10_00))
    message = error_of(ro.parse_termination_message, text)
    assert len(message) < 200 and '..."' in message


# --- the outcomes a user sees -------------------------------------------------------------


def completed(message: str | None) -> Any:
    terminated = {"exitCode": 0, "reason": "Completed", "finishedAt": FINISHED}
    if message is not None:
        terminated["message"] = message
    job = {"metadata": {"name": "t-eval", "uid": "j"}, "spec": {},
           "status": {"conditions": [{"type": "Complete", "status": "True"}],
                      "startTime": "2026-01-01T00:00:00Z", "completionTime": FINISHED}}
    pod = {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:01Z"},
           "spec": {"nodeName": "n"},
           "status": {"phase": "Succeeded", "startTime": "2026-01-01T00:00:01Z",
                      "containerStatuses": [{"name": "runner",
                                             "state": {"terminated": terminated}}]}}
    return assess(job, [pod], CTX)


def outcome(message: str | None, read: Callable[[], bytes | None], now: datetime.datetime = NOW
            ) -> dict[str, Any]:
    assessment, scores = collect_scores(completed(message), read, LOCATION, limit_seconds=300,
                                        now=now, s3_endpoint="http://s3.local")
    status = render_status({}, assessment, generation=1, now="2026-01-01T01:00:00Z",
                           job_name="t-eval", configmap_name="t-config",
                           results={"uri": LOCATION.uri, "bundle": LOCATION.bundle_uri},
                           scores=scores)
    return status


def missing() -> bytes | None:
    return None


def test_nan_score_fails_the_task_naming_the_field() -> None:
    status = outcome('{"v": 1, "status": "Succeeded", "overallScore": NaN}', missing)
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidRunnerOutput")
    assert "overallScore" in status["message"] and "NaN" in status["message"]
    assert "spec.framework.image" in status["message"]


def test_scores_come_from_summary_json_when_the_message_is_truncated() -> None:
    summary = json.dumps(good_message()).encode()
    status = outcome('{"v": 1, "status": "Succeeded", "truncated": true}', lambda: summary)
    assert status["phase"] == "Completed" and status["overallScore"] == 0.71
    assert status["benchmarks"][1]["metrics"] == {"bleu": 30.0, "exact-match": 0.1}


def test_a_bad_summary_json_fails_the_task() -> None:
    status = outcome(None, lambda: b'{"overallScore": 0.5, "benchmarks": [{"name": "a"}]}')
    assert status["reason"] == "InvalidRunnerOutput"
    assert "summary.json: benchmarks[0].score: expected a number, got null" in status["message"]


def test_a_missing_summary_waits_then_fails_with_results_unreadable() -> None:
    status = outcome("", missing)
    assert (status["phase"], status["reason"]) == ("Evaluating", "CollectingResults")
    assert "retrying until 2026-01-01T01:04:00Z" in status["message"]
    later = NOW + datetime.timedelta(minutes=5)
    status = outcome("", missing, now=later)
    assert (status["phase"], status["reason"]) == ("Failed", "ResultsUnreadable")
    assert f"{LOCATION.uri}summary.json does not exist" in status["message"]


def test_an_unreachable_s3_is_waited_for_without_limit() -> None:
    from botocore.exceptions import EndpointConnectionError

    def down() -> bytes | None:
        raise EndpointConnectionError(endpoint_url="http://s3.local")

    status = outcome("", down, now=NOW + datetime.timedelta(days=3))
    assert (status["phase"], status["reason"]) == ("Evaluating", "CollectingResults")
    assert "cannot be reached" in status["message"] and "http://s3.local" in status["message"]


def test_an_oversized_summary_fails_the_task() -> None:
    from evaluation_operator.s3 import ObjectTooLargeError

    def huge() -> bytes | None:
        raise ObjectTooLargeError("summary.json", 150_000_000, ro.MAX_SUMMARY_BYTES)

    status = outcome(None, huge)
    assert status["reason"] == "InvalidRunnerOutput" and "150000000 bytes" in status["message"]


# --- properties: any input, only our errors, always a valid status ---------------------------

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
json_leaves = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(
    json_leaves, lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)
numbers = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 200)
           | st.sampled_from([0, 1, 0.5, 100, 42, -0.0, 1e-300]) | json_leaves)
metric_names = st.sampled_from([*METRICS, "vibes", ""])
benchmark_like = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=70) | json_leaves, "score": numbers,
    "primaryMetric": metric_names | json_leaves, "samples": numbers,
    "metrics": st.dictionaries(metric_names, numbers, max_size=4) | json_values,
})
summary_like = st.fixed_dictionaries({}, optional={
    "v": st.sampled_from([1, 2, True, "1"]), "status": st.sampled_from(
        ["Succeeded", "Failed", "x"]) | json_leaves,
    "overallScore": numbers, "truncated": st.booleans() | json_leaves,
    "benchmarks": st.lists(benchmark_like, max_size=4) | json_values,
    "reason": st.sampled_from([r.value for r in ro.RunnerReason]) | json_values,
    "message": st.text(max_size=30) | json_values,
})
progress_like = st.fixed_dictionaries({}, optional={
    "samplesDone": numbers, "samplesTotal": numbers,
    "benchmarks": st.dictionaries(st.text(max_size=8), st.fixed_dictionaries(
        {}, optional={"samplesDone": numbers, "samplesTotal": numbers}) | json_values,
                                  max_size=3) | json_values,
})


def as_json(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def documents(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes | str]:
    """Raw bytes, any JSON, contract-shaped JSON with hostile leaves, and deep nesting."""
    deep = st.integers(1, 5000).map(lambda n: "[" * n + "]" * n)
    return (st.binary(max_size=300) | json_values.map(as_json) | shaped.map(as_json)
            | shaped.map(lambda v: as_json(v).encode()) | deep)


def assert_valid_status(status: dict[str, Any]) -> None:
    json.dumps(status, allow_nan=False)  # a patch the client can send at all
    problems = crd_schema.errors(status, crd_schema.status_schema())
    assert problems == []
    for benchmark in status.get("benchmarks", []):
        assert 0 <= benchmark["score"] <= 1
        for name, value in (benchmark.get("metrics") or {}).items():
            assert 0 <= value <= ro.metric_range(name) and math.isfinite(value)


@SETTINGS
@given(documents(summary_like))
def test_any_termination_message_gives_a_valid_status(data: bytes | str) -> None:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    with contextlib.suppress(InvalidRunnerOutput):
        ro.parse_termination_message(text)
    status = outcome(text, missing)
    assert status["phase"] in ("Completed", "Failed", "Evaluating")
    assert_valid_status(status)


@SETTINGS
@given(documents(summary_like))
def test_any_summary_json_gives_a_valid_status(data: bytes | str) -> None:
    raw = data.encode(errors="surrogatepass") if isinstance(data, str) else data
    with contextlib.suppress(InvalidRunnerOutput):
        ro.parse_summary(raw)
    status = outcome('{"v": 1, "status": "Succeeded", "truncated": true}', lambda: raw)
    assert status["reason"] in ("Succeeded", "InvalidRunnerOutput")
    assert_valid_status(status)


@SETTINGS
@given(documents(progress_like))
def test_any_progress_json_gives_a_valid_progress(data: bytes | str) -> None:
    try:
        progress = ro.parse_progress(data)
    except InvalidRunnerOutput:
        return
    assert 0 <= progress.done <= progress.total
    assert_valid_status({"progress": progress.status_field()})


@SETTINGS
@given(documents(summary_like))
def test_a_failed_runners_message_never_breaks_the_status(data: bytes | str) -> None:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    pod = {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:01Z"},
           "spec": {"nodeName": "n"},
           "status": {"phase": "Failed", "startTime": "2026-01-01T00:00:01Z",
                      "containerStatuses": [{"name": "runner", "state": {"terminated": {
                          "exitCode": 1, "reason": "Error", "message": text}}}]}}
    job = {"metadata": {"name": "t-eval", "uid": "j"}, "spec": {},
           "status": {"conditions": [{"type": "Failed", "status": "True",
                                      "reason": "BackoffLimitExceeded"}]}}
    status = render_status({}, assess(job, [pod], CTX), generation=1,
                           now="2026-01-01T01:00:00Z", job_name="t-eval",
                           configmap_name="t-config", results={})
    assert status["phase"] == "Failed"
    assert_valid_status(status)


def test_deep_nesting_in_a_large_document_never_reaches_the_json_parser() -> None:
    for parse in (ro.parse_summary, ro.parse_progress):
        message = error_of(parse, "[" * 30_000 + "]" * 30_000)
        assert "nested more than 32 levels" in message
    # Brackets inside strings do not count.
    assert ro.parse_progress('{"samplesDone": 1, "samplesTotal": 2, "x": "' + "[" * 100 + '"}'
                             ).done == 1
