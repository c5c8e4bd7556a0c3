"""The session's real node (the `real_node` fixture the e2e tier shares) runs real pods."""

from __future__ import annotations

import pytest
from devcluster.cluster import Cluster
from devcluster.node import RealNode

from tests.e2e.realpods import FETCH, HostServer, run_pod

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def test_a_pod_on_the_real_node_reaches_a_host_server_on_the_gateway(
    cluster: Cluster, real_node: RealNode, pod_namespace: str
) -> None:
    server = HostServer(real_node.gateway)
    try:
        pod = run_pod(cluster, real_node, pod_namespace, "fetch",
                      FETCH.replace("URL", repr(server.url)))
    finally:
        server.stop()
    log = real_node.pod_log(pod_namespace, "fetch", "main")
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    assert pod["spec"]["nodeName"] == real_node.name
    assert HostServer.BODY.decode() in log
    # the API server reaches the kubelet too (by the node's InternalIP): `kubectl logs` works
    logs = cluster.kubectl("logs", "-n", pod_namespace, "fetch", check=False)
    assert HostServer.BODY.decode() in logs.stdout, logs.stderr


def test_the_real_node_is_kept_from_kwok_scripted_pods(
    cluster: Cluster, real_node: RealNode
) -> None:
    node = cluster.kubectl_json("get", "node", real_node.name)
    assert node["metadata"]["labels"]["evaluation.dev/real-node"] == "true"
    assert {"key": "evaluation.dev/real-node", "value": "true", "effect": "NoSchedule"} in [
        {k: t.get(k) for k in ("key", "value", "effect")} for t in node["spec"]["taints"]]
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
