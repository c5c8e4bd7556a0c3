"""Sharded runs (issue 14): N shard processes and a merge give the one-pod run's results."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from devcluster.fake_llm import FakeLLM
from evaluation_runner import layout
from evaluation_runner.sharding import plan

from tests.runner.conftest import RESULTS_BUCKET, RunResult, base_config, run_runner
from tests.support.s3 import S3Endpoint

# Sample counts that 2, 3 and 4 do not divide (the multiple-choice set has one more row,
# its few-shot example).
MC, GEN, CLS = 17, 23, 19
COLOURS = ["red", "blue", "green", "amber"]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "the", "dog", "ran", "to",
         "the", "park", "near", "the", "river"]
LABELS = ["positive", "negative", "neutral"]


def _rows() -> dict[str, list[dict[str, Any]]]:
    mc = [{"question": f"mc-{i}: pick a colour", "choices": COLOURS,
           "answer": COLOURS[(i * 7) % 4]} for i in range(MC + 1)]
    gen = [{"prompt": f"gen-{i}: describe", "reference": " ".join(WORDS[i % 5:i % 5 + 6])}
           for i in range(GEN)]
    cls = [{"sentence": f"cls-{i}: review", "label": LABELS[(i * 5) % 3]} for i in range(CLS)]
    return {"mc": mc, "gen": gen, "cls": cls}


def _script(llm: FakeLLM) -> None:
    # Generation: partial overlaps (so BLEU, chrF, ROUGE are neither 0 nor 100).
    llm.answers = {f"gen-{i}: describe": " ".join(WORDS[i % 7:i % 7 + 5]) for i in range(GEN)}
    # Classification: some right, some wrong, one unreadable answer.
    llm.answers.update({f"cls-{i}: review": ("no idea" if i == 4 else LABELS[(i * 2) % 3])
                        for i in range(CLS)})
    llm.choice_logprobs = {"red": -1.2, "blue": -0.4, "green": -0.9, "amber": -2.5}


def _config(llm: FakeLLM, s3: S3Endpoint, prefix: str, uris: dict[str, str],
            shards: int) -> dict[str, Any]:
    benchmarks: list[dict[str, Any]] = [
        {"name": "quiz", "dataset": {"uri": uris["mc"], "fields": {"prompt": "question",
                                                            "reference": "answer"}},
         "task": "multiple-choice", "metrics": ["accuracy", "acc-norm", "f1"], "fewShot": 1},
        {"name": "describe", "dataset": {"uri": uris["gen"]}, "task": "generation",
         "metrics": ["bleu", "chrf", "rouge-l", "exact-match", "f1"]},
        # No labels given: the prompt lists the labels found in the whole dataset.
        {"name": "sentiment", "dataset": {"uri": uris["cls"], "fields": {
            "prompt": "sentence", "reference": "label"}},
         "task": "classification", "metrics": ["f1", "accuracy"], "weight": 2},
    ]
    config = base_config(llm.url, s3, prefix, benchmarks, api="completions")
    if shards > 1:
        config["sharding"] = {"count": shards}
    return config


def _runner(tmp_path: Path, name: str, config: dict[str, Any], s3: S3Endpoint,
            args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config))
    return subprocess.Popen(
        [sys.executable, "-m", "evaluation_runner", "--config", str(config_path),
         "--termination-log", str(tmp_path / f"{name}.log"), *args],
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": s3.access_key,
             "AWS_SECRET_ACCESS_KEY": s3.secret_key, "HOME": str(tmp_path), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(tmp_path: Path, name: str, process: subprocess.Popen[str]) -> RunResult:
    _, stderr = process.communicate(timeout=300)
    log = tmp_path / f"{name}.log"
    return RunResult(process.returncode, json.loads(log.read_text()) if log.exists() else {},
                     stderr)


def run_sharded(tmp_path: Path, config: dict[str, Any], s3: S3Endpoint,
                indexes: range | None = None) -> list[RunResult]:
    """The shards of `config` as an Indexed Job runs them: concurrently, one process each."""
    count = config["sharding"]["count"]
    started = {i: _runner(tmp_path, f"shard-{i}", config, s3, [],
                          {"JOB_COMPLETION_INDEX": str(i)})
               for i in (indexes if indexes is not None else range(count))}
    return [_finish(tmp_path, f"shard-{i}", p) for i, p in started.items()]


def run_merge(tmp_path: Path, config: dict[str, Any], s3: S3Endpoint) -> RunResult:
    return _finish(tmp_path, "merge", _runner(tmp_path, "merge", config, s3,
                                              ["--mode", "merge"], {}))


def _objects(s3: S3Endpoint, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=RESULTS_BUCKET, Prefix=prefix) for o in page.get("Contents", [])]
    return {k[len(prefix):]: client.get_object(Bucket=RESULTS_BUCKET, Key=k)["Body"].read()
            for k in keys}


def untimed(message: dict[str, Any]) -> dict[str, Any]:
    """A termination message or task status less each benchmark's start and end (the merge
    has no times of its own for them: the shards answered)."""
    kept = copy.deepcopy(message)
    for benchmark in kept.get("benchmarks") or []:
        benchmark.pop("startedAt", None)
        benchmark.pop("finishedAt", None)
    return kept


def without_run_details(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json less what differs between any two runs: timings (the run's and each
    benchmark's start and end), the shard bookkeeping, and the attempt's id (a time and
    process id)."""
    kept = copy.deepcopy(summary)
    del kept["timings"]
    for benchmark in kept["benchmarks"]:
        benchmark.pop("startedAt", None)
        benchmark.pop("finishedAt", None)
    kept.pop("shards", None)
    del kept["resumed"]["attempt"]
    return kept


