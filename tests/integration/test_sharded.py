"""spec.parallelism on the real control plane (issue 14): an Indexed Job of shard pods, a
failed shard retried on its own, the merge Job, scores equal to one pod's, the purge.

KWOK runs the pods; the test plays each pod with the real runner (`python -m
evaluation_runner` with the config.json the operator wrote, JOB_COMPLETION_INDEX as the Job
controller sets it) and finishes it with the runner's exit code and termination message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devcluster import play_runner
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from devcluster.kwok_pods import EXIT_CODE, finish_pod
from evaluation_runner import termination

from tests.integration.conftest import (
    BUCKET,
    OperatorProcess,
    create_task,
    get_task,
    prefix_of,
    versions_under,
    wait_status,
)
from tests.runner.test_sharding import without_run_details
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]
DATA_BUCKET = "shard-datasets"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
ROLE_LABEL = "evaluation.dev/role"


@pytest.fixture(scope="module")
def llm(s3_server: S3Endpoint) -> Iterator[FakeLLM]:
    s3 = s3_server.client()
    s3.create_bucket(Bucket=DATA_BUCKET)
    play_runner.upload_datasets(s3, DATA_BUCKET)
    server = FakeLLM().start()
    play_runner.script_answers(server, play_runner.BASELINE)
    yield server
    server.stop()


def running_pods(cluster: Cluster, namespace: str, task: str, merge: bool = False
                 ) -> dict[int, dict[str, Any]]:
    """The task's Running pods not yet finished by the test: by shard index (merge: 0)."""
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                f"evaluation.dev/task={task}")["items"]
    found = {}
    for pod in pods:
        meta = pod["metadata"]
        if (pod["status"].get("phase") != "Running" or meta.get("deletionTimestamp")
                or EXIT_CODE in (meta.get("annotations") or {})
                or ((meta.get("labels") or {}).get(ROLE_LABEL) == "merge") != merge):
            continue
        found[int((meta.get("labels") or {}).get(INDEX_LABEL, 0))] = pod
    return found


