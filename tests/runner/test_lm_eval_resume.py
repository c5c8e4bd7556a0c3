"""framework: lm-eval resumes mid-benchmark from the snapshot of lm-eval's request cache: the
runner as the Job runs it (a subprocess with a config file), the scripted model server
counting requests, moto's S3; and the snapshot and cache rules on their own."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from devcluster.fake_llm import FakeLLM
from evaluation_operator.s3 import ResultsLocation, purge

from tests.runner.conftest import RESULTS_BUCKET, base_config, run_runner
from tests.runner.test_lm_eval_adapter import MC_ROWS, VllmLike
from tests.runner.test_lm_eval_adapter import _server as vllm_server
from tests.support.requirements import require_module
from tests.support.s3 import S3Endpoint

require_module("lm_eval")

ROWS = [{"prompt": f"question number {i}?", "reference": f"answer {i}"} for i in range(40)]
HF = "hf"


def lm_eval_config(llm: FakeLLM, s3: S3Endpoint, prefix: str, data: Path,
                   concurrency: int = 1) -> dict[str, Any]:
    config = base_config(llm.url, s3, prefix, [
        {"name": "qa", "task": "generation", "metrics": ["exact-match", "bleu"],
         "dataset": {"uri": str(data), "format": None, "fields": {}},
         "limit": None, "weight": 1.0, "fewShot": 0, "labels": None}],
        framework={"name": "lm-eval"})
    config["parameters"]["concurrency"] = concurrency
    config["model"]["endpoint"]["maxRetries"] = 0  # one try per request: failures are quick
    return config


def write_rows(tmp_path: Path) -> Path:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return data


def keys_under(s3: S3Endpoint, prefix: str) -> list[str]:
    found = s3.client().list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=prefix)
    return sorted(item["Key"][len(prefix):] for item in found.get("Contents", []))


def read(s3: S3Endpoint, key: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=key)["Body"].read()
    return body


def snapshot_answers(s3: S3Endpoint, prefix: str, tmp_path: Path) -> int:
    """Answers in the one lm-eval cache snapshot saved under the prefix."""
    from evaluation_runner.lm_eval_cache import cached_answers

    snapshots = [k for k in keys_under(s3, prefix) if k.endswith(".sqlite")]
    assert len(snapshots) == 1, snapshots
    assert snapshots[0].startswith("checkpoints/qa/lm-eval-cache-")
    path = tmp_path / f"snapshot-{uuid.uuid4()}.db"
    path.write_bytes(read(s3, prefix + snapshots[0]))
    return cached_answers(path)


def outcome(s3: S3Endpoint, prefix: str) -> tuple[dict[str, Any], list[Any], list[str]]:
    summary = json.loads(read(s3, prefix + "summary.json"))
    samples = [json.loads(line) for line in
               read(s3, prefix + "benchmarks/qa/samples.jsonl").decode().splitlines()]
    return ({"metrics": summary["benchmarks"][0]["metrics"],
             "native": summary["framework"]["frameworkResults"]["qa"]},
            [(s["index"], s["prediction"]) for s in samples], [s["prompt"] for s in samples])


def sent_prompts(llm: FakeLLM, since: int) -> list[str]:
    return [r["messages"][-1]["content"] for r in llm.requests[since:]]


def test_a_retry_sends_only_the_requests_lm_eval_had_no_answer_for(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    llm.answers = {f"number {i}?": f"answer {i}" for i in range(0, 40, 2)}  # half right
    data = write_rows(tmp_path)
    env = {"HF_HOME": str(tmp_path / HF)}

    # The reference: one uninterrupted run.
    whole = f"runs/lm-eval/whole/{uuid.uuid4()}/"
    result = run_runner(tmp_path, lm_eval_config(llm, runner_buckets, whole, data),
                        runner_buckets, env)
    assert result.exit_code == 0, result.stderr[-3000:]
    assert len(llm.requests) == len(ROWS)
    expected = outcome(runner_buckets, whole)

    # Attempt 1: the model goes down after 15 answers; lm-eval gives up, the runner exits 75.
    prefix = f"runs/lm-eval/resume/{uuid.uuid4()}/"
    config = lm_eval_config(llm, runner_buckets, prefix, data)
    start = len(llm.requests)
    llm.fail_after = start + 15
    result = run_runner(tmp_path, config, runner_buckets, env)
    assert result.exit_code == 75, result.stderr[-3000:]
    assert result.termination["reason"] == "ModelUnreachable"
    answered = set(sent_prompts(llm, start)[:15])
    assert snapshot_answers(runner_buckets, prefix, tmp_path) == 15

    # Attempt 2 (same task, same prefix, a new process): only the other 25 are asked.
    llm.fail_after = None
    start = len(llm.requests)
    result = run_runner(tmp_path, config, runner_buckets, env)
    assert result.exit_code == 0, result.stderr[-3000:]
    resent = sent_prompts(llm, start)
    assert len(resent) == len(ROWS) - 15
    assert not set(resent) & answered
    assert outcome(runner_buckets, prefix) == expected  # same scores, answers and prompts
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    assert summary["resumed"]["answersReused"] == 15
    assert summary["resumed"]["benchmarks"]["qa"] == {
        "answersReused": 15, "answersRequested": 25, "benchmarkReused": False}

    # A changed generation parameter (the seed: not in lm-eval's own request hash) matches
    # neither the snapshot nor the finished benchmark: every request is sent again.
    config["parameters"]["seed"] = 2
    start = len(llm.requests)
    result = run_runner(tmp_path, config, runner_buckets, env)
    assert result.exit_code == 0, result.stderr[-3000:]
    assert len(llm.requests) - start == len(ROWS)
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    assert summary["resumed"]["answersReused"] == 0

    # The operator's purge removes the snapshots with everything else.
    purge(runner_buckets.client(), ResultsLocation(RESULTS_BUCKET, prefix))
    assert keys_under(runner_buckets, prefix) == []


def test_sigterm_saves_lm_evals_answers_for_the_retry(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    llm.answers = {f"number {i}?": f"answer {i}" for i in range(0, 40, 2)}
    llm.delay_seconds = 0.05
    data = write_rows(tmp_path)
    env = {"HF_HOME": str(tmp_path / HF)}
    prefix = f"runs/lm-eval/sigterm/{uuid.uuid4()}/"
    config = lm_eval_config(llm, runner_buckets, prefix, data, concurrency=2)
    config["progressIntervalSeconds"] = 600  # no periodic save: only SIGTERM can save them
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    first = subprocess.Popen(
        [sys.executable, "-m", "evaluation_runner", "--config", str(config_path),
         "--termination-log", str(tmp_path / "first-termination-log")],
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": runner_buckets.access_key,
             "AWS_SECRET_ACCESS_KEY": runner_buckets.secret_key, "HOME": str(tmp_path), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240  # lm-eval's import is slow on a busy machine
        while time.monotonic() < deadline and len(llm.requests) < 10:
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 75
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    sent = len(llm.requests)
    assert 10 <= sent < len(ROWS), "the signal came too late to test a resume"
    saved = snapshot_answers(runner_buckets, prefix, tmp_path)
    assert saved >= 10 - 2  # at most the two requests under way at the signal are lost

    llm.delay_seconds = 0.0
    start = len(llm.requests)
    result = run_runner(tmp_path, config, runner_buckets, env)
    assert result.exit_code == 0, result.stderr[-3000:]
    assert len(llm.requests) - start == len(ROWS) - saved
    summary = json.loads(read(runner_buckets, prefix + "summary.json"))
    assert summary["resumed"]["benchmarks"]["qa"]["answersReused"] == saved
    assert summary["benchmarks"][0]["metrics"]["exact-match"] == 0.5


class FailingVllm(VllmLike):
    """Serves `answer` log-likelihood requests, then drops every connection (a crashed server);
    records the questions it was asked about."""

    def __init__(self, answer: int) -> None:
        super().__init__()
        self.left = answer
        self.asked: list[str] = []

    def echo(self, prompt: Any) -> dict[str, Any]:
        text = self.decode(prompt) if isinstance(prompt, list) else str(prompt)
        if self.left <= 0:
            raise ConnectionAbortedError("scripted crash")
        self.left -= 1
        self.asked.append(text.split("\n")[0])
        return super().echo(prompt)


def test_multiple_choice_resumes_log_likelihoods_mid_benchmark(
        tmp_path: Path, runner_buckets: S3Endpoint) -> None:
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    model = FailingVllm(answer=5)  # of 4 questions x 3 choices = 12 requests
    server = vllm_server(model)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    prefix = f"runs/lm-eval/mc-resume/{uuid.uuid4()}/"
    config = base_config(url, runner_buckets, prefix, [
        {"name": "qa", "task": "multiple-choice", "metrics": ["accuracy"],
         "dataset": {"uri": str(data), "format": None,
                     "fields": {"prompt": "question", "reference": "answer"}},
         "limit": None, "weight": 1.0, "fewShot": 0, "labels": None}],
        api="completions", framework={"name": "lm-eval"})
    config["parameters"]["concurrency"] = 1
    config["model"]["endpoint"]["maxRetries"] = 0
    env = {"HF_HOME": str(tmp_path / HF)}
    try:
        result = run_runner(tmp_path, config, runner_buckets, env)
        assert result.exit_code == 75, result.stderr[-3000:]
        assert snapshot_answers(runner_buckets, prefix, tmp_path) == 5

        model.left, model.asked = 100, []
        result = run_runner(tmp_path, config, runner_buckets, env)
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.stderr[-3000:]
    assert len(model.asked) == 12 - 5
    assert result.termination["benchmarks"][0]["metrics"] == {"accuracy": 0.75}
    resumed = json.loads(read(runner_buckets, prefix + "summary.json"))["resumed"]
    # A question is requested when any of its choices had to be asked again.
    assert resumed["benchmarks"]["qa"]["answersRequested"] == len(set(model.asked))
    assert resumed["benchmarks"]["qa"]["answersReused"] == 4 - len(set(model.asked))


class Counting:
    """Enough of an lm-eval model for CachingLM: counts the requests that reach it."""

    def __init__(self) -> None:
        self.asked = 0
        self.cache_hook: Any = None

    def set_cache_hook(self, hook: Any) -> None:
        self.cache_hook = hook

    def generate_until(self, requests: list[Any]) -> list[str]:
        self.asked += len(requests)
        return ["an answer"] * len(requests)


def test_a_snapshot_taken_while_the_cache_is_written_is_a_whole_database(
        tmp_path: Path) -> None:
    from evaluation_runner.lm_eval_cache import cached_answers, consistent_copy
    from lm_eval.api.model import CachingLM

    path = tmp_path / "cache_rank0.db"
    model = Counting()
    cache = CachingLM(model, str(path))

    def answer_all() -> None:  # as lm-eval's API models do, one answer at a time
        for i in range(3000):
            model.cache_hook.add_partial("generate_until", (f"q{i}", {}), "x" * 200)

    writing = threading.Thread(target=answer_all)
    writing.start()
    counts: list[int] = []
    copy = tmp_path / "copy.db"
    try:
        while writing.is_alive() or not counts:
            copy.write_bytes(consistent_copy(path))
            with contextlib.closing(sqlite3.connect(copy)) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            counts.append(cached_answers(copy))
        writing.join()
    finally:
        cache.dbdict.close()  # commits what is queued
    copy.write_bytes(consistent_copy(path))
    counts.append(cached_answers(copy))
    assert counts == sorted(counts) and counts[-1] == 3000
    assert len(set(counts)) > 2, "no copy was taken while the cache grew"


def test_lm_eval_asks_again_for_sampled_requests(tmp_path: Path) -> None:
    """What the runner's docs promise about lm-eval's cache: greedy requests are answered
    from it, requests with do_sample are sent to the model every time."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import CachingLM

    model = Counting()
    cache = CachingLM(model, str(tmp_path / "cache.db"))
    try:
        for sample in (False, False, True, True):
            request = Instance("generate_until", {}, (
                "Q?", {"until": ["\n"], "do_sample": sample, "temperature": 0.7}), 0)
            assert cache.generate_until([request]) == ["an answer"]
    finally:
        cache.dbdict.close()
    assert model.asked == 1 + 2  # greedy: once, then from the cache; sampled: every time


def test_the_runner_never_asks_lm_eval_to_sample(
        tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint) -> None:
    """So every request, at any temperature, is resumable (as with the builtin framework)."""
    from evaluation_runner.config import parse_config
    from evaluation_runner.datasets import LoadedDataset, Sample
    from evaluation_runner.lm_eval_adapter import task_config

    raw = lm_eval_config(llm, runner_buckets, "runs/x/", write_rows(tmp_path))
    raw["parameters"]["temperature"] = 0.8
    config = parse_config(raw)
    dataset = LoadedDataset("mem", "0" * 64, 1, (), (Sample(0, "Q?", "A"),))
    kwargs = task_config(config.benchmarks[0], dataset, tmp_path, config)["generation_kwargs"]
    assert kwargs["do_sample"] is False and kwargs["temperature"] == 0.8
