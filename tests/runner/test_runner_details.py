"""Details a user notices: connection refused is ModelUnreachable, progress.json pacing,
a missing lm-eval extra, CSV datasets with unicode, few-shot rows and limits, JSONL errors
that name the line. (S3 outages, Retry-After, timeouts and the 4 KiB termination message are
in test_failure_modes.py.)"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from evaluation_runner import lm_eval_adapter
from evaluation_runner.__main__ import main
from evaluation_runner.config import BenchmarkConfig, DatasetConfig, EndpointConfig
from evaluation_runner.datasets import load_dataset
from evaluation_runner.errors import ConfigurationError, TransientError
from evaluation_runner.model_client import ModelClient
from evaluation_runner.progress import ProgressTracker

from tests.runner.conftest import base_config
from tests.support.s3 import S3Endpoint


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connections are refused


def _client(url: str, retries: int = 3) -> ModelClient:
    return ModelClient(EndpointConfig(url=url, api="chat", timeout_seconds=5,
                                      max_retries=retries), "tiny", backoff_seconds=0.2)


def test_connection_refused_after_retries_is_model_unreachable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("evaluation_runner.model_client.time.sleep", lambda _: None)
    with pytest.raises(TransientError) as caught:
        _client(f"http://127.0.0.1:{_dead_port()}/v1", retries=2).generate(
            "q", max_tokens=4, temperature=0.0, seed=1)
    assert caught.value.reason == "ModelUnreachable"
    assert caught.value.exit_code == 75
    assert "after 3 attempts" in str(caught.value)


def test_progress_is_published_in_the_background_at_most_every_interval() -> None:
    published: list[dict[str, Any]] = []
    lock = threading.Lock()

    def publish(doc: bytes) -> None:
        with lock:
            published.append(json.loads(doc))

    started = time.monotonic()
    with ProgressTracker({"a": 10, "b": 5}, publish, 0.1) as tracker:
        for _ in range(10):
            tracker.advance("a")
            time.sleep(0.05)
    elapsed = time.monotonic() - started
    assert 2 <= len(published) <= elapsed / 0.1 + 1
    last = published[-1]
    assert last["samplesTotal"] == 15 and last["benchmarks"]["b"]["samplesDone"] == 0
    assert [p["samplesDone"] for p in published] == sorted(p["samplesDone"] for p in published)
    assert last["updatedAt"].endswith("Z")


def test_missing_lm_eval_is_a_configuration_error_naming_the_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner_buckets: S3Endpoint) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import fails as if not installed
    with pytest.raises(ConfigurationError, match="lm-eval extra"):
        lm_eval_adapter.require_lm_eval()
    config = base_config("http://127.0.0.1:9/v1", runner_buckets, "runs/no-lm-eval/", [
        {"name": "g", "task": "generation", "metrics": ["exact-match"],
         "dataset": {"uri": "/nonexistent.jsonl"}}], framework={"name": "lm-eval"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    log = tmp_path / "termination-log"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")

    code = main(["--config", str(tmp_path / "config.json"), "--termination-log", str(log)])

    assert code == 78
    message = json.loads(log.read_text())
    assert message["reason"] == "ConfigurationError"
    assert "lm-eval" in message["message"]


def _benchmark(uri: str, task: str = "multiple-choice", few_shot: int = 0,
               limit: int | None = None, fields: dict[str, str] | None = None
               ) -> BenchmarkConfig:
    return BenchmarkConfig(name="b", dataset=DatasetConfig(uri=uri, fields=fields or {}),
                           task=task, metrics=("accuracy",), limit=limit, few_shot=few_shot)


def test_csv_dataset_with_unicode_few_shot_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "quiz.csv"
    path.write_text('frage,optionen,lösung\n'
                    '"Hauptstadt von Österreich?","[""Wien"", ""Graz""]",0\n'
                    '"Größter See?","[""Bodensee"", ""Chiemsee""]",Bodensee\n'
                    '"日本の首都は?","[""大阪"", ""東京""]",B\n'
                    '"Zweimal zwei?","[""4"", ""5""]",A\n', encoding="utf-8")
    loaded = load_dataset(_benchmark(str(path), few_shot=1, limit=2, fields={
        "prompt": "frage", "choices": "optionen", "reference": "lösung"}), 0)
    assert loaded.rows == 4
    assert [s.prompt for s in loaded.examples] == ["Hauptstadt von Österreich?"]
    assert [s.reference for s in loaded.examples] == ["Wien"]
    # few-shot rows are never scored; limit applies to the rest
    assert [(s.prompt, s.reference) for s in loaded.samples] == [
        ("Größter See?", "Bodensee"), ("日本の首都は?", "東京")]
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "reference": "b"}\n\n{"prompt": "c", "reference": \n')
    with pytest.raises(ConfigurationError, match=r"benchmarks\[3\].dataset.*line 3"):
        load_dataset(_benchmark(str(path), task="generation"), 3)


@pytest.mark.parametrize(("header", "expected"), [
    ("3", 3.0), ("0", 0.0), ("-5", 0.0), (None, None), ("soon", None),
    ("Fri, 27 Nov 2026 10:00:07 GMT", 7.0), ("Fri, 27 Nov 2026 09:59:00 GMT", 0.0),
])
def test_retry_after_in_seconds_or_as_an_http_date(header: str | None,
                                                   expected: float | None) -> None:
    from datetime import UTC, datetime

    from evaluation_runner.model_client import parse_retry_after

    now = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(header, now=now) == expected