def play(workdir: Path, config: str, s3: S3Endpoint, env: dict[str, str], *args: str
         ) -> tuple[int, str]:
    """The real runner, as the pod would run it: (exit code, termination message)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config)
    log = workdir / "termination-log"
    result = subprocess.run(
        [sys.executable, "-m", "evaluation_runner", "--config", str(workdir / "config.json"),
         "--termination-log", str(log), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), "AWS_ACCESS_KEY_ID": s3.access_key,
             "AWS_SECRET_ACCESS_KEY": s3.secret_key, "PYTHONPATH": os.pathsep.join(sys.path),
             **env},
        capture_output=True, text=True, timeout=180, check=False)
    assert log.exists(), result.stderr[-3000:]
    return result.returncode, log.read_text()


def test_a_sharded_task_completes_with_the_one_pod_scores_and_is_purged(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint, llm: FakeLLM, tmp_path: Path,
) -> None:
    name = "sharded"
    manifest = play_runner.manifest(name, llm.url, DATA_BUCKET)
    manifest["spec"].update(parallelism=3, retries=1)
    create_task(cluster, namespace, manifest)
    job = json.loads(cluster.wait_until("the Job", lambda: cluster.kubectl(
        "get", "job", f"{name}-eval", "-n", namespace, "-o", "json", check=False).stdout))
    assert (job["spec"]["completionMode"], job["spec"]["completions"],
            job["spec"]["backoffLimitPerIndex"]) == ("Indexed", 3, 1)
    pods = cluster.wait_until("3 running shards", lambda: (
        found if len(found := running_pods(cluster, namespace, name)) == 3 else None),
        timeout=90)
    status = wait_status(cluster, namespace, name, "shards counted",
                         lambda s: (s.get("shards") or {}).get("total") == 3)
    assert status["phase"] == "Evaluating" and status["shards"]["done"] == 0
    config = cluster.kubectl_json("get", "configmap", f"{name}-config", "-n",
                                  namespace)["data"]["config.json"]
    assert json.loads(config)["sharding"] == {"count": 3}

    # Shard 1 fails once (the runner's own failure message): retried on its own.
    failure = termination.failure_message("ModelUnreachable", "model endpoint refused")
    finish_pod(core, namespace, pods[1]["metadata"]["name"], 75, message=failure.decode())
    status = wait_status(cluster, namespace, name, "a failed shard",
                         lambda s: (s.get("shards") or {}).get("failed") == 1)
    assert status["phase"] == "Evaluating"
    assert "model endpoint refused" in status["message"]

    for index in (0, 2):
        code, message = play(tmp_path / f"shard-{index}", config, s3_server,
                             {"JOB_COMPLETION_INDEX": str(index)})
        assert code == 0, message
        finish_pod(core, namespace, pods[index]["metadata"]["name"], 0, message=message)
    status = wait_status(cluster, namespace, name, "2 shards done",
                         lambda s: (s.get("shards") or {}).get("done") == 2)
    assert status["phase"] == "Evaluating" and status["shards"]["text"] == "2/3"
    retried = cluster.wait_until("shard 1 again", lambda: running_pods(
        cluster, namespace, name).get(1), timeout=60)
    assert retried["metadata"]["name"] != pods[1]["metadata"]["name"]
    code, message = play(tmp_path / "shard-1", config, s3_server, {"JOB_COMPLETION_INDEX": "1"})
    assert code == 0, message
    finish_pod(core, namespace, retried["metadata"]["name"], 0, message=message)

    # Every shard answered: the operator runs the merge Job (no GPU), and it decides.
    status = wait_status(cluster, namespace, name, "merging",
                         lambda s: s.get("reason") == "Merging")
    merge_job = json.loads(cluster.wait_until("the merge Job", lambda: cluster.kubectl(
        "get", "job", f"{name}-merge", "-n", namespace, "-o", "json", check=False).stdout))
    merge_args = merge_job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert merge_args[-2:] == ["--mode", "merge"]
    merge_pod = cluster.wait_until("the merge pod", lambda: running_pods(
        cluster, namespace, name, merge=True).get(0), timeout=60)
    code, message = play(tmp_path / "merge", config, s3_server, {}, "--mode", "merge")
    assert code == 0, message
    finish_pod(core, namespace, merge_pod["metadata"]["name"], 0, message=message)
    status = wait_status(cluster, namespace, name, "Completed",
                         lambda s: s.get("phase") in ("Completed", "Failed"))
    assert status["phase"] == "Completed", status["message"]
    assert status["shards"] == {"total": 3, "done": 3, "failed": 1, "text": "3/3",
                                "merge": "Succeeded"}
    wide = cluster.kubectl("get", "evt", name, "-n", namespace, "-o", "wide").stdout
    assert "3/3" in wide

    # The same task on one pod: the same scores, the same summary.json.
    one_pod = json.loads(config)
    del one_pod["sharding"]
    baseline = f"baseline/{uuid.uuid4()}/"
    one_pod["output"]["s3"]["prefix"] = baseline
    code, message = play(tmp_path / "one-pod", json.dumps(one_pod), s3_server, {})
    assert code == 0, message
    single = json.loads(message)
    assert status["overallScore"] == single["overallScore"]
    assert [(b["name"], b["score"], b["metrics"]) for b in status["benchmarks"]] == [
        (b["name"], b["score"], b["metrics"]) for b in single["benchmarks"]]
    s3 = s3_server.client()
    prefix = prefix_of(status)

    def summary(where: str) -> dict[str, Any]:
        body = s3.get_object(Bucket=BUCKET, Key=where + "summary.json")["Body"].read()
        document: dict[str, Any] = json.loads(body)
        return document

    sharded = summary(prefix)
    assert sharded["shards"]["count"] == 3
    assert without_run_details(sharded) == without_run_details(summary(baseline))

    # Deleting the task purges everything, shards/ and the merge's bundle included.
    assert any(k.startswith(prefix + "shards/2/checkpoints/") for k in versions_under(s3, prefix))
    cluster.kubectl("delete", "evaluationtask", name, "-n", namespace, "--wait=false")
    cluster.wait_until("the task gone", lambda: get_task(cluster, namespace, name) is None,
                       timeout=60)
    assert versions_under(s3, prefix) == []


def test_a_config_error_in_one_shard_fails_the_task_at_once(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    llm: FakeLLM,
) -> None:
    name = "sharded-bad"
    manifest = play_runner.manifest(name, llm.url, DATA_BUCKET)
    manifest["spec"].update(parallelism=2, retries=3)
    create_task(cluster, namespace, manifest)
    pods = cluster.wait_until("2 running shards", lambda: (
        found if len(found := running_pods(cluster, namespace, name)) == 2 else None),
        timeout=90)
    failure = termination.failure_message("ConfigurationError",
                                          "benchmarks[0].dataset: no column 'question'")
    finish_pod(core, namespace, pods[0]["metadata"]["name"], 78, message=failure.decode())
    status = wait_status(cluster, namespace, name, "Failed",
                         lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "ConfigurationError"
    assert "no column 'question'" in status["message"]