def _upload(s3: S3Endpoint, run: str) -> dict[str, str]:
    client = s3.client()
    uris = {}
    for name, rows in _rows().items():
        key = f"sharding/{run}/{name}.jsonl"
        client.put_object(Bucket="runner-datasets", Key=key,
                          Body="".join(json.dumps(r) + "\n" for r in rows).encode())
        uris[name] = f"s3://runner-datasets/{key}"
    return uris


# --- the plan ------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7, 64])
@pytest.mark.parametrize("counts", [[17, 23, 19], [0, 1, 2], [5], [100, 3, 3, 3]])
def test_every_sample_goes_to_exactly_one_shard_and_shards_are_balanced(
        counts: list[int], shards: int) -> None:
    blocks = plan(counts, shards)
    assert len(blocks) == shards
    for b, count in enumerate(counts):
        positions = [p for shard in blocks for p in shard[b]]
        assert positions == list(range(count))  # contiguous, in order, each once
        sizes = [len(shard[b]) for shard in blocks]
        assert max(sizes) - min(sizes) <= 1
    totals = [sum(len(r) for r in shard) for shard in blocks]
    assert max(totals) - min(totals) <= 1
    assert plan(counts, shards) == blocks  # the same on every call (retries)


def test_one_shard_answers_everything() -> None:
    assert plan([17, 23], 1) == [[range(0, 17), range(0, 23)]]


# --- end to end: N shards and a merge against one pod ------------------------------------


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_sharded_run_gives_the_one_pod_results(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint, shards: int) -> None:
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF
    from sklearn.metrics import f1_score

    _script(llm)
    run = uuid.uuid4().hex[:8]
    uris = _upload(runner_buckets, run)
    one = f"runs/ns/one-{run}/{uuid.uuid4()}/"
    many = f"runs/ns/many-{run}/{uuid.uuid4()}/"

    single = run_runner(tmp_path, _config(llm, runner_buckets, one, uris, 1), runner_buckets)
    assert single.exit_code == 0, single.stderr
    config = _config(llm, runner_buckets, many, uris, shards)
    for result in run_sharded(tmp_path, config, runner_buckets):
        assert result.exit_code == 0, result.stderr
        assert result.termination["shard"]["count"] == shards
    # The shards wrote their answers only, below shards/<i>/: no scores yet.
    before = _objects(runner_buckets, many)
    assert all(k.startswith(f"{layout.SHARDS_DIR}/") for k in before), sorted(before)
    merged = run_merge(tmp_path, config, runner_buckets)
    assert merged.exit_code == 0, merged.stderr

    a, b = _objects(runner_buckets, one), _objects(runner_buckets, many)
    summary_one, summary_many = (json.loads(x[layout.SUMMARY_JSON]) for x in (a, b))
    assert without_run_details(summary_many) == without_run_details(summary_one)
    assert summary_many["shards"]["count"] == shards
    assert sum(s["samples"] for s in summary_many["shards"]["shards"]) == MC + GEN + CLS
    # Byte for byte: the score table, every benchmark's metrics and samples.
    for key in a:
        if key.startswith(layout.BENCHMARKS_DIR) or key == layout.SUMMARY_CSV:
            assert b[key] == a[key], key
    progress = json.loads(b[layout.PROGRESS_JSON])
    assert (progress["samplesDone"], progress["samplesTotal"]) == (MC + GEN + CLS,) * 2
    # The termination message the operator reads: the same scores.
    for message in (single.termination, merged.termination):
        message.pop("results")
    assert untimed(merged.termination) == untimed(single.termination)

    # The corpus metrics are the reference libraries' over the whole set, not shard means.
    samples = {name: [json.loads(line) for line in b[layout.samples_key(name)].splitlines()]
               for name in ("describe", "sentiment")}
    hypotheses = [s["prediction"] for s in samples["describe"]]
    references = [[s["reference"] for s in samples["describe"]]]
    metrics = {m["name"]: m["metrics"] for m in summary_many["benchmarks"]}
    assert metrics["describe"]["bleu"] == BLEU().corpus_score(hypotheses, references).score
    assert metrics["describe"]["chrf"] == CHRF().corpus_score(hypotheses, references).score
    truth = [s["reference"] for s in samples["sentiment"]]
    assert metrics["sentiment"]["f1"] == f1_score(
        truth, [s["prediction"] for s in samples["sentiment"]], labels=sorted(set(truth)),
        average="macro", zero_division=0)
    assert 0 < metrics["describe"]["bleu"] < 100 and 0 < metrics["sentiment"]["f1"] < 1


