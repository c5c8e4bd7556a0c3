"""Session fixtures shared by every test tier.

`cluster`: a real control plane (hack/devcluster/cluster.py), started once per session and
stopped at the end, leaving no process behind. `s3_server`: moto's S3 HTTP server on loopback.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster.cluster import Cluster, cluster_from_environment

from tests.support.s3 import S3Endpoint, start_s3


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    state_dir = Path(tempfile.mkdtemp(prefix="eval-test-cluster-"))
    handle, owner = cluster_from_environment(state_dir, name=f"eval-test-{os.getpid()}")
    try:
        handle.install_crds()
        yield handle
    finally:
        if owner is not None and not os.environ.get("EVAL_TEST_KEEP_CLUSTER"):
            owner.stop()
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _kwok_marker_needs_scripted_pods(request: pytest.FixtureRequest) -> None:
    """Tests marked `kwok` play the kubelet through KWOK stages; on kind or an existing
    cluster (real kubelets) they are skipped, everywhere else they run."""
    if request.node.get_closest_marker("kwok") is None:
        return
    handle: Cluster = request.getfixturevalue("cluster")
    if not handle.scripted_pods:
        pytest.skip("plays the runner through KWOK-scripted pods (not on kind/existing clusters)")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    endpoint = start_s3()
    try:
        yield endpoint
    finally:
        endpoint.stop()
