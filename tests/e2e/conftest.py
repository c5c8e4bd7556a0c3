"""The e2e tier: real pods on a real node (devcluster.node) joined to the session's control
plane. Tests here are marked `e2e`; they skip with one reason where the machine cannot run a
node (not root, capabilities or packages missing, no images), and fail instead under CI.

`real_node` gives the node's name (`node.name`), the bridge gateway address that host services
must bind for pods to reach them (`node.gateway`), the imported image refs
(`node.image_ref(ImageName.RUNNER)`), the scheduling fields that pin a pod or task to it
(`node.pin()`: nodeSelector + toleration of its taint) and the env that lets a pod reach the
API server (`node.api_server_env()`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from devcluster.cluster import Cluster
from devcluster.images import ImageManifest, ManifestError, load_manifest
from devcluster.node import RealNode, missing_requirements

from tests.support.requirements import require


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
