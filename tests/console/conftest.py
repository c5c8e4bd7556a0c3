"""Completed tasks with real bundles, for the plugin and the web console.

The operator runs as users run it; each task's pod is played through KWOK, and the "pod"
really runs the runner (`python -m evaluation_runner`) with the exact config.json the
operator put in the task's ConfigMap, against the scripted model server and moto's S3. Its
exit code and termination message then finish the KWOK pod, so the status, the bundle and
the runner.log are what a real run produces.

The operator fixture is package-scoped so it is gone before tests/integration starts its
own: two operators never reconcile the same cluster at once.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from devcluster import play_runner
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM

from tests.integration.conftest import OperatorProcess
from tests.support.s3 import S3Endpoint

RESULTS_BUCKET = "console-results"
DATA_BUCKET = "console-datasets"


class ConsoleOperator(OperatorProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), "EVAL_S3_BUCKET": RESULTS_BUCKET}


@pytest.fixture(scope="package")
def console_operator(cluster: Cluster, s3_server: S3Endpoint,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleOperator]:
    s3 = s3_server.client()
    for bucket in (RESULTS_BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=RESULTS_BUCKET,
                             VersioningConfiguration={"Status": "Enabled"})
    play_runner.upload_datasets(s3, DATA_BUCKET)
    process = ConsoleOperator(cluster, s3_server, tmp_path_factory.mktemp("console-operator"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="package")
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def run_task_with_runner(cluster: Cluster, s3: S3Endpoint, namespace: str, name: str,
                         llm: FakeLLM, workdir: Path) -> dict[str, Any]:
    return play_runner.run_task(
        cluster, namespace, play_runner.manifest(name, llm.url, DATA_BUCKET),
        {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}, workdir)


@dataclass
class Completed:
    namespace: str
    baseline: str  # 4 of 6 multiple-choice answers right
    better: str  # 6 of 6 right, a different translation
    statuses: dict[str, dict[str, Any]]


@pytest.fixture(scope="package")
def completed(cluster: Cluster, s3_server: S3Endpoint, console_operator: ConsoleOperator,
              llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Completed]:
    namespace = f"console-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "secret", "generic", "evaluation-s3-credentials", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")
    work = tmp_path_factory.mktemp("console-runs")
    statuses = {}
    play_runner.script_answers(llm, play_runner.BASELINE)
    statuses["baseline"] = run_task_with_runner(cluster, s3_server, namespace, "baseline", llm,
                                                work / "baseline")
    play_runner.script_answers(llm, play_runner.BETTER)
    statuses["better"] = run_task_with_runner(cluster, s3_server, namespace, "better", llm,
                                              work / "better")
    for status in statuses.values():
        assert status["phase"] == "Completed", status
    yield Completed(namespace, "baseline", "better", statuses)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@dataclass
class Plugin:
    """`kubectl evaluation ...` as a user runs it: kubectl finds the plugin on PATH."""

    cluster: Cluster
    s3: S3Endpoint
    home: Path

    def env(self, own_s3_credentials: bool = True) -> dict[str, str]:
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
               "HOME": str(self.home), "KUBECONFIG": str(self.cluster.kubeconfig),
               "AWS_CONFIG_FILE": str(self.home / "no-aws-config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(self.home / "no-aws-credentials"),
               "AWS_EC2_METADATA_DISABLED": "true", "COLUMNS": "160", "NO_COLOR": "1"}
        if own_s3_credentials:
            env.update(AWS_ACCESS_KEY_ID=self.s3.access_key,
                       AWS_SECRET_ACCESS_KEY=self.s3.secret_key,
                       AWS_ENDPOINT_URL=self.s3.endpoint_url)
        return env

    def run(self, *args: str, own_s3_credentials: bool = True, input: str | None = None,
            check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.cluster.kubectl_path), "evaluation", *args],
            env=self.env(own_s3_credentials), input=input, capture_output=True, text=True,
            timeout=180, check=False, cwd=cwd or self.home)
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result


@pytest.fixture
def plugin(cluster: Cluster, s3_server: S3Endpoint, tmp_path: Path) -> Plugin:
    return Plugin(cluster, s3_server, tmp_path)
