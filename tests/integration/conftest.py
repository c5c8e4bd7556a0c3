"""The operator as users run it (`python -m evaluation_operator`), against the real control
plane and moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devcluster.cluster import Cluster
from evaluation_operator import memory
from kubernetes import client

from tests.support.s3 import S3Endpoint

BUCKET = "eval-results"
START_FAILURE_GRACE_SECONDS = 4
RESULTS_TIMEOUT_SECONDS = 15


class OperatorProcess:
    def __init__(self, cluster: Cluster, s3: S3Endpoint, log_dir: Path,
                 flags: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.s3 = s3
        self.log_dir = log_dir
        self.flags = flags
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "EVAL_S3_ENDPOINT": self.s3.endpoint_url,
            "EVAL_S3_BUCKET": BUCKET,
            "EVAL_S3_REGION": self.s3.region,
            "EVAL_PROGRESS_INTERVAL_SECONDS": "2",
            "EVAL_PURGE_RETRY_MAX_SECONDS": "4",
            "EVAL_START_FAILURE_GRACE_SECONDS": str(START_FAILURE_GRACE_SECONDS),
            "EVAL_RESULTS_TIMEOUT_SECONDS": str(RESULTS_TIMEOUT_SECONDS),
            "EVAL_RUNNER_IMAGE": "registry.example/evaluation-runner:test",
            **memory.PROCESS_ENV,  # as the image and `make run` start it
        }

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "evaluation_operator", *self.flags, "--verbose"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )
        time.sleep(1.5)
        assert self.process.poll() is None, self.log()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the pod is OOM-killed."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Endpoint) -> str:
    s3 = s3_server.client()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return BUCKET


@pytest.fixture(scope="session")
def operator(cluster: Cluster, s3_server: S3Endpoint, s3_bucket: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster, s3_server, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """The operator, restarted if an earlier test killed it."""
    if operator.process is None or operator.process.poll() is not None:
        operator.start()
    return operator


@pytest.fixture
def namespace(cluster: Cluster, s3_server: S3Endpoint) -> Iterator[str]:
    name = f"team-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("create", "secret", "generic", "evaluation-s3-credentials", "-n", name,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def core(cluster: Cluster) -> Any:
    return client.CoreV1Api(cluster.api_client())


def task_manifest(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "tiny-llm", "endpoint": {"url": "http://tiny-llm.models.svc:8000/v1"}},
        "benchmarks": [
            {"name": "arc-easy", "dataset": {"uri": "s3://datasets/arc-easy.jsonl"},
             "task": "multiple-choice", "metrics": ["accuracy"]},
            {"name": "wmt-de-en", "dataset": {"uri": "s3://datasets/wmt.jsonl"},
             "task": "generation", "metrics": ["bleu", "exact-match"], "weight": 2},
        ],
        "resources": {"gpu": 1},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
            "metadata": {"name": name}, "spec": spec}


def create_task(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    result = cluster.kubectl("create", "-n", namespace, "-o", "json", "-f", "-",
                             input=json.dumps(manifest))
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def get_task(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "evaluationtask", name, "-n", namespace, "-o", "json",
                             check=False)
    if result.returncode != 0:
        return None
    task: dict[str, Any] = json.loads(result.stdout)
    return task


def wait_status(cluster: Cluster, namespace: str, name: str, what: str, predicate: Any,
                timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        task = get_task(cluster, namespace, name)
        status = (task or {}).get("status") or {}
        return status if predicate(status) else None

    result: dict[str, Any] = cluster.wait_until(f"{namespace}/{name}: {what}", check,
                                                timeout=timeout)
    return result


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def running_pod(cluster: Cluster, namespace: str, task: str, timeout: float = 60
                ) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                    f"evaluation.dev/task={task}")["items"]
        for pod in pods:
            if pod["status"].get("phase") == "Running" and not pod["metadata"].get(
                    "deletionTimestamp") and not pod["metadata"].get("annotations", {}).get(
                    "kwok.evaluation.dev/exit-code"):
                return dict(pod)
        return None

    result: dict[str, Any] = cluster.wait_until(f"a Running pod of {task}", find,
                                                timeout=timeout)
    return result


def prefix_of(status: dict[str, Any]) -> str:
    """The S3 key prefix of a task's results, from its status."""
    uri: str = status["results"]["uri"]
    assert uri.startswith(f"s3://{BUCKET}/")
    return uri[len(f"s3://{BUCKET}/"):]


def versions_under(s3: Any, prefix: str) -> list[str]:
    """Every object version and delete marker below the prefix."""
    listing = s3.list_object_versions(Bucket=BUCKET, Prefix=prefix)
    return [v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])]


def success_message(overall: float, benchmarks: list[dict[str, Any]], uri: str,
                    truncated: bool = False) -> str:
    message: dict[str, Any] = {"v": 1, "status": "Succeeded", "overallScore": overall,
                               "benchmarks": benchmarks,
                               "results": {"uri": uri, "bundle": uri + "results.zip"}}
    if truncated:
        message = {"v": 1, "status": "Succeeded", "truncated": True}
    return json.dumps(message)
