"""What the Job sees when things go wrong: S3 outages, slow or rate-limiting models, oversized
summaries. Exit codes and termination messages are read from a real `python -m` run."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from devcluster.fake_llm import FakeLLM
from evaluation_runner import termination
from evaluation_runner.config import EndpointConfig
from evaluation_runner.errors import ConfigurationError, TransientError
from evaluation_runner.model_client import ModelClient, resolve_api_key

from tests.runner.conftest import RESULTS_BUCKET, base_config, run_runner
from tests.support.s3 import S3Endpoint, free_port, start_s3

ROWS = [{"prompt": f"Say {word}.", "reference": word} for word in ("one", "two", "three")]


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    """A mounted dataset (the operator's ConfigMap/PVC case): an absolute local path."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.fixture
def own_s3() -> Iterator[S3Endpoint]:
    """A private S3 endpoint this test may take down without disturbing the others."""
    endpoint = start_s3()
    endpoint.client().create_bucket(Bucket=RESULTS_BUCKET)
    yield endpoint
    endpoint.stop()


def generation(dataset: str, **extra: Any) -> dict[str, Any]:
    return {"name": "say", "dataset": {"uri": dataset}, "task": "generation",
            "metrics": ["exact-match"], **extra}


def keys(s3: S3Endpoint, prefix: str) -> set[str]:
    listing = s3.client().list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix):] for o in listing.get("Contents", [])}


