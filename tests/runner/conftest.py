"""Fixtures for running the runner against a scripted model server and moto's S3."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from devcluster.fake_llm import FakeLLM

from tests.support.s3 import S3Endpoint

RESULTS_BUCKET = "runner-results"
DATA_BUCKET = "runner-datasets"


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def runner_buckets(s3_server: S3Endpoint) -> S3Endpoint:
    s3 = s3_server.client()
    for bucket in (RESULTS_BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    return s3_server


@dataclass
class RunResult:
    exit_code: int
    termination: dict[str, Any]
    stderr: str


def base_config(llm_url: str, s3: S3Endpoint, prefix: str, benchmarks: list[dict[str, Any]],
                api: str = "chat", **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 1,
        "task": {"name": "t", "namespace": "ns", "uid": "u"},
        "model": {"name": "tiny", "endpoint": {"url": llm_url, "api": api, "apiKeyEnv": None,
                                               "timeoutSeconds": 5, "maxRetries": 3},
                  "source": None},
        "framework": {"name": "builtin"},
        "benchmarks": benchmarks,
        "parameters": {"temperature": 0, "maxTokens": 32, "concurrency": 4, "seed": 1},
        "output": {"s3": {"bucket": RESULTS_BUCKET, "prefix": prefix,
                          "endpointUrl": s3.endpoint_url, "region": s3.region}},
        "progressIntervalSeconds": 0.2,
    }
    config.update(extra)
    return config


def run_runner(tmp_path: Path, config: dict[str, Any], s3: S3Endpoint,
               env: dict[str, str] | None = None) -> RunResult:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    termination = tmp_path / "termination-log"
    result = subprocess.run(
        [sys.executable, "-m", "evaluation_runner", "--config", str(config_path),
         "--termination-log", str(termination)],
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": s3.access_key,
             "AWS_SECRET_ACCESS_KEY": s3.secret_key, "HOME": str(tmp_path), **(env or {})},
        # 300 s: lm-eval imports torch and transformers when they are installed (as in `make
        # test-local-model`'s .venv-local-model), which takes a minute on a busy 2-core machine.
        capture_output=True, text=True, timeout=300, check=False,
    )
    message = json.loads(termination.read_text()) if termination.exists() else {}
    return RunResult(result.returncode, message, result.stderr)
