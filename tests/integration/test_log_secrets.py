"""Issue 10, finding 5: the operator's logs never hold credentials, at any verbosity.

The operator runs as users run it with the chart's most verbose log level (`--debug`, which
Kopf treats as a superset of `--verbose`), against moto with temporary credentials (a session
token, as IRSA or an STS role gives them). A task goes through its S3 work (progress reads,
the purge on delete), then the log is searched for every part of the credentials.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from devcluster.cluster import Cluster

from tests.integration.conftest import (
    BUCKET,
    OperatorProcess,
    create_task,
    get_task,
    prefix_of,
    running_pod,
    task_manifest,
    versions_under,
    wait_status,
)
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]

SESSION_TOKEN = "PLANTED-SESSION-TOKEN-" + uuid.uuid4().hex


class OperatorWithSessionToken(OperatorProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), "AWS_SESSION_TOKEN": SESSION_TOKEN}


def test_debug_logs_hold_no_session_token_or_key(
    cluster: Cluster, namespace: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path,
) -> None:
    operator = OperatorWithSessionToken(cluster, s3_server, tmp_path,
                                        flags=("--namespace", namespace, "--debug"))
    operator.start()
    try:
        create_task(cluster, namespace, task_manifest("tokens"))
        status = wait_status(cluster, namespace, "tokens", "results location",
                             lambda s: (s.get("results") or {}).get("uri"))
        prefix = prefix_of(status)
        s3 = s3_server.client()
        s3.put_object(Bucket=BUCKET, Key=prefix + "progress.json",
                      Body=b'{"samplesDone": 1, "samplesTotal": 4}')
        running_pod(cluster, namespace, "tokens")
        # The operator reads progress.json while the runner runs (signed S3 GETs).
        wait_status(cluster, namespace, "tokens", "progress read from S3",
                    lambda s: (s.get("progress") or {}).get("samplesDone") == 1)
        cluster.kubectl("delete", "evaluationtask", "tokens", "-n", namespace, "--wait=false")
        cluster.wait_until("the purge to finish and the task to go",
                           lambda: get_task(cluster, namespace, "tokens") is None, timeout=60)
        assert versions_under(s3, prefix) == [], operator.log()
    finally:
        operator.stop()
    log = (tmp_path / "operator-1.log").read_text(errors="replace")
    assert "DEBUG" in log, "the operator did not run at debug level"
    assert SESSION_TOKEN not in log
    assert s3_server.access_key not in log
    assert s3_server.secret_key not in log
    assert "X-Amz-Security-Token" not in log
