"""The runner as the Job runs it: a subprocess with a config file, a model server and S3."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
import sacrebleu
from devcluster.fake_llm import FakeLLM

from tests.runner.conftest import DATA_BUCKET, RESULTS_BUCKET, base_config, run_runner
from tests.support.s3 import S3Endpoint

MC_ROWS: list[dict[str, Any]] = [
    {"question": "What colour is the sky?", "choices": ["green", "blue", "red"], "answer": 1},
    {"question": "2 + 2 =", "choices": ["3", "4"], "answer": "4"},
    {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "A"},
    {"question": "Largest planet?", "choices": ["Mars", "Jupiter"], "answer": 1},
]
GEN_ROWS: list[dict[str, Any]] = [
    {"de": "Das Haus ist klein.", "en": "The house is small."},
    {"de": "Ich liebe Katzen.", "en": "I love cats."},
    {"de": "Guten Morgen.", "en": "Good morning."},
]


def put_jsonl(s3: S3Endpoint, key: str, rows: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    s3.client().put_object(Bucket=DATA_BUCKET, Key=key, Body=body)
    return f"s3://{DATA_BUCKET}/{key}"


def read(s3: S3Endpoint, key: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=key)["Body"].read()
    return body


@pytest.fixture
def prefix() -> str:
    return f"runs/ns/t/{uuid.uuid4()}/"


def test_chat_run_scores_exactly_and_uploads_a_complete_bundle(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, prefix: str
) -> None:
    mc_uri = put_jsonl(runner_buckets, "mc.jsonl", MC_ROWS)
    gen_uri = put_jsonl(runner_buckets, "wmt.jsonl", GEN_ROWS)
    # Three right answers out of four on the multiple-choice benchmark (letters on chat).
    llm.answers = {"sky": "B", "2 + 2": "The answer is B.", "France": "A", "planet": "A"}
    llm.answers |= {"Das Haus": "The house is small.", "Katzen": "I like cats.",
                    "Morgen": "Good morning!"}
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "quiz", "dataset": {"uri": mc_uri, "fields": {
            "prompt": "question", "choices": "choices", "reference": "answer"}},
         "task": "multiple-choice", "metrics": ["accuracy", "f1"], "weight": 1},
        {"name": "wmt", "dataset": {"uri": gen_uri, "fields": {"prompt": "de", "reference": "en"}},
         "task": "generation", "metrics": ["bleu", "exact-match", "chrf", "rouge-l", "f1"],
         "weight": 3},
    ])
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr

    predictions = ["The house is small.", "I like cats.", "Good morning!"]
    references = [r["en"] for r in GEN_ROWS]
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    scores = {b["name"]: b for b in summary["benchmarks"]}
    assert scores["quiz"]["metrics"]["accuracy"] == 0.75
    assert scores["quiz"]["score"] == 0.75
    assert scores["wmt"]["metrics"]["bleu"] == bleu
    assert scores["wmt"]["score"] == pytest.approx(bleu / 100)
    assert scores["wmt"]["metrics"]["exact-match"] == pytest.approx(2 / 3)
    assert summary["overallScore"] == pytest.approx((0.75 + 3 * bleu / 100) / 4)
    assert summary["datasets"][0]["sha256"] and summary["datasets"][0]["uri"] == mc_uri

    assert result.termination["status"] == "Succeeded"
    assert result.termination["overallScore"] == summary["overallScore"]
    assert result.termination["results"]["bundle"] == \
        f"s3://{RESULTS_BUCKET}/{prefix}results.zip"

    rows = list(csv.DictReader(io.StringIO(read(runner_buckets, prefix + "summary.csv")
                                           .decode())))
    assert {(r["benchmark"], r["metric"]) for r in rows} == {
        ("quiz", "accuracy"), ("quiz", "f1"), ("wmt", "bleu"), ("wmt", "exact-match"),
        ("wmt", "chrf"), ("wmt", "rouge-l"), ("wmt", "f1")}
    samples = [json.loads(line) for line in
               read(runner_buckets, prefix + "benchmarks/quiz/samples.jsonl").splitlines()]
    assert [s["prediction"] for s in samples] == ["blue", "4", "Paris", "Mars"]
    assert [s["scores"]["accuracy"] for s in samples] == [1.0, 1.0, 1.0, 0.0]
    metrics = json.loads(read(runner_buckets, prefix + "benchmarks/quiz/metrics.json"))
    assert metrics["samples"] == 4 and metrics["stderr"]["accuracy"] == pytest.approx(0.25)

    archive = zipfile.ZipFile(io.BytesIO(read(runner_buckets, prefix + "results.zip")))
    assert sorted(archive.namelist()) == sorted([
        "summary.json", "summary.csv", "benchmarks/quiz/metrics.json",
        "benchmarks/quiz/samples.jsonl", "benchmarks/wmt/metrics.json",
        "benchmarks/wmt/samples.jsonl", "runner.log"])
    assert json.loads(archive.read("summary.json")) == summary
    progress = json.loads(read(runner_buckets, prefix + "progress.json"))
    assert (progress["samplesDone"], progress["samplesTotal"]) == (7, 7)


def test_completions_api_scores_multiple_choice_by_log_likelihood(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, prefix: str
) -> None:
    uri = put_jsonl(runner_buckets, "mc-ll.jsonl", MC_ROWS)
    llm.choice_logprobs = {"blue": -0.1, "green": -3.0, "4": -0.2, "3": -1.0, "Paris": -5.0,
                           "Rome": -0.3, "Jupiter": -0.5, "Mars": -0.6}
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "quiz", "dataset": {"uri": uri, "fields": {"prompt": "question",
                                                            "reference": "answer"}},
         "task": "multiple-choice", "metrics": ["accuracy"], "fewShot": 1}], api="completions")
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    # Few-shot takes the first row as an example; of the other three, Rome beats Paris.
    assert summary["benchmarks"][0]["samples"] == 3
    assert summary["benchmarks"][0]["metrics"]["accuracy"] == pytest.approx(2 / 3)
    echo_requests = [r for r in llm.requests if r.get("echo")]
    assert len(echo_requests) == 6 and all(r["logprobs"] == 1 for r in echo_requests)
    assert all("Question: What colour is the sky?\nAnswer: blue" in r["prompt"]
               for r in echo_requests)


def test_rate_limits_and_server_errors_are_retried(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, prefix: str
) -> None:
    uri = put_jsonl(runner_buckets, "gen-retry.jsonl", GEN_ROWS)
    llm.answers = {"Haus": "The house is small."}
    llm.faults = [429, 500, 503]
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "wmt", "dataset": {"uri": uri, "fields": {"prompt": "de", "reference": "en"}},
         "task": "generation", "metrics": ["exact-match"], "limit": 1}],
        parameters={"temperature": 0, "maxTokens": 8, "concurrency": 1, "seed": 1})
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr
    assert len(llm.requests) == 4
    assert result.termination["benchmarks"][0]["metrics"]["exact-match"] == 1.0


def test_concurrency_is_bounded(tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint,
                                prefix: str) -> None:
    rows = [{"prompt": f"q{i}", "reference": "a"} for i in range(24)]
    uri = put_jsonl(runner_buckets, "many.jsonl", rows)
    llm.delay_seconds = 0.05
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "many", "dataset": {"uri": uri}, "task": "generation",
         "metrics": ["exact-match"]}],
        parameters={"temperature": 0, "maxTokens": 8, "concurrency": 3, "seed": 1})
    assert run_runner(tmp_path, config, runner_buckets).exit_code == 0
    assert llm.max_in_flight == 3


def test_api_key_comes_from_the_environment(tmp_path: Path, llm: FakeLLM,
                                            runner_buckets: S3Endpoint, prefix: str) -> None:
    uri = put_jsonl(runner_buckets, "key.jsonl", GEN_ROWS)
    llm.require_key = "sk-test"
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "wmt", "dataset": {"uri": uri, "fields": {"prompt": "de", "reference": "en"}},
         "task": "generation", "metrics": ["bleu"]}])
    config["model"]["endpoint"]["apiKeyEnv"] = "EVAL_MODEL_API_KEY"
    ok = run_runner(tmp_path, config, runner_buckets, env={"EVAL_MODEL_API_KEY": "sk-test"})
    assert ok.exit_code == 0, ok.stderr
    assert "sk-test" not in read(runner_buckets, prefix + "summary.json").decode()
    # Another task (a fresh prefix): the same one would reuse its checkpointed answers.
    config["output"]["s3"]["prefix"] = f"runs/ns/t/{uuid.uuid4()}/"
    bad = run_runner(tmp_path, config, runner_buckets, env={"EVAL_MODEL_API_KEY": "sk-wrong"})
    assert bad.exit_code == 78
    assert "rejected the API key" in bad.termination["message"]
    assert "sk-wrong" not in bad.termination["message"]


def test_classification_macro_f1_matches_scikit_learn(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, prefix: str
) -> None:
    from sklearn.metrics import f1_score

    rows = [{"sentence": f"s{i}", "label": label} for i, label in
            enumerate(["positive", "negative", "positive", "neutral", "negative", "positive"])]
    uri = put_jsonl(runner_buckets, "sst.jsonl", rows)
    llm.answers = {"s0": "Positive.", "s1": "negative", "s2": "negative", "s3": "neutral",
                   "s4": "I think positive", "s5": "positive"}
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "sst", "dataset": {"uri": uri, "fields": {"prompt": "sentence",
                                                           "reference": "label"}},
         "task": "classification", "metrics": ["f1", "accuracy"],
         "labels": ["positive", "negative", "neutral"]}])
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr
    predicted = ["positive", "negative", "negative", "neutral", "positive", "positive"]
    expected = f1_score([r["label"] for r in rows], predicted,
                        labels=["positive", "negative", "neutral"], average="macro")
    bench = result.termination["benchmarks"][0]
    assert bench["metrics"]["f1"] == expected
    assert bench["metrics"]["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize(("case", "expected_code", "needle"), [
    ("missing-dataset", 78, "benchmarks[0].dataset.uri"),
    ("malformed-jsonl", 78, "line 2 is not valid JSON"),
    ("unknown-metric", 78, "unknown metric 'blue'"),
    ("missing-column", 78, "no column 'question'"),
    ("unreachable-model", 75, "failed after"),
])
def test_bad_configurations_exit_with_the_right_code_and_name_the_problem(
    tmp_path: Path, runner_buckets: S3Endpoint, prefix: str, case: str, expected_code: int,
    needle: str,
) -> None:
    s3 = runner_buckets.client()
    s3.put_object(Bucket=DATA_BUCKET, Key="bad.jsonl", Body=b'{"prompt": "a", "reference": "b"}\n'
                  b'{"prompt": "c", "reference"\n')
    s3.put_object(Bucket=DATA_BUCKET, Key="good.jsonl", Body=b'{"prompt": "a", "reference": "b"}\n')
    benchmark: dict[str, Any] = {"name": "b", "dataset": {"uri": f"s3://{DATA_BUCKET}/good.jsonl"},
                                 "task": "generation", "metrics": ["exact-match"]}
    url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    if case == "missing-dataset":
        benchmark["dataset"]["uri"] = f"s3://{DATA_BUCKET}/missing.jsonl"
    elif case == "malformed-jsonl":
        benchmark["dataset"]["uri"] = f"s3://{DATA_BUCKET}/bad.jsonl"
    elif case == "unknown-metric":
        benchmark["metrics"] = ["blue"]
    elif case == "missing-column":
        benchmark["dataset"]["fields"] = {"prompt": "question"}
    config = base_config(url, runner_buckets, prefix, [benchmark])
    config["model"]["endpoint"]["maxRetries"] = 1
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == expected_code, result.stderr
    assert result.termination["status"] == "Failed"
    assert needle in result.termination["message"]
    listing = s3.list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=prefix)
    assert "summary.json" not in [o["Key"][len(prefix):] for o in listing.get("Contents", [])]


def test_results_that_cannot_be_uploaded_never_report_success(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, prefix: str
) -> None:
    uri = put_jsonl(runner_buckets, "gen-up.jsonl", GEN_ROWS)
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "wmt", "dataset": {"uri": uri, "fields": {"prompt": "de", "reference": "en"}},
         "task": "generation", "metrics": ["bleu"]}])
    config["output"]["s3"]["bucket"] = "no-such-results-bucket"
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code != 0
    assert result.termination["status"] == "Failed"
    assert "no-such-results-bucket" in result.termination["message"]


def test_dockerfile_entrypoint_runs_this_package() -> None:
    from evaluation_runner.__main__ import build_parser

    dockerfile = (Path(__file__).resolve().parents[2] / "runner-image" / "Dockerfile").read_text()
    entrypoint = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    command = next(line for line in dockerfile.splitlines() if line.startswith("CMD"))
    assert json.loads(entrypoint.split(None, 1)[1]) == ["python", "-m", "evaluation_runner"]
    args = build_parser().parse_args(json.loads(command.split(None, 1)[1]))
    assert str(args.config) == "/etc/evaluation/config.json"
    assert "USER 65532" in dockerfile
