"""Resume after preemption, the watchdog and runner.log: the runner as the Job runs it (a
subprocess with a config file), the scripted model server counting requests, and moto's S3."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from devcluster.fake_llm import FakeLLM
from evaluation_operator.s3 import ResultsLocation, is_task_key, purge

from tests.runner.conftest import DATA_BUCKET, RESULTS_BUCKET, base_config, run_runner
from tests.support.s3 import S3Endpoint

ROWS = [{"prompt": f"question number {i}?", "reference": f"answer {i}"} for i in range(40)]


def put_jsonl(s3: S3Endpoint, key: str, rows: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    s3.client().put_object(Bucket=DATA_BUCKET, Key=key, Body=body)
    return f"s3://{DATA_BUCKET}/{key}"


def keys_under(s3: S3Endpoint, prefix: str) -> list[str]:
    found = s3.client().list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=prefix)
    return sorted(item["Key"][len(prefix):] for item in found.get("Contents", []))


def read(s3: S3Endpoint, key: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=key)["Body"].read()
    return body


def checkpointed_prompts(s3: S3Endpoint, prefix: str) -> set[str]:
    prompts = set()
    for key in keys_under(s3, prefix + "checkpoints/"):
        if "-answers-" in key:
            for line in read(s3, prefix + "checkpoints/" + key).decode().splitlines():
                prompts.add(json.loads(line)["prompt"])
    return prompts


def start_runner(tmp_path: Path, config: dict[str, Any], s3: S3Endpoint
                 ) -> subprocess.Popen[bytes]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return subprocess.Popen(
        [sys.executable, "-m", "evaluation_runner", "--config", str(path),
         "--termination-log", str(tmp_path / "first-termination-log")],
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": s3.access_key,
             "AWS_SECRET_ACCESS_KEY": s3.secret_key, "HOME": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def generation_config(llm: FakeLLM, s3: S3Endpoint, prefix: str, uri: str) -> dict[str, Any]:
    config = base_config(llm.url, s3, prefix, [
        {"name": "qa", "dataset": {"uri": uri}, "task": "generation",
         "metrics": ["exact-match", "bleu"]}])
    config["parameters"]["concurrency"] = 2
    return config


def test_a_retry_after_a_kill_does_not_resend_answered_requests(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    prefix = f"runs/ns/resume/{uuid.uuid4()}/"
    uri = put_jsonl(runner_buckets, f"{prefix}qa.jsonl", ROWS)
    llm.answers = {f"number {i}?": f"answer {i}" for i in range(0, 40, 2)}  # half right
    llm.delay_seconds = 0.05
    config = generation_config(llm, runner_buckets, prefix, uri)

    # Attempt 1: killed (SIGKILL, as after a preemption's grace period) mid-benchmark, once
    # some answers are checkpointed.
    first = start_runner(tmp_path, config, runner_buckets)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not checkpointed_prompts(runner_buckets, prefix):
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    saved = checkpointed_prompts(runner_buckets, prefix)
    sent_first = len(llm.requests)
    assert saved and sent_first < len(ROWS), "the kill came too late to test a resume"

    # Attempt 2: same task uid, same prefix, a new process.
    llm.delay_seconds = 0.0
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr
    resent = [r["messages"][-1]["content"] for r in llm.requests[sent_first:]]
    assert not set(resent) & saved
    assert len(resent) == len(ROWS) - len(saved)

    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    assert summary["resumed"]["answersReused"] == len(saved)
    assert summary["resumed"]["benchmarks"]["qa"]["answersRequested"] == len(resent)
    assert summary["benchmarks"][0]["metrics"]["exact-match"] == 0.5  # every sample scored
    samples = read(runner_buckets, prefix + "benchmarks/qa/samples.jsonl").decode().splitlines()
    assert [json.loads(s)["index"] for s in samples] == list(range(len(ROWS)))

    # Attempt 3 of a finished run: nothing is asked again, the bundle says it was reused.
    before = len(llm.requests)
    assert run_runner(tmp_path, config, runner_buckets).exit_code == 0
    assert len(llm.requests) == before
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    assert summary["resumed"]["benchmarks"]["qa"] == {
        "answersReused": len(ROWS), "answersRequested": 0, "benchmarkReused": True}

    # A changed dataset (new sha256) invalidates the checkpoints: every request is sent.
    put_jsonl(runner_buckets, f"{prefix}qa.jsonl", [*ROWS[:-1], {"prompt": "new?",
                                                                "reference": "x"}])
    before = len(llm.requests)
    assert run_runner(tmp_path, config, runner_buckets).exit_code == 0
    assert len(llm.requests) - before == len(ROWS)
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    assert summary["resumed"]["answersReused"] == 0


def test_rescoring_with_other_metrics_asks_the_model_nothing(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    """The answer cache is keyed by what decides the answers, not by the metrics: a retry
    whose spec scores differently (another metric, other options) re-scores the saved
    answers."""
    prefix = f"runs/ns/rescore/{uuid.uuid4()}/"
    uri = put_jsonl(runner_buckets, f"{prefix}qa.jsonl", ROWS[:10])
    llm.answers = {f"number {i}?": f"answer {i}" for i in range(0, 10, 2)}
    config = generation_config(llm, runner_buckets, prefix, uri)
    assert run_runner(tmp_path, config, runner_buckets).exit_code == 0
    asked = len(llm.requests)
    assert asked == 10

    config["benchmarks"][0]["metrics"] = ["exact-match", "rouge-1", "f1"]
    config["benchmarks"][0]["metricOptions"] = {"exactMatch": {"normalize": "none"}}
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr
    assert len(llm.requests) == asked
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    assert summary["benchmarks"][0]["metrics"]["exact-match"] == 0.5
    assert summary["benchmarks"][0]["metrics"]["rouge-1"] == 0.5  # no word in common
    assert summary["resumed"]["benchmarks"]["qa"] == {
        "answersReused": 10, "answersRequested": 0, "benchmarkReused": True}


def test_sigterm_saves_every_answered_request_before_the_process_ends(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    prefix = f"runs/ns/sigterm/{uuid.uuid4()}/"
    uri = put_jsonl(runner_buckets, f"{prefix}qa.jsonl", ROWS)
    llm.delay_seconds = 0.05
    config = generation_config(llm, runner_buckets, prefix, uri)
    config["progressIntervalSeconds"] = 60  # no periodic flush: only SIGTERM can save them
    first = start_runner(tmp_path, config, runner_buckets)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(llm.requests) < 10:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 75
    message = json.loads((tmp_path / "first-termination-log").read_text())
    assert "SIGTERM" in message["message"]
    sent = {r["messages"][-1]["content"] for r in llm.requests}
    saved = checkpointed_prompts(runner_buckets, prefix)
    # Requests under way at the signal finish and are saved; no new ones start.
    assert saved == sent and len(saved) >= 10


def test_everything_the_runner_writes_is_purged_by_the_operator(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    from evaluation_operator import s3 as operator_s3
    from evaluation_runner import storage

    assert operator_s3.RUNNER_DIRECTORIES == storage.RUNNER_DIRECTORIES
    prefix = f"runs/ns/layout/{uuid.uuid4()}/"
    uri = put_jsonl(runner_buckets, f"{prefix}qa.jsonl", ROWS[:5])
    config = generation_config(llm, runner_buckets, prefix, uri)
    assert run_runner(tmp_path, config, runner_buckets).exit_code == 0
    written = keys_under(runner_buckets, prefix)
    assert any(k.startswith("checkpoints/") for k in written)
    assert "runner.log" in written
    for key in written:
        assert is_task_key(key), key
        top = key.split("/")[0]
        assert key in storage.RUNNER_FILES or top in storage.RUNNER_DIRECTORIES, key
    deleted = purge(runner_buckets.client(), ResultsLocation(RESULTS_BUCKET, prefix))
    assert deleted == len(written)
    assert keys_under(runner_buckets, prefix) == []


def test_a_hanging_endpoint_fails_the_attempt_with_a_clear_reason(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    prefix = f"runs/ns/hang/{uuid.uuid4()}/"
    uri = put_jsonl(runner_buckets, f"{prefix}qa.jsonl", ROWS[:3])
    llm.trickle_seconds = 20  # headers, then a byte now and then: no socket timeout fires
    config = generation_config(llm, runner_buckets, prefix, uri)
    config["model"]["endpoint"]["timeoutSeconds"] = 1
    config["watchdog"] = {"requestMarginSeconds": 1}
    started = time.monotonic()
    result = run_runner(tmp_path, config, runner_buckets)
    assert time.monotonic() - started < 15
    assert result.exit_code == 75, result.stderr
    assert result.termination["reason"] == "ModelUnreachable"
    assert "watchdog" in result.termination["message"]
    assert "has not finished after" in result.termination["message"]
    log_uri = result.termination["results"]["log"]
    assert log_uri == f"s3://{RESULTS_BUCKET}/{prefix}runner.log"
    assert b"watchdog" in read(runner_buckets, prefix + "runner.log")


def test_runner_log_is_in_the_bundle_and_uploaded_after_a_failure(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    prefix = f"runs/ns/log/{uuid.uuid4()}/"
    uri = put_jsonl(runner_buckets, f"{prefix}qa.jsonl", ROWS[:3])
    config = generation_config(llm, runner_buckets, prefix, uri)
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr
    log = read(runner_buckets, prefix + "runner.log").decode()
    assert "benchmark qa: 3 samples" in log and "done:" in log
    assert result.termination["results"]["log"] == f"s3://{RESULTS_BUCKET}/{prefix}runner.log"
    archive = zipfile.ZipFile(io.BytesIO(read(runner_buckets, prefix + "results.zip")))
    assert "benchmark qa: 3 samples" in archive.read("runner.log").decode()

    failing = f"runs/ns/log/{uuid.uuid4()}/"
    config = generation_config(llm, runner_buckets, failing,
                               f"s3://{DATA_BUCKET}/{failing}missing.jsonl")
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 78
    assert result.termination["results"]["log"].endswith(f"{failing}runner.log")
    assert "missing.jsonl" in read(runner_buckets, failing + "runner.log").decode()


@pytest.mark.parametrize("limit", [2000, 10_000])
def test_the_log_keeps_its_beginning_and_end_under_the_cap(limit: int) -> None:
    import logging

    from evaluation_runner.runlog import CappedLog

    handler = CappedLog(limit)
    logger = logging.getLogger(f"test-capped-{limit}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for i in range(1000):
        logger.info("line %04d %s", i, "x" * 40)
    text = handler.contents()
    assert len(text) <= limit + 100
    assert b"line 0000" in text and b"line 0999" in text
    assert b"bytes of log dropped" in text


def test_the_watchdog_fires_on_a_stall_and_on_an_old_request() -> None:
    from evaluation_runner.watchdog import Watchdog

    now = [0.0]
    fired: list[Any] = []
    dog = Watchdog(10.0, 100.0, fired.append, clock=lambda: now[0])
    assert dog.check() is None
    with dog.request("http://model/v1/completions"):
        now[0] = 9.0
        assert dog.check() is None
        now[0] = 11.0
        error = dog.check()
        assert error is not None and "http://model/v1/completions" in str(error)
        assert error.exit_code == 75
    assert dog.check() is None  # the request finished
    dog.progress()
    now[0] = 112.0
    stalled = dog.check()
    assert stalled is not None and "no sample finished for 101 s" in str(stalled)
