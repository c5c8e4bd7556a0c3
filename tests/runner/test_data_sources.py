"""Datasets from http(s):// and mounted paths, CSV and JSONL, few-shot rows and limits, and
progress.json while a run goes on."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from devcluster.fake_llm import FakeLLM
from evaluation_runner.config import BenchmarkConfig, DatasetConfig
from evaluation_runner.datasets import load_dataset
from evaluation_runner.errors import ConfigurationError, TransientError

from tests.runner.conftest import DATA_BUCKET, RESULTS_BUCKET, base_config
from tests.support.s3 import S3Endpoint, free_port

CSV_ROWS = [
    # question, options (a JSON list or "|"-separated), answer (letter, index or text)
    ("Example: colour of grass?", '["green", "red"]', "A"),
    ("Colour of the sky?", "red | blue | green", "B"),
    ("Ünïcödé: 2 + 2 =", '["3", "4"]', "1"),
    ("Largest planet?", "Mars|Jupiter", "Jupiter"),
    ("Closest star?", '["the Sun", "Sirius"]', "a"),
]


def csv_bytes() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["question", "options", "answer"])
    writer.writerows(CSV_ROWS)
    return out.getvalue().encode()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Files under a folder, served over plain HTTP on loopback."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def mc_benchmark(uri: str, **extra: Any) -> BenchmarkConfig:
    fields = {"prompt": "question", "choices": "options", "reference": "answer"}
    return BenchmarkConfig(name="quiz", dataset=DatasetConfig(
        uri=uri, format=extra.pop("format", None), fields=fields), task="multiple-choice",
        metrics=("accuracy",), **extra)


def test_csv_over_http_with_few_shot_and_limit(web: tuple[str, Path]) -> None:
    url, root = web
    (root / "quiz.csv").write_bytes(csv_bytes())
    loaded = load_dataset(mc_benchmark(f"{url}/quiz.csv", few_shot=1, limit=3), 0)
    assert loaded.sha256 == hashlib.sha256(csv_bytes()).hexdigest()
    assert loaded.rows == 5
    # The first row is the few-shot example and is never scored; the limit counts the rest.
    assert [s.prompt for s in loaded.examples] == ["Example: colour of grass?"]
    assert [s.prompt for s in loaded.samples] == [
        "Colour of the sky?", "Ünïcödé: 2 + 2 =", "Largest planet?"]
    assert [s.choices for s in loaded.samples] == [
        ("red", "blue", "green"), ("3", "4"), ("Mars", "Jupiter")]
    # Letters and indices in the answer column name a choice; text is kept as it is.
    assert [s.reference for s in loaded.samples] == ["blue", "4", "Jupiter"]


def test_format_given_explicitly_for_a_url_without_extension(web: tuple[str, Path]) -> None:
    url, root = web
    (root / "export").write_bytes(csv_bytes())
    loaded = load_dataset(mc_benchmark(f"{url}/export", format="csv"), 0)
    assert len(loaded.samples) == 5
    assert loaded.samples[4].reference == "the Sun"


def test_mounted_jsonl_path(tmp_path: Path) -> None:
    path = tmp_path / "datasets" / "quiz" / "data.jsonl"
    path.parent.mkdir(parents=True)
    rows = [{"question": "Q?", "options": ["x", "y"], "answer": 1}, {}]
    path.write_text(json.dumps(rows[0]) + "\n\n")  # blank lines are skipped
    loaded = load_dataset(mc_benchmark(str(path)), 0)
    assert [(s.prompt, s.reference) for s in loaded.samples] == [("Q?", "y")]
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_http_dataset_is_a_configuration_error(web: tuple[str, Path]) -> None:
    url, _ = web
    with pytest.raises(ConfigurationError) as caught:
        load_dataset(mc_benchmark(f"{url}/nope.jsonl"), 2)
    assert "benchmarks[2].dataset.uri" in str(caught.value)
    assert f"{url}/nope.jsonl" in str(caught.value) and "404" in str(caught.value)


def test_unreachable_http_dataset_is_transient() -> None:
    with pytest.raises(TransientError) as caught:
        load_dataset(mc_benchmark(f"http://127.0.0.1:{free_port()}/quiz.jsonl"), 0)
    assert caught.value.exit_code == 75


@pytest.mark.parametrize(("uri_kind", "needle"), [
    ("relative", "is not s3://, http(s):// or a path"),
    ("missing", "cannot be read"),
])
def test_bad_paths_name_the_field(tmp_path: Path, uri_kind: str, needle: str) -> None:
    uri = "datasets/quiz.jsonl" if uri_kind == "relative" else str(tmp_path / "absent.jsonl")
    with pytest.raises(ConfigurationError, match=r"benchmarks\[0\]\.dataset\.uri") as caught:
        load_dataset(mc_benchmark(uri), 0)
    assert needle in str(caught.value)


def test_too_few_rows_for_few_shot(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps({"question": q, "options": ["a", "b"], "answer": 0})
                            + "\n" for q in ("one", "two")))
    with pytest.raises(ConfigurationError, match="fewShot=2"):
        load_dataset(mc_benchmark(str(path), few_shot=2), 0)


def test_progress_is_published_while_the_run_goes_on(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    rows = [{"prompt": f"Echo {i}", "reference": str(i)} for i in range(12)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    s3 = runner_buckets.client()
    s3.put_object(Bucket=DATA_BUCKET, Key="progress.jsonl", Body=body)
    llm.delay_seconds = 0.15
    prefix = f"runs/ns/t/{uuid.uuid4()}/"
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "echo", "dataset": {"uri": f"s3://{DATA_BUCKET}/progress.jsonl"},
         "task": "generation", "metrics": ["exact-match"]}],
        parameters={"temperature": 0, "maxTokens": 8, "concurrency": 1, "seed": 1},
        progressIntervalSeconds=0.2)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "evaluation_runner", "--config", str(config_path),
         "--termination-log", str(tmp_path / "termination-log")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
             "AWS_ACCESS_KEY_ID": runner_buckets.access_key,
             "AWS_SECRET_ACCESS_KEY": runner_buckets.secret_key},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[dict[str, Any]] = []
    while process.poll() is None:
        with contextlib.suppress(s3.exceptions.NoSuchKey):
            seen.append(json.loads(s3.get_object(Bucket=RESULTS_BUCKET,
                                                 Key=prefix + "progress.json")["Body"].read()))
        time.sleep(0.1)
    assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    done = [p["samplesDone"] for p in seen]
    assert any(0 < d < 12 for d in done), done  # a document from the middle of the run
    assert done == sorted(done)
    assert all(p["samplesTotal"] == 12 and p["benchmarks"]["echo"]["samplesTotal"] == 12
               for p in seen)
    final = json.loads(s3.get_object(Bucket=RESULTS_BUCKET,
                                     Key=prefix + "progress.json")["Body"].read())
    assert final["samplesDone"] == 12 and final["benchmarks"]["echo"]["samplesDone"] == 12
    summary = json.loads(s3.get_object(Bucket=RESULTS_BUCKET,
                                       Key=prefix + "summary.json")["Body"].read())
    assert summary["datasets"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    assert summary["datasets"][0]["uri"] == f"s3://{DATA_BUCKET}/progress.jsonl"
