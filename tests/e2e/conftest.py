"""The e2e tier: real pods on a real node (devcluster.node) joined to the session's control
plane. Tests here are marked `e2e`; they skip with one reason where the machine cannot run a
node (not root, capabilities or packages missing, no images), and fail instead under CI.

`real_node` gives the node's name (`node.name`), the bridge gateway address that host services
must bind for pods to reach them (`node.gateway`), the imported image refs
(`node.image_ref(ImageName.RUNNER)`), the scheduling fields that pin a pod or task to it
(`node.pin()`: nodeSelector + toleration of its taint) and the env that lets a pod reach the
API server (`node.api_server_env()`).

EvaluationTasks (test_evaluations.py, test_operator_pod.py): the scripted model server and
moto's S3 serve on the node's gateway, which both the pods and this host reach; the operator
runs as the integration tests run it (`python -m evaluation_operator`), with the runner image
imported into the node and `imagePullPolicy: Never`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from devcluster.images import ImageManifest, ImageName, ManifestError, load_manifest
from devcluster.node import RealNode, missing_requirements

from tests.e2e.support import (
    DATA_BUCKET,
    RESULTS_BUCKET,
    Timings,
    put_datasets,
    quiz_benchmark,
)
from tests.integration.conftest import OperatorProcess
from tests.support.requirements import require
from tests.support.s3 import S3Endpoint, start_s3


def node_prerequisites(cluster: Cluster) -> ImageManifest:
    """The image manifest, once the machine is known to run a node; else one skip (or, under
    CI, one failure) naming everything missing."""
    missing = missing_requirements()
    if cluster.flavour != "kwok":
        missing.append(f"a real node joins only the local control plane, not {cluster.flavour}")
    manifest: ImageManifest | None = None
    try:
        manifest = load_manifest()
    except ManifestError as error:
        missing.append(str(error))
    require(not missing, "no real node on this machine: " + "; ".join(missing))
    assert manifest is not None
    return manifest


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> Iterator[RealNode]:
    node = RealNode(cluster=cluster, images=node_prerequisites(cluster)).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def pod_namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of its own for a test's pods, deleted (without waiting) afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


START_FAILURE_GRACE_SECONDS = 4
_TIMINGS = Timings()


@pytest.hookimpl(trylast=True)  # after `-m` has deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The integration tier's operator watches every namespace with a fake runner image: in
    the same session it would race the e2e operator for e2e tasks. Say so instead of flaking."""
    e2e = [i for i in items if i.get_closest_marker("e2e")]
    shared = [i for i in items if "operator" in getattr(i, "fixturenames", ())
              and not i.get_closest_marker("e2e")]
    if e2e and shared:
        raise pytest.UsageError(
            "the e2e tier runs in its own pytest session (`make e2e`, or `-m e2e`); the "
            "integration tier's operator would handle its tasks too")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _TIMINGS.rows:
        terminalreporter.section("e2e: seconds from create to final phase")
        for case, outcome, seconds in _TIMINGS.rows:
            terminalreporter.write_line(f"{seconds:7.1f}  {case:28s} {outcome}")


@pytest.fixture(scope="session")
def timings() -> Timings:
    return _TIMINGS


@pytest.fixture(scope="session")
def gateway(real_node: RealNode) -> str:
    return real_node.gateway


@pytest.fixture(scope="session")
def pin(real_node: RealNode) -> dict[str, Any]:
    """spec.scheduling that puts a task's runner on the real node."""
    return real_node.pin()


@pytest.fixture(scope="session")
def images(real_node: RealNode) -> dict[str, str]:
    """Image name (evaluation-runner, evaluation-runner-lm-eval, evaluation-operator) -> the
    ref imported into the node."""
    return {name.value: real_node.image_ref(name) for name in ImageName
            if name is not ImageName.PAUSE}


@pytest.fixture(scope="session")
def pod_s3(gateway: str) -> Iterator[S3Endpoint]:
    endpoint = start_s3(gateway)
    client = endpoint.client()
    client.create_bucket(Bucket=RESULTS_BUCKET)
    client.put_bucket_versioning(Bucket=RESULTS_BUCKET,
                                 VersioningConfiguration={"Status": "Enabled"})
    client.create_bucket(Bucket=DATA_BUCKET)
    put_datasets(endpoint)
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture(scope="session")
def model_server(gateway: str) -> Iterator[FakeLLM]:
    server = FakeLLM(gateway).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def model(model_server: FakeLLM) -> FakeLLM:
    """The session's model server, its script reset for this test."""
    model_server.answers = {}
    model_server.faults = []
    model_server.delay_seconds = 0.0
    model_server.requests.clear()
    return model_server


@pytest.fixture
def spec_for(model: FakeLLM, pin: dict[str, Any]) -> Any:
    """A task's spec against the scripted model, pinned to the node: the quiz benchmark
    unless benchmarks are given; keyword arguments replace top-level fields."""
    def make(*benchmarks: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model": {"name": "scripted-llm", "endpoint": {"url": model.url}},
            "benchmarks": list(benchmarks) or [quiz_benchmark()],
            "resources": {"gpu": 0, "cpu": "500m", "memory": "512Mi"},
            "scheduling": pin,
            "retries": 0,
        }
        spec.update(overrides)
        return spec

    return make


class E2EOperator(OperatorProcess):
    def __init__(self, cluster: Cluster, s3: S3Endpoint, log_dir: Path, runner_image: str
                 ) -> None:
        super().__init__(cluster, s3, log_dir)
        self.runner_image = runner_image

    def env(self) -> dict[str, str]:
        return {**super().env(), "EVAL_RUNNER_IMAGE": self.runner_image,
                "EVAL_RUNNER_IMAGE_PULL_POLICY": "Never",
                "EVAL_START_FAILURE_GRACE_SECONDS": str(START_FAILURE_GRACE_SECONDS)}


@pytest.fixture(scope="session")
def e2e_operator(cluster: Cluster, pod_s3: S3Endpoint, images: dict[str, str],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EOperator]:
    process = E2EOperator(cluster, pod_s3, tmp_path_factory.mktemp("e2e-operator"),
                          images["evaluation-runner"])
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def e2e_namespace(cluster: Cluster, pod_s3: S3Endpoint, e2e_operator: E2EOperator
                  ) -> Iterator[str]:
    name = f"e2e-{os.urandom(4).hex()}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("create", "secret", "generic", "evaluation-s3-credentials", "-n", name,
                    f"--from-literal=AWS_ACCESS_KEY_ID={pod_s3.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={pod_s3.secret_key}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
