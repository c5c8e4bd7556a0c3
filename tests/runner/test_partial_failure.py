"""failurePolicy and per-benchmark states, from real runs against moto's S3 and the scripted
model: one benchmark that cannot be scored fails alone (Continue) or fails the run
(FailFast); progress.json says which benchmark is where while the run goes on."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from devcluster.fake_llm import FakeLLM
from evaluation_runner import layout
from evaluation_runner.config import parse_config
from evaluation_runner.errors import EXIT_CONFIGURATION, EXIT_OK
from evaluation_runner.runner import run
from evaluation_runner.storage import ResultsWriter

from tests.runner.conftest import DATA_BUCKET, RESULTS_BUCKET, base_config, run_runner
from tests.support.s3 import S3Endpoint

CAPITALS = [{"prompt": f"Capital of {country}?", "reference": city}
            for country, city in (("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"))]
SAY = [{"prompt": f"Say {word}.", "reference": word} for word in ("one", "two", "three")]


def upload(s3: S3Endpoint, rows: list[dict[str, Any]]) -> str:
    key = f"{uuid.uuid4().hex}.jsonl"
    s3.client().put_object(Bucket=DATA_BUCKET, Key=key,
                           Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    return f"s3://{DATA_BUCKET}/{key}"


def generation(name: str, uri: str) -> dict[str, Any]:
    return {"name": name, "dataset": {"uri": uri}, "task": "generation",
            "metrics": ["exact-match"]}


def read(s3: S3Endpoint, prefix: str, key: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=prefix + key)["Body"].read()
    return body


def keys(s3: S3Endpoint, prefix: str) -> set[str]:
    listing = s3.client().list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix):] for o in listing.get("Contents", [])}


@pytest.fixture
def capitals_llm(llm: FakeLLM) -> FakeLLM:
    llm.answers = {"France": "Paris", "Japan": "Kyoto", "Kenya": "Nairobi"}
    return llm


def test_continue_scores_the_readable_benchmark_and_reports_the_unreadable_one(
        tmp_path: Path, capitals_llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    missing = f"s3://{DATA_BUCKET}/no-such-{uuid.uuid4().hex}.jsonl"
    prefix = f"runs/partial/{uuid.uuid4().hex}/"
    config = base_config(capitals_llm.url, runner_buckets, prefix, [
        generation("capitals", upload(runner_buckets, CAPITALS)), generation("lost", missing)],
        failurePolicy="Continue")
    result = run_runner(tmp_path, config, runner_buckets)

    assert result.exit_code == EXIT_OK, result.stderr
    message = result.termination
    assert message["status"] == "PartiallyFailed" and message["partial"] is True
    assert message["overallScore"] == pytest.approx(2 / 3)  # over "capitals" only
    by_name = {b["name"]: b for b in message["benchmarks"]}
    assert by_name["capitals"]["score"] == pytest.approx(2 / 3)
    assert by_name["lost"]["state"] == "Failed"
    assert missing in by_name["lost"]["error"] and "NoSuchKey" in by_name["lost"]["error"]

    summary = json.loads(read(runner_buckets, prefix, layout.SUMMARY_JSON))
    assert summary["partial"] is True and summary["overallScore"] == pytest.approx(2 / 3)
    states = {b["name"]: b for b in summary["benchmarks"]}
    assert states["capitals"]["state"] == "Completed" and states["capitals"]["samples"] == 3
    assert states["capitals"]["startedAt"] <= states["capitals"]["finishedAt"]
    assert states["lost"]["state"] == "Failed" and "score" not in states["lost"]
    assert missing in states["lost"]["error"]
    # The bundle is there and downloadable, with the finished benchmark's files only.
    stored = keys(runner_buckets, prefix)
    assert {layout.RESULTS_ZIP, layout.metrics_key("capitals"),
            layout.samples_key("capitals")} <= stored
    assert layout.metrics_key("lost") not in stored
    with zipfile.ZipFile(io.BytesIO(read(runner_buckets, prefix, layout.RESULTS_ZIP))) as z:
        assert json.loads(z.read(layout.SUMMARY_JSON))["partial"] is True
    progress = json.loads(read(runner_buckets, prefix, layout.PROGRESS_JSON))
    assert {n: b["state"] for n, b in progress["benchmarks"].items()} == {
        "capitals": "Completed", "lost": "Failed"}
    assert "failed" in result.stderr and "failurePolicy: Continue" in result.stderr


def test_fail_fast_fails_the_run_on_the_unreadable_dataset_before_any_model_call(
        tmp_path: Path, capitals_llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    missing = f"s3://{DATA_BUCKET}/no-such-{uuid.uuid4().hex}.jsonl"
    prefix = f"runs/failfast/{uuid.uuid4().hex}/"
    config = base_config(capitals_llm.url, runner_buckets, prefix, [
        generation("capitals", upload(runner_buckets, CAPITALS)), generation("lost", missing)],
        failurePolicy="FailFast")
    result = run_runner(tmp_path, config, runner_buckets)

    assert result.exit_code == EXIT_CONFIGURATION
    assert result.termination["status"] == "Failed"
    assert result.termination["reason"] == "ConfigurationError"
    assert "benchmarks[1].dataset.uri" in result.termination["message"]
    assert capitals_llm.requests == []
    assert layout.SUMMARY_JSON not in keys(runner_buckets, prefix)


def test_continue_fails_a_benchmark_whose_requests_the_model_rejects(
        tmp_path: Path, capitals_llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    capitals_llm.reject = {"Say ": 400}  # e.g. prompts longer than the model's context
    prefix = f"runs/rejected/{uuid.uuid4().hex}/"
    config = base_config(capitals_llm.url, runner_buckets, prefix, [
        generation("say", upload(runner_buckets, SAY)),
        generation("capitals", upload(runner_buckets, CAPITALS))], failurePolicy="Continue")
    result = run_runner(tmp_path, config, runner_buckets)

    assert result.exit_code == EXIT_OK, result.stderr
    assert result.termination["status"] == "PartiallyFailed"
    failed = next(b for b in result.termination["benchmarks"] if b["name"] == "say")
    assert failed["state"] == "Failed" and "rejected the request: HTTP 400" in failed["error"]
    # Rejections are not retried, and the benchmark stops at them.
    say_requests = [r for r in capitals_llm.requests if "Say " in json.dumps(r)]
    assert 1 <= len(say_requests) <= len(SAY)
    summary = json.loads(read(runner_buckets, prefix, layout.SUMMARY_JSON))
    assert {b["name"]: b["state"] for b in summary["benchmarks"]} == {
        "capitals": "Completed", "say": "Failed"}


def test_a_rejected_api_key_still_fails_the_run_at_once(
        tmp_path: Path, capitals_llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    capitals_llm.require_key = "secret"  # the runner sends none: every benchmark would fail
    config = base_config(capitals_llm.url, runner_buckets, f"runs/key/{uuid.uuid4().hex}/", [
        generation("capitals", upload(runner_buckets, CAPITALS)),
        generation("say", upload(runner_buckets, SAY))], failurePolicy="Continue")
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == EXIT_CONFIGURATION
    assert "rejected the API key" in result.termination["message"]
    assert not any("Say " in json.dumps(r) for r in capitals_llm.requests)


def test_continue_with_every_benchmark_failed_is_a_plain_failure(
        tmp_path: Path, capitals_llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    config = base_config(capitals_llm.url, runner_buckets, f"runs/all/{uuid.uuid4().hex}/", [
        generation("a", f"s3://{DATA_BUCKET}/missing-a.jsonl"),
        generation("b", f"s3://{DATA_BUCKET}/missing-b.jsonl")], failurePolicy="Continue")
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == EXIT_CONFIGURATION
    message = result.termination["message"]
    assert message.startswith("every benchmark failed") and "missing-a" in message \
        and "missing-b" in message


def test_an_unknown_failure_policy_is_a_configuration_error() -> None:
    from evaluation_runner.errors import ConfigurationError

    raw = base_config("http://m/v1", S3Endpoint(endpoint_url="http://s3"), "p/",
                      [generation("g", "s3://d/g.jsonl")], failurePolicy="Sometimes")
    with pytest.raises(ConfigurationError, match="failurePolicy: 'Sometimes'"):
        parse_config(raw)


class RecordingWriter(ResultsWriter):
    """The real writer, keeping every progress.json it uploads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress: list[dict[str, Any]] = []

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream"
            ) -> None:
        super().put(key, body, content_type)
        if key == layout.PROGRESS_JSON:
            self.progress.append(json.loads(body))


