"""Per-benchmark status and partial failure on the real API server with real S3 (moto).

The partial run is the real runner (hack/devcluster/play_runner.py) on the config the operator
wrote, against the scripted model; the progress test plays progress.json by hand, as the
runner would rewrite it, and watches status and `kubectl get -o wide` follow.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devcluster import play_runner
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from devcluster.kwok_pods import finish_pod

from tests.integration.conftest import (
    BUCKET,
    OperatorProcess,
    condition,
    create_task,
    prefix_of,
    running_pod,
    success_message,
    task_manifest,
    wait_status,
)
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]
DATA_BUCKET = "partial-datasets"


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def datasets(s3_server: S3Endpoint) -> str:
    s3 = s3_server.client()
    s3.create_bucket(Bucket=DATA_BUCKET)
    play_runner.upload_datasets(s3, DATA_BUCKET)
    return DATA_BUCKET


def test_a_benchmark_with_an_unreadable_dataset_fails_alone_and_the_rest_is_kept(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, s3_server: S3Endpoint,
    llm: FakeLLM, datasets: str, tmp_path: Path,
) -> None:
    play_runner.script_answers(llm, play_runner.BASELINE)  # 4 of 6 questions right
    task = play_runner.manifest("half", llm.url, datasets)
    missing = f"s3://{datasets}/no-such-{uuid.uuid4().hex[:6]}.jsonl"
    task["spec"]["benchmarks"][1]["dataset"]["uri"] = missing  # no failurePolicy: Continue
    keys = {"AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    status = play_runner.run_task(cluster, namespace, task, keys, tmp_path)

    assert (status["phase"], status["reason"]) == ("Failed", "PartiallyFailed")
    stored = cluster.kubectl_json("get", "evaluationtask", "half", "-n", namespace)
    assert stored["spec"]["failurePolicy"] == "Continue"  # the CRD's default
    assert status["overallScore"] == pytest.approx(4 / 6) and status["overallScorePartial"]
    arc, translate = status["benchmarks"]
    assert (arc["name"], arc["state"], arc["score"]) == ("arc-mini", "Completed",
                                                         pytest.approx(4 / 6))
    assert arc["metrics"]["accuracy"] == pytest.approx(4 / 6) and arc["startedAt"]
    assert (translate["name"], translate["state"]) == ("translate", "Failed")
    assert missing in translate["error"] and "score" not in translate
    assert status.get("currentBenchmark", "") == ""
    message = status["message"]
    assert message.startswith("1 of 2 benchmarks failed (translate: ") and missing in message
    assert status["results"]["bundle"] in message
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "PartiallyFailed")
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=half").stdout
    assert "PartiallyFailed" in events

    # The bundle is downloadable where status says, and says what failed.
    bucket, _, key = status["results"]["bundle"].removeprefix("s3://").partition("/")
    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as bundle:
        summary = json.loads(bundle.read("summary.json"))
        assert "benchmarks/arc-mini/samples.jsonl" in bundle.namelist()
    assert summary["partial"] is True
    assert {b["name"]: b["state"] for b in summary["benchmarks"]} == {
        "arc-mini": "Completed", "translate": "Failed"}
    assert not any("Translate:" in json.dumps(r) for r in llm.requests)

    table = cluster.kubectl("get", "evaluationtasks", "-n", namespace).stdout
    row = next(line for line in table.splitlines() if line.startswith("half"))
    assert "Failed" in row and "0.666" in row


def test_each_benchmark_s_state_follows_progress_json_and_wide_output_shows_the_current(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    create_task(cluster, namespace, task_manifest("moving"))
    pod = running_pod(cluster, namespace, "moving")
    status = wait_status(cluster, namespace, "moving", "Running",
                         lambda s: condition(s, "Running").get("status") == "True")
    key = prefix_of(status) + "progress.json"
    s3 = s3_server.client()

    def progress(arc: dict[str, Any], wmt: dict[str, Any]) -> None:
        done = arc["samplesDone"] + wmt["samplesDone"]
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({
            "samplesDone": done, "samplesTotal": 8, "updatedAt": "2026-01-01T00:00:00Z",
            "benchmarks": {"arc-easy": arc, "wmt-de-en": wmt}}).encode())

    def states(s: dict[str, Any]) -> dict[str, str]:
        return {b["name"]: b.get("state", "") for b in s.get("benchmarks") or []}

    progress({"samplesDone": 1, "samplesTotal": 4, "state": "Running",
              "startedAt": "2026-01-01T00:00:01Z"},
             {"samplesDone": 0, "samplesTotal": 4, "state": "Pending"})
    status = wait_status(cluster, namespace, "moving", "arc-easy running",
                         lambda s: s.get("currentBenchmark") == "arc-easy")
    assert states(status) == {"arc-easy": "Running", "wmt-de-en": "Pending"}
    assert status["benchmarks"][0]["samplesDone"] == 1
    assert status["progress"]["text"] == "1/8"

    wide = cluster.kubectl("get", "evaluationtasks", "-n", namespace, "-o", "wide").stdout
    header, row = wide.splitlines()[0], next(
        line for line in wide.splitlines() if line.startswith("moving"))
    assert "BENCHMARK" in header.split() and "arc-easy" in row.split()
    narrow = cluster.kubectl("get", "evaluationtasks", "-n", namespace).stdout
    assert "BENCHMARK" not in narrow.splitlines()[0].split()  # priority 1: -o wide only

    progress({"samplesDone": 4, "samplesTotal": 4, "state": "Completed",
              "startedAt": "2026-01-01T00:00:01Z", "finishedAt": "2026-01-01T00:00:05Z"},
             {"samplesDone": 2, "samplesTotal": 4, "state": "Running",
              "startedAt": "2026-01-01T00:00:05Z"})
    status = wait_status(cluster, namespace, "moving", "wmt-de-en running",
                         lambda s: s.get("currentBenchmark") == "wmt-de-en")
    assert states(status) == {"arc-easy": "Completed", "wmt-de-en": "Running"}
    assert status["benchmarks"][0]["finishedAt"] == "2026-01-01T00:00:05Z"

    scores = [{"name": "arc-easy", "score": 0.75, "primaryMetric": "accuracy",
               "metrics": {"accuracy": 0.75}, "samples": 4},
              {"name": "wmt-de-en", "score": 0.3, "primaryMetric": "bleu",
               "metrics": {"bleu": 30.0}, "samples": 4}]
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0.45, scores, status["results"]["uri"]))
    status = wait_status(cluster, namespace, "moving", "Completed",
                         lambda s: s.get("phase") == "Completed")
    assert states(status) == {"arc-easy": "Completed", "wmt-de-en": "Completed"}
    arc = status["benchmarks"][0]
    assert (arc["score"], arc["startedAt"], arc["samplesDone"]) == (
        0.75, "2026-01-01T00:00:01Z", 4)  # scores over what progress said
    assert status["currentBenchmark"] == "" and "overallScorePartial" not in status


def test_an_unknown_failure_policy_is_refused_by_the_api_server(
    cluster: Cluster, namespace: str,
) -> None:
    result = cluster.kubectl("create", "-n", namespace, "-f", "-", check=False, input=json.dumps(
        task_manifest("sometimes", failurePolicy="Sometimes")))
    assert result.returncode != 0
    assert "spec.failurePolicy" in result.stderr and "FailFast" in result.stderr
