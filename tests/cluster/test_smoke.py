"""The local control plane is real: schema validation, scheduling, Jobs, garbage collection."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from devcluster.cluster import CPU_NODES, GPU_NODES, Cluster
from devcluster.kwok_pods import COMPLETE_DELAY, finish_pod, unpullable_image
from kubernetes import client

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def core(cluster: Cluster) -> Any:
    return client.CoreV1Api(cluster.api_client())


def job(name: str, *, gpus: int = 0, annotations: dict[str, str] | None = None,
        image: str = "registry.k8s.io/pause:3.10", owner: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    metadata: dict[str, Any] = {"name": name}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }


def job_condition(cluster: Cluster, ns: str, name: str, kind: str) -> dict[str, Any] | None:
    status = cluster.kubectl_json("get", "job", name, "-n", ns).get("status", {})
    for condition in status.get("conditions", []):
        if condition["type"] == kind and condition["status"] == "True":
            return dict(condition)
    return None


def pods_of(cluster: Cluster, ns: str, job_name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", ns, "-l", f"job-name={job_name}")["items"]
    return items


def test_server_reports_the_pinned_version(cluster: Cluster) -> None:
    if cluster.flavour != "kwok":
        pytest.skip("version pin applies to the locally built control plane")
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == "v1.37.2"
    assert (version["major"], version["minor"]) == ("1", "37")


def test_gpu_nodes_advertise_allocatable_gpus(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    for name in GPU_NODES:
        assert nodes[name]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    for name in CPU_NODES:
        assert "nvidia.com/gpu" not in nodes[name]["status"]["allocatable"]


def test_structural_schema_rejects_invalid_object_naming_the_field(
    cluster: Cluster, namespace: str
) -> None:
    group = f"smoke{uuid.uuid4().hex[:6]}.evaluation.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object", "required": ["replicas"],
                        "properties": {"replicas": {"type": "integer", "minimum": 1}},
                    }},
                }},
            }],
        },
    }
    cluster.apply(crd)
    try:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                        f"crd/widgets.{group}")
        good = {"apiVersion": f"{group}/v1", "kind": "Widget",
                "metadata": {"name": "good", "namespace": namespace}, "spec": {"replicas": 2}}
        cluster.apply(good)
        bad = {**good, "metadata": {"name": "bad", "namespace": namespace},
               "spec": {"replicas": 0}}
        result = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert result.returncode != 0
        assert "spec.replicas" in result.stderr
        assert "should be greater than or equal to 1" in result.stderr
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


@pytest.mark.kwok
def test_gpu_job_is_scheduled_on_a_gpu_node_and_completes(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps(job("gpu", gpus=2, annotations={COMPLETE_DELAY: "1s"})))
    cluster.wait_until("Job gpu Complete",
                       lambda: job_condition(cluster, namespace, "gpu", "Complete"), timeout=60)
    (pod,) = pods_of(cluster, namespace, "gpu")
    assert pod["spec"]["nodeName"] in GPU_NODES
    assert pod["status"]["phase"] == "Succeeded"


def test_job_asking_for_more_gpus_than_any_node_stays_pending(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job("huge", gpus=16)))

    def unschedulable() -> dict[str, Any] | None:
        for pod in pods_of(cluster, namespace, "huge"):
            for condition in pod.get("status", {}).get("conditions", []):
                if condition["type"] == "PodScheduled" and condition["status"] == "False":
                    return dict(condition)
        return None

    condition = cluster.wait_until("PodScheduled=False", unschedulable, timeout=60)
    assert condition["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    (pod,) = pods_of(cluster, namespace, "huge")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_deleting_the_owner_garbage_collects_the_job(cluster: Cluster, namespace: str) -> None:
    owner = cluster.kubectl_json(
        "create", "configmap", "owner", "-n", namespace, "--from-literal=a=b")
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                 "uid": owner["metadata"]["uid"], "blockOwnerDeletion": True}
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps(job("owned", owner=reference)))
    cluster.wait_until("a pod for Job owned", lambda: pods_of(cluster, namespace, "owned"))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    cluster.wait_until(
        "Job owned garbage-collected",
        lambda: cluster.kubectl("get", "job", "owned", "-n", namespace,
                                check=False).returncode != 0,
        timeout=90,
    )


@pytest.mark.kwok
def test_pod_failed_on_demand_fails_its_job(cluster: Cluster, namespace: str, core: Any) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job("doomed", gpus=1)))
    pod = cluster.wait_until(
        "pod Running",
        lambda: next((p for p in pods_of(cluster, namespace, "doomed")
                      if p["status"].get("phase") == "Running"), None),
    )
    message = json.dumps({"status": "Failed", "reason": "ConfigurationError"})
    finish_pod(core, namespace, pod["metadata"]["name"], 78, message=message)
    failed = cluster.wait_until(
        "Job doomed Failed", lambda: job_condition(cluster, namespace, "doomed", "Failed"))
    assert failed["reason"] == "BackoffLimitExceeded"
    (pod,) = pods_of(cluster, namespace, "doomed")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 78
    assert json.loads(terminated["message"]) == {"status": "Failed", "reason": "ConfigurationError"}


@pytest.mark.kwok
def test_unpullable_image_waits_with_err_image_pull(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps(job("pull", image=unpullable_image())))

    def waiting_reason() -> str | None:
        for pod in pods_of(cluster, namespace, "pull"):
            for status in pod["status"].get("containerStatuses", []):
                reason = status.get("state", {}).get("waiting", {}).get("reason")
                if reason:
                    return str(reason)
        return None

    assert cluster.wait_until("container waiting", waiting_reason) == "ErrImagePull"
    (pod,) = pods_of(cluster, namespace, "pull")
    assert pod["status"]["phase"] == "Pending"