def test_progress_json_moves_each_benchmark_from_pending_to_running_to_completed(
        capitals_llm: FakeLLM, runner_buckets: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", runner_buckets.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", runner_buckets.secret_key)
    capitals_llm.delay_seconds = 0.15
    raw = base_config(capitals_llm.url, runner_buckets, f"runs/moving/{uuid.uuid4().hex}/", [
        generation("capitals", upload(runner_buckets, CAPITALS)),
        generation("say", upload(runner_buckets, SAY)),
        generation("lost", f"s3://{DATA_BUCKET}/missing-{uuid.uuid4().hex}.jsonl")],
        failurePolicy="Continue", progressIntervalSeconds=0.05)
    raw["parameters"]["concurrency"] = 1
    config = parse_config(raw)
    writer = RecordingWriter(config.output)
    run(config, writer)

    seen = [{name: b["state"] for name, b in doc["benchmarks"].items()}
            for doc in writer.progress]
    assert seen[0] == {"capitals": "Pending", "say": "Pending", "lost": "Failed"}
    assert {"capitals": "Running", "say": "Pending", "lost": "Failed"} in seen
    assert {"capitals": "Completed", "say": "Running", "lost": "Failed"} in seen
    assert seen[-1] == {"capitals": "Completed", "say": "Completed", "lost": "Failed"}
    order = ["Pending", "Running", "Completed"]
    for name in ("capitals", "say"):
        states = [order.index(s[name]) for s in seen]
        assert states == sorted(states), name  # never back
    last = writer.progress[-1]["benchmarks"]
    assert last["say"]["samplesDone"] == last["say"]["samplesTotal"] == 3
    assert last["capitals"]["startedAt"] <= last["capitals"]["finishedAt"] \
        <= last["say"]["startedAt"]
    assert "NoSuchKey" in last["lost"]["error"] and last["lost"]["samplesTotal"] == 0
    running = next(doc for doc in writer.progress
                   if doc["benchmarks"]["say"]["state"] == "Running")
    assert "finishedAt" not in running["benchmarks"]["say"]


def test_an_unknown_metric_fails_at_once_whatever_the_policy(
        tmp_path: Path, capitals_llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    bad = {**generation("say", upload(runner_buckets, SAY)), "metrics": ["bleurt"]}
    config = base_config(capitals_llm.url, runner_buckets, f"runs/metric/{uuid.uuid4().hex}/", [
        generation("capitals", upload(runner_buckets, CAPITALS)), bad], failurePolicy="Continue")
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == EXIT_CONFIGURATION
    assert "bleurt" in result.termination["message"]
    assert capitals_llm.requests == []