def test_unreachable_results_store_fails_transiently_before_the_model_is_called(
    tmp_path: Path, llm: FakeLLM, dataset: str
) -> None:
    down = S3Endpoint(endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    config = base_config(llm.url, down, "runs/ns/t/u/", [generation(dataset)])
    started = time.monotonic()
    result = run_runner(tmp_path, config, down)
    assert result.exit_code == 75, result.stderr
    assert result.termination["status"] == "Failed"
    assert result.termination["reason"] == "UploadFailed"
    assert f"s3://{RESULTS_BUCKET}/runs/ns/t/u/" in result.termination["message"]
    assert llm.requests == []  # no model time spent on results that could not be kept
    assert time.monotonic() - started < 60


def test_s3_outage_during_the_final_upload_exits_75_and_never_succeeds(
    tmp_path: Path, llm: FakeLLM, own_s3: S3Endpoint, dataset: str
) -> None:
    llm.answers = {"one": "one", "two": "two", "three": "three"}
    llm.delay_seconds = 0.3
    prefix = f"runs/ns/t/{uuid.uuid4()}/"
    config = base_config(llm.url, own_s3, prefix, [generation(dataset)],
                         parameters={"temperature": 0, "maxTokens": 8, "concurrency": 1,
                                     "seed": 1}, progressIntervalSeconds=60)

    def outage() -> None:  # S3 goes away once the model is being asked
        while not llm.requests:
            time.sleep(0.02)
        own_s3.stop()

    threading.Thread(target=outage, daemon=True).start()
    result = run_runner(tmp_path, config, own_s3)
    assert result.exit_code == 75, result.stderr
    assert result.termination == {
        "v": 1, "status": "Failed", "reason": "UploadFailed",
        "message": result.termination["message"]}
    assert "failed after 4 attempts" in result.termination["message"]
    own_s3.restart()
    assert "summary.json" not in keys(own_s3, prefix)


def test_a_short_s3_outage_is_ridden_out_by_upload_retries(
    tmp_path: Path, llm: FakeLLM, own_s3: S3Endpoint, dataset: str
) -> None:
    llm.answers = {"one": "one", "two": "two", "three": "three"}
    llm.delay_seconds = 0.3
    prefix = f"runs/ns/t/{uuid.uuid4()}/"
    config = base_config(llm.url, own_s3, prefix, [generation(dataset)],
                         parameters={"temperature": 0, "maxTokens": 8, "concurrency": 1,
                                     "seed": 1}, progressIntervalSeconds=60)

    def blip() -> None:
        while not llm.requests:
            time.sleep(0.02)
        own_s3.stop()
        time.sleep(2.0)  # the uploads' backoff (1 s, 2 s, 4 s) outlasts this
        own_s3.restart()

    threading.Thread(target=blip, daemon=True).start()
    result = run_runner(tmp_path, config, own_s3)
    assert result.exit_code == 0, result.stderr
    assert result.termination["overallScore"] == 1.0
    assert {"summary.json", "summary.csv", "results.zip", "progress.json"} <= keys(own_s3,
                                                                                   prefix)


def test_a_model_slower_than_its_timeout_is_a_transient_failure(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, dataset: str
) -> None:
    llm.delay_seconds = 2.0
    config = base_config(llm.url, runner_buckets, f"runs/ns/t/{uuid.uuid4()}/",
                         [generation(dataset, limit=1)])
    config["model"]["endpoint"] |= {"timeoutSeconds": 0.3, "maxRetries": 1}
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 75, result.stderr
    assert result.termination["reason"] == "ModelUnreachable"
    assert llm.url in result.termination["message"]
    assert "timed out" in result.termination["message"]
    assert len(llm.requests) == 2  # the first try and one retry


class ScriptedStatuses:
    """Answers each POST with the next scripted (status, headers), then 200s."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.arrivals: list[float] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                owner.arrivals.append(time.monotonic())
                status, headers = owner.script.pop(0) if owner.script else (200, {})
                body = json.dumps({"choices": [{"index": 0, "message": {
                    "role": "assistant", "content": "ok"}}]} if status == 200 else
                    {"error": {"message": f"scripted {status}"}}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def client(self, max_retries: int) -> ModelClient:
        endpoint = EndpointConfig(url=self.url, api="chat", timeout_seconds=5,
                                  max_retries=max_retries)
        return ModelClient(endpoint, "m", backoff_seconds=0.05)


@pytest.fixture
def scripted() -> Iterator[list[ScriptedStatuses]]:
    servers: list[ScriptedStatuses] = []
    yield servers
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def test_retry_after_is_waited_out(scripted: list[ScriptedStatuses]) -> None:
    server = ScriptedStatuses([(429, {"Retry-After": "1"}), (503, {})])
    scripted.append(server)
    answer = server.client(max_retries=3).generate("hi", max_tokens=4, temperature=0, seed=1)
    assert answer == "ok"
    assert len(server.arrivals) == 3
    assert server.arrivals[1] - server.arrivals[0] >= 0.95  # the server asked for 1 s
    assert server.arrivals[2] - server.arrivals[1] < 0.9  # 503 without a header: backoff


def test_retries_stop_after_max_retries(scripted: list[ScriptedStatuses]) -> None:
    server = ScriptedStatuses([(500, {})] * 10)
    scripted.append(server)
    with pytest.raises(TransientError, match="HTTP 500") as caught:
        server.client(max_retries=2).generate("hi", max_tokens=4, temperature=0, seed=1)
    assert caught.value.exit_code == 75
    assert len(server.arrivals) == 3


def test_a_rejected_request_is_not_retried(scripted: list[ScriptedStatuses]) -> None:
    server = ScriptedStatuses([(400, {})])
    scripted.append(server)
    with pytest.raises(ConfigurationError, match="HTTP 400"):
        server.client(max_retries=5).generate("hi", max_tokens=4, temperature=0, seed=1)
    assert len(server.arrivals) == 1


def test_api_key_from_the_mounted_file_or_the_named_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "model-api-key"
    key_file.write_text("sk-from-file\n")
    assert resolve_api_key(EndpointConfig(url="http://m/v1"), key_file) == "sk-from-file"
    assert resolve_api_key(EndpointConfig(url="http://m/v1"), tmp_path / "absent") is None
    monkeypatch.setenv("EVAL_MODEL_API_KEY", "sk-from-env")
    named = EndpointConfig(url="http://m/v1", api_key_env="EVAL_MODEL_API_KEY")
    assert resolve_api_key(named, key_file) == "sk-from-env"
    monkeypatch.setenv("EVAL_MODEL_API_KEY", "")
    with pytest.raises(ConfigurationError, match="EVAL_MODEL_API_KEY"):
        resolve_api_key(named, key_file)


def test_many_benchmarks_keep_the_termination_message_within_4_kib(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, dataset: str
) -> None:
    metrics = ["exact-match", "f1", "accuracy", "bleu", "chrf", "rouge-1", "rouge-2", "rouge-l"]
    benchmarks = [{"name": f"benchmark-with-a-long-descriptive-name-{i:02d}",
                   "dataset": {"uri": dataset}, "task": "generation", "metrics": metrics}
                  for i in range(24)]
    prefix = f"runs/ns/t/{uuid.uuid4()}/"
    config = base_config(llm.url, runner_buckets, prefix, benchmarks)
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr
    raw = (tmp_path / "termination-log").read_bytes()
    assert len(raw) <= 4096
    message = result.termination
    assert message["status"] == "Succeeded" and message["truncated"] is True
    summary = json.loads(runner_buckets.client().get_object(
        Bucket=RESULTS_BUCKET, Key=prefix + "summary.json")["Body"].read())
    assert message["overallScore"] == summary["overallScore"]
    assert len(summary["benchmarks"]) == 24  # the full figures stay in S3
    # Metrics go first; the scores themselves stay as long as they fit.
    assert [b["name"] for b in message["benchmarks"]] == [b["name"] for b in benchmarks]
    assert all("metrics" not in b and "score" in b for b in message["benchmarks"])


def test_termination_message_drops_benchmarks_when_even_scores_do_not_fit() -> None:
    benchmarks = [{"name": "x" * 60 + str(i), "score": 0.5, "primaryMetric": "accuracy",
                   "metrics": {"accuracy": 0.5}, "samples": 10} for i in range(200)]
    data = termination.success_message(0.5, benchmarks, "s3://b/p/", "s3://b/p/results.zip")
    message = json.loads(data)
    assert len(data) <= 4096
    assert message["truncated"] is True and "benchmarks" not in message
    assert message["overallScore"] == 0.5
    assert message["results"]["bundle"] == "s3://b/p/results.zip"
    small = json.loads(termination.success_message(0.5, benchmarks[:2], "s3://b/p/", "z"))
    assert "truncated" not in small and small["benchmarks"][0]["metrics"] == {"accuracy": 0.5}


def test_failure_message_is_bounded_and_keeps_the_reason() -> None:
    message = json.loads(termination.failure_message("ConfigurationError", "é" * 10_000))
    assert message["reason"] == "ConfigurationError"
    assert len(message["message"].encode()) <= 4096 and len(message["message"]) <= 1024
