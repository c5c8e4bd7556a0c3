"""The runner's termination message, as the kubelet hands it over, read by the operator.

The runner runs in-process on a config the operator built, against the scripted model server
and moto's S3; the operator's pure status code reads the pod the kubelet would report. Scores
in status must equal the bundle's summary.json, whether they came from the message or, when
the message had to be truncated to fit 4 KiB, from S3.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from devcluster.fake_llm import FakeLLM
from evaluation_operator.collecting import collect_scores
from evaluation_operator.config import OperatorSettings
from evaluation_operator.runner_output import (
    MAX_SUMMARY_BYTES,
    RunnerFailed,
    RunnerReason,
    RunnerSucceeded,
    parse_summary,
    parse_termination_message,
)
from evaluation_operator.s3 import ResultsLocation, read_capped
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import RUNNER_REASON_HINTS, Assessment, TaskContext, assess
from evaluation_operator.task import Task
from evaluation_runner import termination
from evaluation_runner.__main__ import main as runner_main
from evaluation_runner.errors import EXIT_CONFIGURATION, EXIT_TRANSIENT

from tests.contract.conftest import (
    KUBELET_MESSAGE_LIMIT,
    finished_job,
    kubelet_message,
    mounted_config,
    operator_children,
    task_object,
    terminated_pod,
)
from tests.support.s3 import S3Endpoint

RESULTS = "contract-results"
DATA = "contract-data"
ROWS = [{"prompt": "Capital of France?", "reference": "Paris"},
        {"prompt": "Capital of Japan?", "reference": "Tokyo"},
        {"prompt": "Capital of Kenya?", "reference": "Nairobi"}]
ALL_GENERATION_METRICS = ["exact-match", "f1", "bleu", "chrf", "rouge-1", "rouge-2", "rouge-l",
                          "accuracy"]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    server.answers = {"France": "Paris", "Japan": "Kyoto", "Kenya": "Nairobi"}
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(s3_server: S3Endpoint) -> S3Endpoint:
    client = s3_server.client()
    for bucket in (RESULTS, DATA):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=DATA, Key="capitals.jsonl",
                      Body="".join(json.dumps(r) + "\n" for r in ROWS).encode())
    return s3_server


@dataclass
class Finished:
    exit_code: int
    message: str  # as the kubelet reports it
    assessment: Assessment
    settings: OperatorSettings
    location: ResultsLocation


def benchmark(name: str, metrics: list[str], uri: str = f"s3://{DATA}/capitals.jsonl"
              ) -> dict[str, Any]:
    return {"name": name, "dataset": {"uri": uri}, "task": "generation", "metrics": metrics}


def run_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Endpoint, llm: FakeLLM,
             benchmarks: list[dict[str, Any]], retries: int = 0,
             **spec: Any) -> Finished:
    settings = OperatorSettings(s3_bucket=RESULTS, s3_endpoint=s3.endpoint_url,
                                s3_region=s3.region, progress_interval_seconds=1)
    task = task_object("contract", {
        "model": {"name": "scripted", "endpoint": {"url": llm.url, "api": "chat"}},
        "benchmarks": benchmarks, "resources": {"gpu": 0}, "retries": retries, **spec})
    configmap, job = operator_children(task, settings)
    config = mounted_config(configmap, job, tmp_path / "pod")
    log = tmp_path / "termination-log"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    code = runner_main(["--config", str(config), "--termination-log", str(log)])
    message = kubelet_message(log)
    if code == 0:
        job_status = finished_job("Complete")
    elif code == EXIT_CONFIGURATION:
        job_status = finished_job("Failed", "PodFailurePolicy")  # the Job's FailJob rule
    else:
        job_status = finished_job("Failed", "BackoffLimitExceeded")
    parsed = Task.from_body(task, settings)
    assert parsed.spec is not None and parsed.location is not None
    context = TaskContext(job_name="contract-eval", timeout="1h", retries=parsed.spec.retries,
                          gpus=0, gpu_resource="nvidia.com/gpu", memory="8Gi")
    assessment = assess(job_status, [terminated_pod(code, message)], context)
    return Finished(code, message, assessment, settings, parsed.location)


def summary_json(s3: S3Endpoint, finished: Finished) -> bytes:
    data = read_capped(s3.client(), finished.location, "summary.json", MAX_SUMMARY_BYTES)
    assert data is not None
    return data


def status_scores(s3: S3Endpoint, finished: Finished) -> dict[str, Any]:
    """What the operator puts in status: the message's scores, or summary.json's when the
    message is truncated (reconcile reads it with read_capped, as here)."""
    assessment, scores = collect_scores(
        finished.assessment, lambda: summary_json(s3, finished), finished.location,
        limit_seconds=60, now=datetime.datetime.now(datetime.UTC))
    assert assessment.reason is Reason.SUCCEEDED, assessment.message
    assert scores is not None
    return scores


def test_success_message_fills_status_with_the_bundles_scores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Endpoint, llm: FakeLLM) -> None:
    finished = run_task(tmp_path, monkeypatch, s3, llm, [
        benchmark("capitals", ["exact-match", "bleu"]), benchmark("again", ["f1"])])
    assert finished.exit_code == 0
    assert finished.assessment.phase is Phase.COMPLETED
    message = finished.assessment.runner_summary
    assert isinstance(message, RunnerSucceeded) and message.scores, "no S3 read needed"
    scores = status_scores(s3, finished)
    assert scores == parse_summary(summary_json(s3, finished)).status_fields()
    assert scores["benchmarks"][0]["metrics"]["exact-match"] == pytest.approx(2 / 3)
    assert scores["benchmarks"][0]["samples"] == len(ROWS)


@pytest.mark.parametrize("count, metrics_kept", [(12, False), (32, None)],
                         ids=["metrics-dropped", "benchmarks-dropped"])
def test_a_message_over_4_kib_is_truncated_and_the_operator_reads_summary_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Endpoint, llm: FakeLLM,
        count: int, metrics_kept: bool | None) -> None:
    # Longest names and most metrics the CRD allows, so the full message cannot fit.
    names = [f"{i:02d}-" + "b" * 60 for i in range(count)]
    finished = run_task(tmp_path, monkeypatch, s3, llm,
                        [benchmark(n, ALL_GENERATION_METRICS) for n in names])
    assert finished.exit_code == 0
    raw = (tmp_path / "termination-log").read_bytes()
    assert len(raw) <= KUBELET_MESSAGE_LIMIT, "the kubelet would cut the JSON in half"
    message = finished.assessment.runner_summary
    assert finished.assessment.phase is Phase.COMPLETED
    assert message == RunnerSucceeded(scores=None, truncated=True)
    written = json.loads(raw)
    if metrics_kept is None:
        assert "benchmarks" not in written
    else:
        assert [b["name"] for b in written["benchmarks"]] == names
        assert all("metrics" not in b for b in written["benchmarks"])
    scores = status_scores(s3, finished)
    assert [b["name"] for b in scores["benchmarks"]] == names
    assert all(len(b["metrics"]) == len(ALL_GENERATION_METRICS) for b in scores["benchmarks"])
    assert scores["overallScore"] == json.loads(summary_json(s3, finished))["overallScore"]
    assert written["results"]["bundle"].endswith("/results.zip")


def test_a_partial_run_fails_partially_with_the_bundles_scores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Endpoint, llm: FakeLLM) -> None:
    """The spec's default failurePolicy (Continue) reaches the runner through config.json;
    its PartiallyFailed message and summary.json give the operator the same status."""
    missing = f"s3://{DATA}/no-such-dataset.jsonl"
    finished = run_task(tmp_path, monkeypatch, s3, llm, [
        benchmark("capitals", ["exact-match"]), benchmark("lost", ["f1"], uri=missing)])
    assert finished.exit_code == 0
    message = finished.assessment.runner_summary
    assert isinstance(message, RunnerSucceeded) and message.partial and message.scores
    assessment, scores = collect_scores(
        finished.assessment, lambda: summary_json(s3, finished), finished.location,
        limit_seconds=60, now=datetime.datetime.now(datetime.UTC))
    assert (assessment.phase, assessment.reason) == (Phase.FAILED, Reason.PARTIALLY_FAILED)
    assert "lost: benchmarks[1].dataset.uri" in assessment.message and missing in \
        assessment.message
    assert finished.location.bundle_uri in assessment.message
    assert scores is not None and scores["overallScorePartial"] is True
    assert scores["overallScore"] == pytest.approx(2 / 3)
    from_summary = parse_summary(summary_json(s3, finished)).status_fields()
    # The message's error is cut shorter than summary.json's; everything else agrees.
    assert [{k: v for k, v in b.items() if k != "error"} for b in scores["benchmarks"]] == \
        [{k: v for k, v in b.items() if k != "error"} for b in from_summary["benchmarks"]]
    assert [b["state"] for b in scores["benchmarks"]] == ["Completed", "Failed"]


def test_fail_fast_from_the_spec_fails_the_task_at_the_unreadable_dataset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Endpoint, llm: FakeLLM) -> None:
    missing = f"s3://{DATA}/no-such-dataset.jsonl"
    finished = run_task(tmp_path, monkeypatch, s3, llm, [
        benchmark("capitals", ["exact-match"]), benchmark("lost", ["f1"], uri=missing)],
        failurePolicy="FailFast")
    assert finished.exit_code == EXIT_CONFIGURATION
    assert finished.assessment.reason is Reason.CONFIGURATION_ERROR
    assert missing in finished.assessment.message and llm.requests == []


def test_configuration_error_fails_the_task_quoting_the_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Endpoint, llm: FakeLLM) -> None:
    missing = f"s3://{DATA}/no-such-dataset.jsonl"
    finished = run_task(tmp_path, monkeypatch, s3, llm,
                        [benchmark("capitals", ["exact-match"], uri=missing)], retries=2)
    assert finished.exit_code == EXIT_CONFIGURATION
    assert parse_termination_message(finished.message) == RunnerFailed(
        RunnerReason.CONFIGURATION_ERROR, json.loads(finished.message)["message"])
    assert finished.assessment.phase is Phase.FAILED
    assert finished.assessment.reason is Reason.CONFIGURATION_ERROR
    assert missing in finished.assessment.message
    assert "Retrying cannot help" in finished.assessment.message


def test_transient_failure_is_reported_with_the_runners_reason_and_a_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Endpoint, llm: FakeLLM) -> None:
    llm.faults = [429] * 50  # Retry-After: 0, so the runner's retries run out quickly
    finished = run_task(tmp_path, monkeypatch, s3, llm,
                        [benchmark("capitals", ["exact-match"])])
    assert finished.exit_code == EXIT_TRANSIENT
    assert parse_termination_message(finished.message) == RunnerFailed(
        RunnerReason.MODEL_UNREACHABLE, json.loads(finished.message)["message"])
    assert finished.assessment.phase is Phase.FAILED
    assert finished.assessment.reason is Reason.RUNNER_FAILED
    assert RUNNER_REASON_HINTS["ModelUnreachable"] in finished.assessment.message
    assert llm.url in finished.assessment.message


def test_an_oversized_failure_message_still_parses() -> None:
    data = termination.failure_message("ConfigurationError", "é" * 10_000 + " the end")
    assert len(data) <= KUBELET_MESSAGE_LIMIT
    parsed = parse_termination_message(data.decode())
    assert isinstance(parsed, RunnerFailed)
    assert parsed.reason is RunnerReason.CONFIGURATION_ERROR and parsed.message.startswith("éé")