def test_a_retried_shard_reuses_its_own_answers(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    _script(llm)
    run = uuid.uuid4().hex[:8]
    prefix = f"runs/ns/retry-{run}/{uuid.uuid4()}/"
    config = _config(llm, runner_buckets, prefix, _upload(runner_buckets, run), 3)
    (first,) = run_sharded(tmp_path, config, runner_buckets, range(1, 2))
    assert first.exit_code == 0, first.stderr
    asked = len(llm.requests)
    assert asked > 0
    (again,) = run_sharded(tmp_path, config, runner_buckets, range(1, 2))
    assert again.exit_code == 0, again.stderr
    assert len(llm.requests) == asked  # every answer came from shard 1's checkpoints
    shard = json.loads(_objects(runner_buckets, prefix + "shards/1/")[layout.SHARD_JSON])
    assert shard["resumed"]["answersReused"] == first.termination["shard"]["samples"]
    # Nothing of shard 1 landed in another shard's folder.
    assert {k.split("/")[1] for k in _objects(runner_buckets, prefix)} == {"1"}


def test_a_merge_without_every_shard_fails_and_names_the_missing_one(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    _script(llm)
    run = uuid.uuid4().hex[:8]
    prefix = f"runs/ns/gap-{run}/{uuid.uuid4()}/"
    config = _config(llm, runner_buckets, prefix, _upload(runner_buckets, run), 3)
    for result in run_sharded(tmp_path, config, runner_buckets, range(0, 2)):
        assert result.exit_code == 0, result.stderr
    merged = run_merge(tmp_path, config, runner_buckets)
    assert merged.exit_code == 75
    assert "shards/2/shard.json" in merged.termination["message"]
    assert layout.SUMMARY_JSON not in _objects(runner_buckets, prefix)


def test_a_shard_outside_an_indexed_job_is_a_configuration_error(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    run = uuid.uuid4().hex[:8]
    config = _config(llm, runner_buckets, f"runs/ns/x-{run}/{uuid.uuid4()}/",
                     _upload(runner_buckets, run), 3)
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 78
    assert "JOB_COMPLETION_INDEX" in result.termination["message"]
    lm_eval = {**config, "framework": {"name": "lm-eval"},
               "benchmarks": config["benchmarks"][1:]}
    result = run_runner(tmp_path, lm_eval, runner_buckets,
                        env={"JOB_COMPLETION_INDEX": "0"})
    assert result.exit_code == 78
    assert "sharding.count" in result.termination["message"]


def test_everything_a_sharded_run_writes_is_purged_by_the_operator(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    from evaluation_operator import s3 as operator_s3

    assert operator_s3.SHARDS_DIRECTORY == layout.SHARDS_DIR
    assert operator_s3.SHARD_FILES == layout.SHARD_FILES
    assert operator_s3.RUNNER_DIRECTORIES == layout.SHARD_DIRECTORIES
    _script(llm)
    run = uuid.uuid4().hex[:8]
    prefix = f"runs/ns/purge-{run}/{uuid.uuid4()}/"
    config = _config(llm, runner_buckets, prefix, _upload(runner_buckets, run), 2)
    for result in run_sharded(tmp_path, config, runner_buckets):
        assert result.exit_code == 0, result.stderr
    assert run_merge(tmp_path, config, runner_buckets).exit_code == 0
    written = _objects(runner_buckets, prefix)
    assert any(k.startswith("shards/1/checkpoints/") for k in written)
    assert "shards/0/runner.log" in written and "shards/1/benchmarks/quiz/predictions.jsonl" \
        in written
    for key in written:
        assert operator_s3.is_task_key(key), key
    # A task nested below this one (namespace "shards", task "1") keeps its data.
    nested = f"{prefix}shards/1/{uuid.uuid4()}/summary.json"
    runner_buckets.client().put_object(Bucket=RESULTS_BUCKET, Key=nested, Body=b"{}")
    deleted = operator_s3.purge(runner_buckets.client(),
                                operator_s3.ResultsLocation(RESULTS_BUCKET, prefix))
    assert deleted == len(written)
    assert list(_objects(runner_buckets, prefix)) == [nested[len(prefix):]]
