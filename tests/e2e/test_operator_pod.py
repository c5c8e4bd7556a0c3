"""The operator itself as a real pod of its image, installed by the Helm chart: its probes
pass, it serves metrics, and it drives a real task to Completed on the real node."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from devcluster.node import RealNode

from tests.chart.chart import CHART, helm
from tests.e2e.conftest import E2EOperator
from tests.e2e.support import (
    QUIZ_ANSWERS,
    RESULTS_BUCKET,
    Timings,
    create_task,
    prefix_of,
    quiz_benchmark,
    read_object,
    versions_under,
)
from tests.support.s3 import S3Endpoint

pytestmark = pytest.mark.e2e
METRICS_PORT = 9090


def scrape(pod_ip: str) -> str:
    with urllib.request.urlopen(f"http://{pod_ip}:{METRICS_PORT}/metrics", timeout=10) as r:
        text: str = r.read().decode()
        return text


@pytest.fixture
def operator_release(cluster: Cluster, real_node: RealNode, pod_s3: S3Endpoint,
                     images: dict[str, str], e2e_operator: E2EOperator
                     ) -> Iterator[tuple[str, str]]:
    """(operator namespace, task namespace); the session's subprocess operator is stopped
    meanwhile, so the pod is the only operator handling the task."""
    suffix = uuid.uuid4().hex[:6]
    system, tasks = f"e2e-operator-{suffix}", f"e2e-tasks-{suffix}"
    for namespace in (system, tasks):
        cluster.kubectl("create", "namespace", namespace)
    for namespace, secret in ((system, "evaluation-operator-s3"),
                              (tasks, "evaluation-s3-credentials")):
        cluster.kubectl("create", "secret", "generic", secret, "-n", namespace,
                        f"--from-literal=AWS_ACCESS_KEY_ID={pod_s3.access_key}",
                        f"--from-literal=AWS_SECRET_ACCESS_KEY={pod_s3.secret_key}")
    repository, tag = images["evaluation-operator"].rsplit(":", 1)
    pin = real_node.pin()
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [tasks],
        "runner": {"image": images["evaluation-runner"], "pullPolicy": "Never",
                   "progressIntervalSeconds": 2, "startFailureGraceSeconds": 10},
        "s3": {"endpoint": pod_s3.endpoint_url, "bucket": RESULTS_BUCKET,
               "region": pod_s3.region, "credentialsSecret": "evaluation-operator-s3"},
        "metrics": {"enabled": True, "port": METRICS_PORT},
        "purgeRetryMaxSeconds": 4,
        # No kube-proxy on this node: in-cluster config reaches the API server through the
        # node's forwarder on the bridge gateway.
        "extraEnv": [{"name": k, "value": v} for k, v in real_node.api_server_env().items()],
        "nodeSelector": pin["nodeSelector"], "tolerations": pin["tolerations"],
        # One pod (the test reads its metrics), still elected on the chart's Lease;
        # tests/chart/test_ha.py covers two.
        "replicas": 1,
    }
    e2e_operator.stop()
    try:
        helm("install", "eval", str(CHART), "--namespace", system, "--wait",
             "--timeout", "240s", *[a for k, v in values.items()
                                    for a in ("--set-json", f"{k}={json.dumps(v)}")],
             kubeconfig=cluster.kubeconfig, timeout=300)
        yield system, tasks
    finally:
        helm("uninstall", "eval", "--namespace", system, "--wait", "--timeout", "120s",
             kubeconfig=cluster.kubeconfig, check=False, timeout=150)
        for namespace in (tasks, system):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        e2e_operator.start()


def test_operator_pod_from_the_chart_completes_a_task(
        cluster: Cluster, operator_release: tuple[str, str], pod_s3: S3Endpoint,
        model: FakeLLM, real_node: RealNode, timings: Timings) -> None:
    system, tasks = operator_release
    pod = cluster.kubectl_json("get", "pods", "-n", system, "-l",
                               "app.kubernetes.io/name=evaluation-operator")["items"][0]
    # `helm --wait` returned: the readiness probe passed. Liveness: no restarts so far.
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert "evaluation_tasks" in scrape(pod["status"]["podIP"])

    model.answers = dict(QUIZ_ANSWERS)
    started = time.monotonic()
    run = create_task(cluster, tasks, "from-pod", {
        "model": {"name": "scripted-llm", "endpoint": {"url": model.url}},
        "benchmarks": [quiz_benchmark()], "retries": 0,
        "resources": {"gpu": 0, "cpu": "500m", "memory": "512Mi"},
        "scheduling": real_node.pin()})
    status = run.finish(timings, "operator pod (chart)")

    assert (status["phase"], status["reason"]) == ("Completed", "Succeeded"), status
    assert status["overallScore"] == 0.75
    summary = json.loads(read_object(pod_s3, prefix_of(status) + "summary.json"))
    assert status["overallScore"] == summary["overallScore"]
    metrics = scrape(pod["status"]["podIP"])
    assert f'evaluation_tasks{{namespace="{tasks}",phase="Completed"}} 1.0' in metrics
    # The pod's operator purges too.
    cluster.kubectl("delete", "evaluationtask", run.name, "-n", tasks, "--timeout=120s")
    assert versions_under(pod_s3, prefix_of(status)) == []
    restarts = cluster.kubectl_json("get", "pod", pod["metadata"]["name"], "-n", system)[
        "status"]["containerStatuses"][0]["restartCount"]
    assert restarts == 0, "the liveness probe failed during the run"
    timings.record("operator pod: task to purge", "ok", time.monotonic() - started)
